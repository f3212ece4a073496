#!/usr/bin/env bash
# Measures a reindex (README: "Changing the model"): its rate, and the latency of live searches
# while it runs against the same searches without it, side by side in one run.
#
#   make reindex-bench            # FACEVAULT_DEVFACES (default ../shared/data/devfaces), 12 copies
#   COPIES=4 SECONDS_EACH=10 bash scripts/reindex-bench.sh
#
# Starts a release server (development mode, a temporary data directory) with EdgeFace-S as
# the candidate, then:
#   1. enrolls every devfaces photo once and reindexes with no traffic: the rate alone, and
#      top1_agreement on distinct photos (then abandons it: finish);
#   2. enrolls the photos COPIES-1 times more (one user each) and searches for SECONDS_EACH s
#      with 1 client, then 2 (no reindex): the baseline;
#   3. starts the reindex and searches the same way while it runs, then watches it to READY
#      (its rate under that traffic). Identical copies tie for nearest face, so the agreement
#      of this second job says little; the first one's is the measure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEVFACES="${FACEVAULT_DEVFACES:-../shared/data/devfaces}"
COPIES="${COPIES:-12}"
SECONDS_EACH="${SECONDS_EACH:-20}"
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
echo "## enrolling the $n photos once"
load --rpc upload --requests "$n" --concurrency 2 --warmup 0 --duration 100000 | tail -1
echo "## the reindex alone"
admin reindex start > /dev/null
admin watch < /dev/null
admin reindex finish > /dev/null
echo "## enrolling $((COPIES - 1)) x $n photos more"
load --rpc upload --requests $(((COPIES - 1) * n)) --concurrency 2 --warmup 0 --duration 100000 | tail -1
admin status | head -4
for clients in 1 2; do
  echo "## searches without a reindex ($clients client(s), ${SECONDS_EACH} s)"
  load --rpc search --no-seed --concurrency "$clients" --duration "$SECONDS_EACH" | tail -1
done
admin reindex start > /dev/null
for clients in 1 2; do
  echo "## searches while the reindex runs ($clients client(s), ${SECONDS_EACH} s)"
  load --rpc search --no-seed --concurrency "$clients" --duration "$SECONDS_EACH" | tail -1
  admin status | grep "reindex:"
done
echo "## the reindex under that traffic, to its end"
admin watch < /dev/null
