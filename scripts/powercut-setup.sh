#!/usr/bin/env bash
# Installs what the power-cut test (tests/powercut.rs, `make powercut`) needs beyond `make setup`:
#   fuse3     (Debian) fusermount3 and the FUSE kernel interface tools
#   libfuse2  (Debian) libfuse.so.2, which fusepy loads through ctypes
#   third_party/powercut-venv   a Python venv with fusepy's fuse.py, pinned and sha256-checked
#                               (tests/powercut/requirements.txt), from PyPI through pip
# Idempotent: with everything in place it touches no network. Needs root for apt-get and a
# /dev/fuse (a container needs --device /dev/fuse and CAP_SYS_ADMIN).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/third_party/powercut-venv"
PYTHON="${PYTHON:-python3}"

if [ ! -c /dev/fuse ]; then
  echo "powercut-setup: /dev/fuse is missing: this machine cannot mount FUSE file systems" >&2
  exit 1
fi

missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
ldconfig -p | grep -q 'libfuse\.so\.2 ' || missing+=(libfuse2)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "powercut-setup: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >&2 || { apt-get update -q >&2 && apt-get install -y -q "${missing[@]}" >&2; }
fi

if ! "$VENV/bin/python" -c 'import fuse' 2>/dev/null; then
  rm -rf "$VENV"
  "$PYTHON" -m venv --without-pip "$VENV"
  # No code of the package runs: pip fetches the sdist only after checking its sha256
  # (--require-hashes), takes its metadata from PKG-INFO through the stand-in build backend of
  # scripts/pip-metadata-only (no setup.py, no build isolation fetching unpinned setuptools),
  # and fuse.py, the package's one module, is then copied out of the checked archive.
  dl="$(mktemp -d)"
  trap 'rm -rf "$dl"' EXIT
  PYTHONPATH="$ROOT/scripts/pip-metadata-only" "$PYTHON" -m pip download --quiet --disable-pip-version-check \
    --no-deps --require-hashes --no-build-isolation --use-pep517 --no-binary=:all: -d "$dl" \
    -r "$ROOT/tests/powercut/requirements.txt" >&2
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  tar -xzOf "$dl/fusepy-3.0.1.tar.gz" fusepy-3.0.1/fuse.py > "$site/fuse.py"
  "$VENV/bin/python" -c 'import fuse' >&2
  echo "powercut-setup: installed fusepy's fuse.py into third_party/powercut-venv" >&2
fi
