#!/usr/bin/env bash
# Installs what the power-cut test (tests/powercut.rs, `make powercut`) needs beyond `make setup`:
#   fuse3     (Debian) fusermount3 and the FUSE kernel interface tools
#   libfuse2  (Debian) libfuse.so.2, which fusepy loads through ctypes
#   third_party/powercut-venv   a Python venv with fusepy, pinned and sha256-checked
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
  "$PYTHON" -m venv "$VENV"
  # The sdist is hash-checked; pip builds it with setuptools in an isolated build environment.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r "$ROOT/tests/powercut/requirements.txt" >&2
  "$VENV/bin/python" -c 'import fuse' >&2
  echo "powercut-setup: installed fusepy into third_party/powercut-venv" >&2
fi
