#!/usr/bin/env bash
# facevault over gRPC versus the Python InsightFace reference (no RPC at all) on the same
# images, in the same run, alternating, and the ratios. One command from a fresh clone:
#
#   bash scripts/load-vs-reference.sh            # DURATION=20 ROUNDS=2 CONCURRENCY=4 WORKERS=2
#
# facevault: release build, 127.0.0.1 port 50151, a temporary data directory, the dev keys.
# DetectFaces with embeddings over the five dev photos is compared with the reference's
# images/s; UploadFace of yaoming.jpg (one client) with the reference's per-image time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${REF_VENV:-$ROOT/third_party/refvenv}"
DURATION="${DURATION:-20}" ROUNDS="${ROUNDS:-2}" CONCURRENCY="${CONCURRENCY:-4}" WORKERS="${WORKERS:-2}"
ADDR=127.0.0.1:50151
bash scripts/setup.sh
[ -x "$VENV/bin/python" ] || bash scripts/reference/run.sh
cargo build --release --bin facevault --bin facevault-load
data="$(mktemp -d)"; one="$(mktemp -d)"; out="$(mktemp -d)"
cp tests/fixtures/images/yaoming.jpg "$one/"
target/release/facevault --listen "$ADDR" --data-dir "$data" --keys-file config/dev-keys.json \
  --queue-capacity 64 > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$data" "$one"' EXIT
for _ in $(seq 1 240); do
  third_party/grpcurl/grpcurl -plaintext "$ADDR" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING && break
  sleep 0.5
done
load() { target/release/facevault-load --addr "http://$ADDR" --json --duration "$DURATION" "$@" | tail -n 1; }
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round" >&2
  load --rpc detect --images tests/fixtures/images --concurrency "$CONCURRENCY" >> "$out/detect.jsonl"
  "$VENV/bin/python" scripts/reference/throughput.py models tests/fixtures/images --workers "$WORKERS" \
    --duration "$DURATION" >> "$out/reference.jsonl"
  load --rpc upload --images "$one" --concurrency 1 >> "$out/upload.jsonl"
  "$VENV/bin/python" scripts/reference/throughput.py models "$one" --workers 1 \
    --duration "$DURATION" >> "$out/reference_one.jsonl"
done
python3 - "$out" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
rows = lambda f: [json.loads(l) for l in open(os.path.join(d, f)) if l.strip()]
med = lambda rs, k: statistics.median(r[k] for r in rs)
det, ref, up, ref1 = rows("detect.jsonl"), rows("reference.jsonl"), rows("upload.jsonl"), rows("reference_one.jsonl")
print(f"machine: {os.uname().machine}, {os.cpu_count()} cores; medians of {len(det)} alternating rounds")
print("| measure | facevault | Python reference | ratio |")
print("|---|---|---|---|")
print(f"| DetectFaces+embeddings, 5 dev photos, images/s | {med(det,'req_per_s'):.2f} | {med(ref,'req_per_s'):.2f} | {med(det,'req_per_s')/med(ref,'req_per_s'):.2f}x |")
print(f"| same, faces/s | {med(det,'faces_per_s'):.1f} | {med(ref,'faces_per_s'):.1f} | {med(det,'faces_per_s')/med(ref,'faces_per_s'):.2f}x |")
print(f"| DetectFaces latency p50 / p95 / p99 ms | {med(det,'p50_ms'):.0f} / {med(det,'p95_ms'):.0f} / {med(det,'p99_ms'):.0f} | {med(ref,'p50_ms'):.0f} / {med(ref,'p95_ms'):.0f} / {med(ref,'p99_ms'):.0f} | |")
print(f"| yaoming.jpg: UploadFace end to end (stored) vs reference detect+embed, p50 ms | {med(up,'p50_ms'):.1f} | {med(ref1,'p50_ms'):.1f} | {med(up,'p50_ms')/med(ref1,'p50_ms'):.2f}x |")
PY
