#!/usr/bin/env bash
# Measures a reindex (README: "Changing the model"): its rate, and the latency of live searches
# while it runs against the same searches without it, side by side in one run.
#
#   make reindex-bench            # FACEVAULT_DEVFACES (default ../shared/data/devfaces), 3 copies
#   COPIES=1 SECONDS_EACH=20 bash scripts/reindex-bench.sh
#
# Starts a release server (development mode, a temporary data directory) with EdgeFace-S as
# the candidate, enrolls every devfaces photo COPIES times (one user each), then:
#   1. searches for SECONDS_EACH s with one client (no reindex): the baseline;
#   2. starts the reindex and searches the same way while it runs;
#   3. watches the reindex to READY (its rate under that traffic);
#   4. rolls back, finishes (drops the candidate's embeddings), starts again with no traffic
#      and watches it to READY (its rate alone).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEVFACES="${FACEVAULT_DEVFACES:-../shared/data/devfaces}"
COPIES="${COPIES:-3}"
SECONDS_EACH="${SECONDS_EACH:-30}"
PORT="${PORT:-50093}"
ADDR="http://127.0.0.1:$PORT"
cargo build --release --bins >&2
DATA="$(mktemp -d)"
./target/release/facevault --insecure-dev-mode --data-dir "$DATA/db" --listen "127.0.0.1:$PORT" \
  --candidate-embedder-model models/edgeface_s_gamma_05.onnx --candidate-embedder-id edgeface_s_gamma_05 \
  --candidate-match-threshold 0.50 --candidate-possible-match-threshold 0.40 > "$DATA/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DATA"' EXIT
admin() { ./target/release/facevault admin --server "$ADDR" "$@"; }
load() { ./target/release/facevault-load --addr "$ADDR" --images "$DEVFACES/images" "$@"; }
for _ in $(seq 60); do admin status > /dev/null 2>&1 && break; sleep 1; done
echo "## CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "flags: $(grep -o -w -E 'avx2|avx512f|avx512_bf16|avx512_vnni|amx_tile' /proc/cpuinfo | sort -u | xargs)"
n=$(ls "$DEVFACES/images" | wc -l)
echo "## enrolling $COPIES x $n photos"
load --rpc upload --requests $((COPIES * n)) --concurrency 2 --warmup 0 --duration 100000 | tail -3
admin status | head -4
echo "## searches without a reindex (1 client, ${SECONDS_EACH} s)"
load --rpc search --no-seed --concurrency 1 --duration "$SECONDS_EACH"
echo "## searches while the reindex runs (1 client, ${SECONDS_EACH} s)"
admin reindex start
load --rpc search --no-seed --concurrency 1 --duration "$SECONDS_EACH"
admin status | tail -4
echo "## the reindex under that traffic, to its end"
admin watch < /dev/null
echo "## the reindex alone"
admin reindex rollback > /dev/null
admin reindex finish > /dev/null
admin reindex start > /dev/null
admin watch < /dev/null
