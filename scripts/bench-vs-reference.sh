#!/usr/bin/env bash
# The face pipeline's criterion benches and the Python InsightFace reference's per-stage timings,
# one after the other on the same machine (build first, so neither measures a compiler).
# Needs the reference venv of scripts/reference/run.sh (REF_VENV to use another).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REF_VENV:-$ROOT/third_party/refvenv}"
cd "$ROOT"
bash scripts/setup.sh
[ -x "$VENV/bin/python" ] || bash scripts/reference/run.sh
cargo bench --no-run --bench inference --bench imaging
"$VENV/bin/python" scripts/reference/timing.py models tests/fixtures/images --passes "${PASSES:-20}"
cargo bench --bench inference --bench imaging -- --noplot 2>&1 | grep -E "^[a-z].*/|time:" | paste - - | awk '{print}'
