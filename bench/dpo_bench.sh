#!/usr/bin/env bash
# DPO benchmark. (1) Peak RSS of temper's `dpo` (reference log-probs read from a `ref-logps`
# node, so only the policy is resident) vs `sft` on the same model and the same sequences per
# micro-batch (DPO: B pairs = 2B sequences in one forward; SFT: batch-size 2B of the same
# chosen/rejected sequences, unpacked), target ratio <= 1.15. (2) tokens/s of temper's `dpo`
# vs a PyTorch eager DPO step (bench/dpo_torch.py) on the same libtorch (.venv torch).
# RSS: /usr/bin/time -v of a run that executes only the measured node (inputs built before).
# Usage: bash bench/dpo_bench.sh [STEPS] [WARMUP] [BATCH_PAIRS]      (run `make build` first)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TEMPER="${TEMPER:-$ROOT/target/release/temper}"
PY="$ROOT/.venv/bin/python"
STEPS="${1:-20}"
WARMUP="${2:-3}"
B="${3:-8}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
[[ -x "$TEMPER" ]] || { echo "no $TEMPER: run 'make build' first" >&2; exit 1; }
"$PY" -c 'import transformers' 2>/dev/null \
  || "$PY" -m pip install --no-input --disable-pip-version-check transformers >/dev/null

# Pairs of uniform length: sorted vs shuffled 24 digits; the SFT file holds both sides.
"$PY" - "$WORK" <<'PYEOF'
import json, random, sys
rng = random.Random(7)
with open(sys.argv[1] + "/prefs.jsonl", "w") as f, open(sys.argv[1] + "/sft.jsonl", "w") as g:
    for _ in range(256):
        d = [rng.randrange(10) for _ in range(24)]
        p = "sort: " + " ".join(map(str, d)) + " ="
        c = " " + " ".join(map(str, sorted(d)))
        r = d[:]
        while r == sorted(d):
            rng.shuffle(r)
        r = " " + " ".join(map(str, r))
        f.write(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n")
        g.write(json.dumps({"prompt": p, "completion": c}) + "\n")
        g.write(json.dumps({"prompt": p, "completion": r}) + "\n")
PYEOF

rss_mb() { awk -F: '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$1"; }
tps() { "$PY" - "$1" "$WARMUP" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
w = int(sys.argv[2])
prev = rows[w - 1]["tokens_seen"] if w > 0 else 0
tok = sec = 0.0
for r in rows[w:]:
    n = r["tokens_seen"] - prev; prev = r["tokens_seen"]; tok += n; sec += n / r["tokens_per_s"]
print(f"{tok / sec:.0f}")
PYEOF
}

bench() {
  local name=$1 decl=$2 dir="$WORK/$1"
  mkdir -p "$dir" && cp "$WORK"/*.jsonl "$dir/"
  cat > "$dir/b.kdl" <<KDL
dataset prefs path="prefs.jsonl" format=preference
dataset pc path="sft.jsonl" format=prompt-completion
tokenizer tok vocab-size=320 { data pc; }
$decl
ref-logps ref model=m data=prefs { max-len 256; }
dpo aligned model=m ref=ref { steps $((STEPS + WARMUP)); batch-size $B; lr 1e-4; schedule constant; log-every 1; checkpoint-every 0; }
sft tuned model=m data=pc { steps $((STEPS + WARMUP)); batch-size $((2 * B)); packing #false; lr 1e-4; schedule constant; log-every 1; checkpoint-every 0; }
KDL
  (cd "$dir" && "$TEMPER" run -q b.kdl --only ref >/dev/null)
  (cd "$dir" && /usr/bin/time -v -o dpo.time "$TEMPER" run -q b.kdl --only aligned >/dev/null)
  (cd "$dir" && /usr/bin/time -v -o sft.time "$TEMPER" run -q b.kdl --only tuned >/dev/null)
  local art mdir
  art=$(cd "$dir" && "$TEMPER" show b.kdl aligned | awk '/^artifact/ {print $2}')
  mdir=$(cd "$dir" && "$TEMPER" show b.kdl m | awk '/^artifact/ {print $2}')
  local t_tps p_json
  t_tps=$(tps "$art/metrics.jsonl")
  p_json=$("$PY" "$ROOT/bench/dpo_torch.py" "$mdir" "$dir/prefs.jsonl" --steps "$STEPS" --batch-size "$B" --warmup "$WARMUP")
  local d s
  d=$(rss_mb "$dir/dpo.time"); s=$(rss_mb "$dir/sft.time")
  "$PY" - "$name" "$d" "$s" "$t_tps" "$p_json" <<'PYEOF'
import json, sys
name, d, s, t, p = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), json.loads(sys.argv[5])
print(f"{name}: peak RSS dpo {d:.0f} MiB / sft {s:.0f} MiB = {d / s:.3f} (target <= 1.15); "
      f"tokens/s temper dpo {t:.0f} / torch eager {p['tokens_per_s']:.0f} = {t / p['tokens_per_s']:.2f} "
      f"(torch peak RSS {p['peak_rss_mb']:.0f} MiB)")
PYEOF
}

bench tiny "model m tokenizer=tok hidden-size=64 layers=2 heads=4 kv-heads=2 intermediate-size=176 max-position=256 seed=0"
bench small "model m tokenizer=tok hidden-size=256 layers=4 heads=8 kv-heads=4 intermediate-size=688 max-position=256 seed=0"
