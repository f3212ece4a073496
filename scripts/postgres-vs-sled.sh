#!/usr/bin/env bash
# UploadFace on sled against PostgreSQL, one node against two on one database, and how long a
# write on one node takes to become searchable on another: every number from one run, one
# after the other, with the release binaries. Needs PostgreSQL (scripts/test-postgres.sh names
# one) and `cargo build --release --bins`.
#
#   bash scripts/postgres-vs-sled.sh [SECONDS per measurement, default 20]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_EACH="${1:-20}"
ADMIN="$(bash scripts/test-postgres.sh)"
DB="fv_measure_$$"
BASE="${ADMIN%/*}"
URL="$BASE/$DB"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
psql "$ADMIN" -qc "CREATE DATABASE $DB" >/dev/null

BIN=target/release/facevault
LOAD=target/release/facevault-load
KEYS=config/dev-keys.json

start() { # port, extra flags...
    local port="$1"
    shift
    "$BIN" --listen "127.0.0.1:$port" --keys-file "$KEYS" --data-dir "$WORK/data-$port" "$@" \
        >"$WORK/server-$port.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 600); do
        if grep -q '"serving"\|serving' "$WORK/server-$port.log" 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "the server on $port did not start:" >&2
    tail -5 "$WORK/server-$port.log" >&2
    exit 1
}

stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}

load() { # label, load flags...
    local label="$1"
    shift
    echo "== $label"
    "$LOAD" --duration "$SECONDS_EACH" --warmup 3 "$@"
}

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
    "flags: $(grep -o -w 'avx2\|avx512f\|avx512_bf16\|avx512_vnni\|amx_tile' /proc/cpuinfo | sort -u | xargs)"

# One face per photo (yaoming.jpg), as the README's other UploadFace numbers.
ONE="$WORK/one-face"
mkdir -p "$ONE"
cp tests/fixtures/images/yaoming.jpg "$ONE/"
for round in 1 2; do
    echo "# round $round"
    start 50071
    load "sled, one node, 4 clients" --rpc upload --images "$ONE" --addr http://127.0.0.1:50071 --concurrency 4
    stop_all
    start 50072 --postgres-url "$URL"
    load "PostgreSQL, one node, 4 clients" --rpc upload --images "$ONE" --addr http://127.0.0.1:50072 --concurrency 4
    start 50073 --postgres-url "$URL"
    load "PostgreSQL, two nodes on this machine, 4 clients split" --rpc upload --images "$ONE" \
        --addr http://127.0.0.1:50072,http://127.0.0.1:50073 --concurrency 4
    stop_all
done

# Visibility on a fresh database (each search must list the new user among every earlier upload
# of the same photo: at most 100).
psql "$ADMIN" -qc "DROP DATABASE $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
start 50072 --postgres-url "$URL"
start 50073 --postgres-url "$URL"
load "PostgreSQL, write on one node, searched on the other until found (1 client)" --rpc upload \
    --images "$ONE" --addr http://127.0.0.1:50072 --visible-on http://127.0.0.1:50073 --concurrency 1 --requests 60
load "the same search alone on the other node (its own latency: the floor of the line above)" \
    --rpc search --images "$ONE" --addr http://127.0.0.1:50073 --concurrency 1
stop_all
