#!/usr/bin/env bash
# facevault over gRPC versus the Python InsightFace reference (no RPC at all) on the same
# images, in the same run, alternating, and the ratios. One command from a fresh clone:
#
#   bash scripts/load-vs-reference.sh   # DURATION=20 ROUNDS=2 CONCURRENCY=4 WORKERS=2
#                                       # BACKENDS="auto ort openvino/f32 openvino/bf16"
#
# facevault: release build, one server per entry of BACKENDS (--inference-backend[/precision];
# entries this CPU cannot run are left out) on 127.0.0.1 ports 50151 and up, temporary data
# directories, the dev keys. DetectFaces with embeddings over the five dev photos is compared
# with the reference's images/s; UploadFace of yaoming.jpg (one client) with the reference's
# per-image time. Every round runs each server and the reference one after the other.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${REF_VENV:-$ROOT/third_party/refvenv}"
DURATION="${DURATION:-20}" ROUNDS="${ROUNDS:-2}" CONCURRENCY="${CONCURRENCY:-4}" WORKERS="${WORKERS:-2}"
BACKENDS="${BACKENDS:-auto ort openvino/f32 openvino/bf16}"
bash scripts/setup.sh
[ -x "$VENV/bin/python" ] || bash scripts/reference/run.sh
cargo build --release --bin facevault --bin facevault-load
one="$(mktemp -d)"; out="$(mktemp -d)"
cp tests/fixtures/images/yaoming.jpg "$one/"
pids=(); dirs=("$one"); names=(); addrs=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "${dirs[@]}"' EXIT
port=50151
for entry in $BACKENDS; do
  backend="${entry%%/*}"; precision=auto
  [ "$entry" = "$backend" ] || precision="${entry#*/}"
  if [ "$precision" = bf16 ] && ! grep -qw 'avx512_bf16\|amx_bf16' /proc/cpuinfo; then
    echo "skipping $entry: this CPU has no bf16" >&2; continue
  fi
  data="$(mktemp -d)"; dirs+=("$data")
  name="$(echo "$entry" | tr / -)"
  target/release/facevault --listen "127.0.0.1:$port" --data-dir "$data" --keys-file config/dev-keys.json \
    --queue-capacity 64 --inference-backend "$backend" --inference-precision "$precision" \
    > "$out/server-$name.log" 2>&1 &
  pids+=($!); names+=("$name"); addrs+=("127.0.0.1:$port")
  port=$((port + 1))
done
[ "${#names[@]}" -gt 0 ] || { echo "no backend of BACKENDS can run here" >&2; exit 1; }
for i in "${!names[@]}"; do
  for _ in $(seq 1 240); do
    third_party/grpcurl/grpcurl -plaintext "${addrs[$i]}" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING && break
    kill -0 "${pids[$i]}" 2>/dev/null || { echo "the ${names[$i]} server died:" >&2; tail "$out/server-${names[$i]}.log" >&2; exit 1; }
    sleep 0.5
  done
done
for i in "${!names[@]}"; do # what each server runs, from its start-up log
  sed 's/\x1b\[[0-9;]*m//g' "$out/server-${names[$i]}.log" \
    | grep -o 'detector=[a-z]* [a-z0-9]* embedder=[a-z]* [a-z0-9]*' | head -n 1 \
    | sed "s/^/${names[$i]}: /" > "$out/resolved-${names[$i]}" || true
done
load() { target/release/facevault-load --json --duration "$DURATION" "$@" | tail -n 1; }
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round" >&2
  for i in "${!names[@]}"; do
    load --addr "http://${addrs[$i]}" --rpc detect --images tests/fixtures/images --concurrency "$CONCURRENCY" \
      >> "$out/detect-${names[$i]}.jsonl"
  done
  "$VENV/bin/python" scripts/reference/throughput.py models tests/fixtures/images --workers "$WORKERS" \
    --duration "$DURATION" >> "$out/reference.jsonl"
  for i in "${!names[@]}"; do
    load --addr "http://${addrs[$i]}" --rpc upload --images "$one" --concurrency 1 >> "$out/upload-${names[$i]}.jsonl"
  done
  "$VENV/bin/python" scripts/reference/throughput.py models "$one" --workers 1 \
    --duration "$DURATION" >> "$out/reference_one.jsonl"
done
python3 - "$out" "${names[@]}" <<'PY'
import json, os, statistics, sys
d, names = sys.argv[1], sys.argv[2:]
rows = lambda f: [json.loads(l) for l in open(os.path.join(d, f)) if l.strip()]
med = lambda rs, k: statistics.median(r[k] for r in rs)
ref, ref1 = rows("reference.jsonl"), rows("reference_one.jsonl")
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "avx512_fp16") if f in flags]
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"machine: {model}, {os.cpu_count()} cores, flags {' '.join(shown)}; medians of {len(ref)} alternating rounds")
for n in names:
    p = os.path.join(d, f"resolved-{n}")
    if os.path.exists(p) and open(p).read().strip():
        print(open(p).read().strip())
print("| backend | DetectFaces+embeddings images/s (reference) | ratio | faces/s ratio | DetectFaces p50 / p99 ms (reference) | UploadFace yaoming.jpg p50 ms (reference detect+embed) | ratio |")
print("|---|---|---|---|---|---|---|")
for n in names:
    det, up = rows(f"detect-{n}.jsonl"), rows(f"upload-{n}.jsonl")
    print(f"| {n} | {med(det,'req_per_s'):.2f} ({med(ref,'req_per_s'):.2f}) | {med(det,'req_per_s')/med(ref,'req_per_s'):.2f}x"
          f" | {med(det,'faces_per_s')/med(ref,'faces_per_s'):.2f}x"
          f" | {med(det,'p50_ms'):.0f} / {med(det,'p99_ms'):.0f} ({med(ref,'p50_ms'):.0f} / {med(ref,'p99_ms'):.0f})"
          f" | {med(up,'p50_ms'):.1f} ({med(ref1,'p50_ms'):.1f}) | {med(up,'p50_ms')/med(ref1,'p50_ms'):.2f}x |")
PY
