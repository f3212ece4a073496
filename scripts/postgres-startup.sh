#!/usr/bin/env bash
# Start-up of a node against N faces in PostgreSQL: fills a fresh database with N users of one
# face each by SQL (synthetic rows: every embedding the same unit vector behind its user id,
# empty protobuf records, no images: the start-up reads only the faces table), then starts the
# release server twice on it and prints its "search index rebuilt" line (rows read in one
# snapshot of the database, unsealed, indexed) and the time to SERVING. The database is dropped
# at the end.
#
#   bash scripts/postgres-startup.sh [N, default 1000000]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-1000000}"
ADMIN="$(bash scripts/test-postgres.sh)"
DB="fv_startup_$$"
URL="${ADMIN%/*}/$DB"
WORK="$(mktemp -d)"
cleanup() {
    psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
psql "$ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
BIN=target/release/facevault

serve_once() { # prints the rebuild line and the time to SERVING, then stops the server
    local log="$WORK/server.log" started
    : >"$log"
    started=$(date +%s.%N)
    "$BIN" --listen 127.0.0.1:50081 --keys-file config/dev-keys.json --data-dir "$WORK/data" \
        --postgres-url "$URL" >"$log" 2>&1 &
    local pid=$!
    until grep -q "serving" "$log"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -5 "$log" >&2
            exit 1
        fi
        sleep 0.05
    done
    echo "SERVING after $(echo "$(date +%s.%N) - $started" | bc) s; $(grep -o 'search index rebuilt[^"]*' "$log" | head -1)" \
        "$(grep -o '"ms":[0-9]*' "$log" | tail -1)"
    grep "rebuilt from the store" "$log" | tail -1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

# The schema, made by the server itself.
serve_once >/dev/null
VECTOR="$(python3 -c "import struct,math; print(struct.pack('<512f', *([1/math.sqrt(512)]*512)).hex())")"
started=$(date +%s)
psql "$URL" -q <<SQL
SET synchronous_commit = off;
INSERT INTO users (tenant, id, external_id, record)
  SELECT 'startup', g - 9223372036854775808, 'user-' || g, ''::bytea FROM generate_series(1, $N) g;
INSERT INTO faces (tenant, id, user_id, record, embedding)
  SELECT 'startup', g - 9223372036854775808, g - 9223372036854775808, ''::bytea,
         int8send(g) || '\\x09'::bytea || convert_to('w600k_mbf', 'UTF8') || '\\x$VECTOR'::bytea
  FROM generate_series(1, $N) g;
VACUUM ANALYZE faces;
SQL
echo "filled $N faces in $(($(date +%s) - started)) s; database $(psql "$URL" -tAc "SELECT pg_size_pretty(pg_database_size('$DB'))")"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
for round in 1 2; do
    echo "round $round:"
    serve_once
done
