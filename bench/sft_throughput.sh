#!/usr/bin/env bash
# SFT training-step throughput: temper's `sft` vs a plain PyTorch eager loop (bench/torch_sft.py)
# on the same libtorch (the project's .venv torch), model config, data, batch size and padding,
# side by side. Prints tokens/s of both, the ratio temper / PyTorch (target >= 1.0, aim 1.1) and
# the peak RSS of both processes (/usr/bin/time -v; temper's run does only the sft node, its
# inputs are built before).
#
# Models: the quickstart-sized tiny llama (always) and SmolLM2-135M-Instruct when
# examples/models/smollm2-135m-instruct exists (bash scripts/prepare-smollm2.sh).
# Timing: both sides skip the first WARMUP steps and time the next STEPS optimizer steps
# (temper: from its per-step metrics, `log-every 1`; tokens = real, non-padding tokens).
# Usage: bash bench/sft_throughput.sh [STEPS] [WARMUP]     (run `make build` first)
set -euo pipefail
export HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TEMPER="${TEMPER:-$ROOT/target/release/temper}"
PY="$ROOT/.venv/bin/python"
STEPS="${1:-30}"
WARMUP="${2:-3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
[[ -x "$TEMPER" ]] || { echo "no $TEMPER: run 'make build' first" >&2; exit 1; }
"$PY" -c 'import transformers' 2>/dev/null \
  || "$PY" -m pip install --no-input --disable-pip-version-check transformers >/dev/null

# Data: prompt-completion records of near-uniform length (sorting 24 digits), so that padded
# batches have the same shape whichever order each side takes them in.
"$PY" - "$WORK/data.jsonl" <<'PYEOF'
import json, random, sys
rng = random.Random(7)
with open(sys.argv[1], "w") as f:
    for _ in range(512):
        d = [rng.randrange(10) for _ in range(24)]
        f.write(json.dumps({"prompt": "sort: " + " ".join(map(str, d)) + " =",
                            "completion": " " + " ".join(map(str, sorted(d)))}) + "\n")
PYEOF

rss_mb() { awk -F: '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$1"; }

# bench NAME BATCH MODEL_DECL [LR]: runs both sides and prints one result line.
bench() {
  local name=$1 batch=$2 decl=$3 lr=${4:-1e-4}
  local dir="$WORK/$name"
  mkdir -p "$dir"
  cp "$WORK/data.jsonl" "$dir/data.jsonl"
  cat > "$dir/bench.kdl" <<KDL
dataset data path="data.jsonl" format=prompt-completion
$decl
sft tuned model=m data=data {
    steps $((STEPS + WARMUP))
    batch-size $batch
    packing #false
    lr $lr
    schedule constant
    log-every 1
    checkpoint-every 0
}
KDL
  (cd "$dir" && "$TEMPER" run -q bench.kdl --only m data >/dev/null)
  (cd "$dir" && /usr/bin/time -v -o "$dir/temper.time" "$TEMPER" run -q bench.kdl >/dev/null)
  local art metrics
  art=$(cd "$dir" && "$TEMPER" show bench.kdl tuned | awk '/^artifact/ {print $2}')
  metrics="$art/metrics.jsonl"
  local mdir
  mdir=$(cd "$dir" && "$TEMPER" show bench.kdl m | awk '/^artifact/ {print $2}')
  local t_json
  t_json=$("$PY" - "$metrics" "$WARMUP" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
warm = int(sys.argv[2])
prev = rows[warm - 1]["tokens_seen"] if warm > 0 else 0
tokens = secs = 0.0
for r in rows[warm:]:
    n = r["tokens_seen"] - prev
    prev = r["tokens_seen"]
    tokens += n
    secs += n / r["tokens_per_s"]
print(json.dumps({"steps": len(rows) - warm, "tokens": tokens, "seconds": secs,
                  "tokens_per_s": tokens / secs, "final_loss": rows[-1]["loss"]}))
PYEOF
)
  local p_json
  p_json=$(/usr/bin/time -v -o "$dir/torch.time" "$PY" "$ROOT/bench/torch_sft.py" "$mdir" \
    "$dir/data.jsonl" --steps "$STEPS" --warmup "$WARMUP" --batch-size "$batch" --lr "$lr")
  "$PY" - "$name" "$batch" "$t_json" "$p_json" "$(rss_mb "$dir/temper.time")" \
    "$(rss_mb "$dir/torch.time")" <<'PYEOF'
import json, sys
name, batch, t, p, t_rss, p_rss = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), \
    json.loads(sys.argv[4]), sys.argv[5], sys.argv[6]
tpt = t["tokens"] / t["steps"]
print(f"{name:<10} batch {batch:>2}  ~{tpt:.0f} tok/step  "
      f"temper {t['tokens_per_s']:9.1f} tok/s  pytorch {p['tokens_per_s']:9.1f} tok/s  "
      f"ratio {t['tokens_per_s'] / p['tokens_per_s']:.2f}x  "
      f"peak RSS temper {t_rss} MB / pytorch {p_rss} MB  "
      f"(final loss {t['final_loss']:.3f} / {p['final_loss']:.3f})")
PYEOF
}

echo "SFT throughput, $STEPS timed steps after $WARMUP warm-up steps, torch threads = default"
TINY='tokenizer tok vocab-size=384 { data data; }
model m tokenizer=tok hidden-size=64 layers=2 heads=4 kv-heads=2 intermediate-size=176 max-position=256 tie-embeddings=#true seed=0'
bench tiny 16 "$TINY" 1e-3
SMOL="$ROOT/examples/models/smollm2-135m-instruct"
if [[ -f "$SMOL/model.safetensors" ]]; then
  bench smollm2 4 "model m path=\"$SMOL\"" 1e-5
else
  echo "smollm2    skipped: run 'bash scripts/prepare-smollm2.sh' first"
fi
