#!/usr/bin/env bash
# Measures ImportFaces (README: "Importing users") against UploadFace calls, side by side in
# one run on one server: the images per second of `facevault import` of the devfaces photos
# (one stream, one connection; each photo a new user), then of facevault-load's CreateUser +
# UploadFace per photo at 1, 2, 4 and 8 concurrent clients (one connection each), after a
# 5 s warm-up.
#
#   make import-bench            # FACEVAULT_DEVFACES (default ../shared/data/devfaces)
#   ROUNDS=2 bash scripts/import-bench.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEVFACES="$(cd "${FACEVAULT_DEVFACES:-../shared/data/devfaces}" && pwd)"
ROUNDS="${ROUNDS:-1}"
PORT="${PORT:-50094}"
ADDR="http://127.0.0.1:$PORT"
cargo build --release --bins >&2
DATA="$(mktemp -d)"
./target/release/facevault --insecure-dev-mode --data-dir "$DATA/db" --listen "127.0.0.1:$PORT" \
  > "$DATA/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DATA"' EXIT
load() { ./target/release/facevault-load --addr "$ADDR" --images "$DEVFACES/images" "$@"; }
for _ in $(seq 120); do
  third_party/grpcurl/grpcurl -plaintext "127.0.0.1:$PORT" grpc.health.v1.Health/Check 2> /dev/null | grep -q '"SERVING"' && break
  sleep 1
done
echo "## CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "flags: $(grep -o -w -E 'avx2|avx512f|avx512_bf16|avx512_vnni|amx_tile' /proc/cpuinfo | sort -u | xargs)"
n=$(ls "$DEVFACES/images" | wc -l)
# Not measured: the first load after start (about a fifth slower, whichever call comes first).
load --rpc detect --concurrency 2 --warmup 0 --duration 5 > /dev/null
for round in $(seq "$ROUNDS"); do
  manifest="$DATA/manifest-$round.csv"
  echo "external_id,image" > "$manifest"
  i=0
  for f in $(ls "$DEVFACES/images"); do i=$((i + 1)); echo "r$round-$i,$DEVFACES/images/$f" >> "$manifest"; done
  echo "## round $round: facevault import of $n photos (one stream)"
  start=$(date +%s.%N)
  ./target/release/facevault import "$manifest" --server "$ADDR" --report "$DATA/report-$round.csv" 2> /dev/null \
    | tail -1 || true
  end=$(date +%s.%N)
  python3 -c "print(f'import: {$n / ($end - $start):.1f} images/s ({$end - $start:.1f} s)')"
  echo "failed rows by reason:" $(awk -F, 'NR > 1 && $4 == "FAILED" {print $7}' "$DATA/report-$round.csv" | sort | uniq -c)
  for clients in 1 2 4 8; do
    echo "## round $round: UploadFace (with its CreateUser), $clients client(s), $n photos"
    load --rpc upload --requests "$n" --concurrency "$clients" --warmup 0 --duration 100000 | tail -1
  done
done
