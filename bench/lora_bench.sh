#!/usr/bin/env bash
# LoRA vs full fine-tuning (not a timed test): the same SmolLM2-135M-Instruct `sft` node on the
# quickstart's chat data (examples/data/chat.jsonl, chat template, packed), once training all
# weights and once training a LoRA adapter (rank RANK, alpha 2·RANK, on q/k/v/o_proj) — same
# data, batch size, seq-len, steps and seed, so both sides see the same tokens. The two sides
# alternate, ROUNDS times, each run into a fresh store copied from one base store that holds the
# shared inputs (the dataset and the model, built once), so only the sft node runs. Per side:
# the median train tokens/s (from the node's metrics.jsonl, `log-every 1`, the first WARMUP
# steps skipped, as sft_throughput.sh does), the median peak RSS (/usr/bin/time -v around
# `temper run`, which counts its worker child) and the optimizer state size (bytes of
# optimizer.safetensors in the node's final checkpoint, <store>/work/<key>/checkpoints/step-*/;
# `checkpoint-every 0` writes it only at the end); then the ratio LoRA / full of each. Exits 1
# unless LoRA's optimizer state is < 5% of full fine-tuning's.
# Needs examples/models/smollm2-135m-instruct (bash scripts/prepare-smollm2.sh).
# Usage: bash bench/lora_bench.sh [path/to/temper]     (run `make build` first)
# Env: STEPS (timed steps, default 20), WARMUP (default 3), ROUNDS (default 3), BATCH (examples
# per step, default 8), SEQ_LEN (default 512), RANK (default 16). Run it with nothing else busy.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TEMPER="$(realpath "${1:-$ROOT/target/release/temper}")"
STEPS="${STEPS:-20}"; WARMUP="${WARMUP:-3}"; ROUNDS="${ROUNDS:-3}"
BATCH="${BATCH:-8}"; SEQ_LEN="${SEQ_LEN:-512}"; RANK="${RANK:-16}"
SMOL="$ROOT/examples/models/smollm2-135m-instruct"
PY="$ROOT/.venv/bin/python"; [[ -x "$PY" ]] || PY=python3
[[ -x "$TEMPER" ]] || { echo "no $TEMPER: run 'make build' first" >&2; exit 1; }
[[ -f "$SMOL/model.safetensors" ]] || { echo "no $SMOL: run 'bash scripts/prepare-smollm2.sh' first" >&2; exit 1; }
(( WARMUP >= 1 && STEPS >= 1 )) || { echo "WARMUP and STEPS must be >= 1" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp "$ROOT/examples/data/chat.jsonl" "$WORK/"
ln -s "$SMOL" "$WORK/smol"

recipe() { # recipe LR [LORA-BLOCK]
  cat <<KDL
model smol path="smol"
dataset chat path="chat.jsonl" format=messages
sft tuned model=smol data=chat {
    steps $((STEPS + WARMUP)); batch-size $BATCH; seq-len $SEQ_LEN
    lr $1; schedule constant
    log-every 1; checkpoint-every 0; device cpu
$2
}
KDL
}
recipe 1e-5 "" > "$WORK/full.kdl"
recipe 2e-4 "    lora rank=$RANK alpha=$((2 * RANK)) { target \"q_proj\" \"k_proj\" \"v_proj\" \"o_proj\"; }" \
  > "$WORK/lora.kdl"
cd "$WORK"
"$TEMPER" check -q full.kdl >/dev/null && "$TEMPER" check -q lora.kdl >/dev/null
# The shared inputs (the dataset and the model), once; both recipes give them the same keys.
"$TEMPER" --store base run -q full.kdl --only smol chat >/dev/null 2>&1 \
  || { echo "building the inputs failed" >&2; "$TEMPER" --store base run full.kdl --only smol chat >&2; exit 1; }

once() { # once SIDE: "tokens/s peak-RSS-MiB optimizer-bytes trainable-params" of a fresh run
  rm -rf s && cp -r base s
  /usr/bin/time -v -o time.txt "$TEMPER" --store s run -q "$1.kdl" >run.log 2>&1 \
    || { echo "run failed: $1" >&2; cat run.log time.txt >&2; exit 1; }
  local key art opt
  key=$("$TEMPER" --store s show "$1.kdl" tuned | awk '/^key/ {print $2}')
  art=$("$TEMPER" --store s show "$1.kdl" tuned | awk '/^artifact/ {print $2}')
  opt=$(ls s/work/"$key"/checkpoints/step-*/optimizer.safetensors 2>/dev/null | tail -1)
  [[ -n "$opt" ]] || { echo "$1: no optimizer.safetensors under s/work/$key/checkpoints" >&2; exit 1; }
  "$PY" - "$art" "$WARMUP" "$(stat -c %s "$opt")" \
    "$(awk -F: '/Maximum resident set size/ {print $2/1024}' time.txt)" <<'PY'
import json, sys
art, warm, opt, rss = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
rows = [json.loads(l) for l in open(art + "/metrics.jsonl")]
prev = rows[warm - 1]["tokens_seen"]
tok = sec = 0.0
for r in rows[warm:]:
    n = r["tokens_seen"] - prev; prev = r["tokens_seen"]; tok += n; sec += n / r["tokens_per_s"]
s = json.load(open(art + "/train_summary.json"))
trained = s["lora"]["trainable_params"] if s.get("lora") else 0
print(f"{tok / sec:.2f} {rss:.0f} {opt} {trained}")
PY
  rm -rf s
}
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
full_t=(); full_r=(); lora_t=(); lora_r=(); full_o=0; lora_o=0; lora_p=0
for i in $(seq "$ROUNDS"); do
  read -r t r o _ <<<"$(once full)"; full_t+=("$t"); full_r+=("$r"); full_o=$o
  read -r t r o p <<<"$(once lora)"; lora_t+=("$t"); lora_r+=("$r"); lora_o=$o; lora_p=$p
  echo "round $i/$ROUNDS: full ${full_t[-1]} tok/s ${full_r[-1]} MiB; lora ${lora_t[-1]} tok/s ${lora_r[-1]} MiB" >&2
done
ft=$(printf '%s\n' "${full_t[@]}" | median); lt=$(printf '%s\n' "${lora_t[@]}" | median)
fr=$(printf '%s\n' "${full_r[@]}" | median); lr=$(printf '%s\n' "${lora_r[@]}" | median)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a/b}'; }
echo "SmolLM2-135M sft, $STEPS timed steps after $WARMUP, batch $BATCH, seq-len $SEQ_LEN, $ROUNDS rounds (medians)"
printf '%-9s %12s %14s %18s\n' side "tokens/s" "peak RSS MiB" "optimizer bytes"
printf '%-9s %12.1f %14.0f %18d\n' full "$ft" "$fr" "$full_o"
printf '%-9s %12.1f %14.0f %18d   (LoRA rank %s on q/k/v/o_proj: %s trainable params)\n' \
  lora "$lt" "$lr" "$lora_o" "$RANK" "$lora_p"
printf '%-9s %11sx %13sx %17sx\n' "lora/full" "$(ratio "$lt" "$ft")" "$(ratio "$lr" "$fr")" "$(ratio "$lora_o" "$full_o")"
if awk -v a="$lora_o" -v b="$full_o" 'BEGIN{exit !(a < 0.05 * b)}'; then
  echo "ok: LoRA optimizer state is $(awk -v a="$lora_o" -v b="$full_o" 'BEGIN{printf "%.2f", 100*a/b}')% of full fine-tuning's (< 5%)"
else
  echo "FAIL: LoRA optimizer state $lora_o bytes is not < 5% of full fine-tuning's $full_o bytes" >&2
  exit 1
fi
