#!/usr/bin/env bash
# The face pipeline's criterion benches beside the Python InsightFace reference's per-stage
# timings, one after the other on the same machine (build first, so neither measures a
# compiler). Prints one Markdown table. Needs the reference venv of scripts/reference/run.sh
# (REF_VENV to use another).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REF_VENV:-$ROOT/third_party/refvenv}"
cd "$ROOT"
bash scripts/setup.sh
[ -x "$VENV/bin/python" ] || bash scripts/reference/run.sh
cargo bench --no-run --bench inference --bench imaging
tmp="$(mktemp -d)"
"$VENV/bin/python" scripts/reference/timing.py models tests/fixtures/images --passes "${PASSES:-20}" > "$tmp/reference.md"
cargo bench --bench inference --bench imaging -- --noplot > "$tmp/criterion.txt" 2>&1
python3 - "$tmp/reference.md" "$tmp/criterion.txt" <<'PY'
import re, sys
ref = {}
for line in open(sys.argv[1]):
    m = re.match(r"\| (.+?) \| ([\d.]+) \|", line)
    if m:
        ref[m.group(1).replace(" (one batch)", "")] = float(m.group(2))
text = open(sys.argv[2]).read()
unit = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
rows = re.findall(r"^(\S[^\n]*?)\s+time:\s+\[\S+ \S+ ([\d.]+) (\S+) ", text, re.M)
print("| bench | facevault (ms, criterion median) | Python reference (ms) | ratio |")
print("|---|---|---|---|")
for name, value, u in rows:
    ms = float(value) * unit[u]
    r = ref.get(name.strip())
    print(f"| {name.strip()} | {ms:.2f} | {'' if r is None else f'{r:.2f}'} | {'' if r is None else f'{ms / r:.2f}'} |")
PY
