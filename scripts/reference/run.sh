#!/usr/bin/env bash
# Regenerates tests/fixtures/reference/insightface.json from the Python InsightFace pipeline.
# Makes its own venv (third_party/refvenv) with the pins of requirements.lock (the same pins as
# the peer harness in ../shared/bench/peer), then runs make_reference.py on the fetched models
# and photos. Needs CPython 3.11, gcc/g++ and Python headers (insightface 0.7.3 is an sdist).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${REF_VENV:-$ROOT/third_party/refvenv}"
bash "$ROOT/scripts/setup.sh"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import insightface, sys; sys.exit(insightface.__version__ != "0.7.3")' 2>/dev/null; then
  "$VENV/bin/python" -m pip install --disable-pip-version-check -r "$HERE/requirements.lock"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-deps --no-build-isolation insightface==0.7.3
fi
mkdir -p "$ROOT/tests/fixtures/reference"
OMP_NUM_THREADS=1 "$VENV/bin/python" "$HERE/make_reference.py" "$ROOT/models" \
  "$ROOT/tests/fixtures/images" "$ROOT/tests/fixtures/reference/insightface.json"
