#!/usr/bin/env bash
# GPU check of data-parallel training (run by hand on a CUDA machine; never part of `make test`).
# One SFT node (Llama-family, HIDDEN × LAYERS, bf16 on cuda:0, the dtype `auto` picks there) runs
#  - as a plain worker (one rank, no collective), and
#  - through the rank launcher with NCCL, world size 1 (`TEMPER_RANKED_ALWAYS=1`): the same
#    process layout as `ranks R` on R GPUs, with every gradient bucket all-reduced by NCCL,
# each into a fresh store, alternated, ROUNDS times. Prints the median train tokens/s of both,
# the share of the NCCL run's training time spent in all-reduces, the loss before and after,
# max |Δw| between the runs (and between two plain runs: CUDA's own run-to-run noise), then a
# failure check: `ranks 2` on one GPU (pretending to have two): rank 1 finds no device; the node must
# fail with the error, without a hang.
# Usage: bash bench/gpu_check.sh [dir with temper, temper-worker, temper-rank]
# Env: HIDDEN (1024), LAYERS (8), STEPS (200), ROUNDS (3).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$(realpath "${1:-$ROOT/target/release}")"
TEMPER="$BIN/temper"
HIDDEN="${HIDDEN:-1024}"; LAYERS="${LAYERS:-8}"; STEPS="${STEPS:-200}"; ROUNDS="${ROUNDS:-3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp "$ROOT/examples/data/train.jsonl" "$ROOT/examples/data/corpus.jsonl" "$WORK/"
recipe() { # recipe RANKS
  cat <<KDL
dataset corpus path="corpus.jsonl" format=text
dataset train path="train.jsonl" format=prompt-completion
tokenizer tok vocab-size=384 { data corpus; data train; }
model base tokenizer=tok hidden-size=$HIDDEN layers=$LAYERS heads=8 kv-heads=4 \\
    intermediate-size=$((HIDDEN * 11 / 4)) max-position=256 seed=0
sft tuned model=base data=train {
    steps $STEPS; batch-size 16; grad-accum 2; seq-len 128; lr 1e-4
    checkpoint-every 0; log-every 20; device cuda; ranks $1
}
KDL
}
recipe 1 > "$WORK/one.kdl"
recipe 2 > "$WORK/two.kdl"
cd "$WORK"
"$TEMPER" --store base run one.kdl --only base -q >/dev/null
summary() { # summary STORE: tokens/s, all-reduce share, first and last loss, ranks
  python3 - "$1" <<'PY'
import glob, json, sys
s = json.load(open(glob.glob(sys.argv[1] + "/artifacts/*/train_summary.json")[0]))
print(f'{s["tokens_seen"] / s["seconds"]:.0f} {s.get("allreduce_seconds", 0) / s["seconds"]:.4f} '
      f'{s["first_loss"]:.4f} {s["final_loss"]:.4f} {s["ranks"]}')
PY
}
once() { # once NAME [ENV...]: a fresh run of the sft node into store NAME
  local name="$1"; shift
  rm -rf "$name" && cp -r base "$name"
  env "$@" "$TEMPER" --store "$name" run one.kdl -q >/dev/null 2>"$name.err" \
    || { echo "run $name failed:" >&2; cat "$name.err" >&2; exit 1; }
  summary "$name"
}
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
plain=(); nccl=(); share=()
for r in $(seq "$ROUNDS"); do
  read -r t _ f l _ <<<"$(once "plain$r")"; plain+=("$t")
  echo "round $r plain: $t tok/s, loss $f -> $l"
  read -r t sh f l k <<<"$(once "nccl$r" TEMPER_RANKED_ALWAYS=1)"; nccl+=("$t"); share+=("$sh")
  echo "round $r nccl (world $k): $t tok/s, all-reduce $sh of the time, loss $f -> $l"
done
echo "== the NCCL run's node log:"
grep -rh "rank 0/\|NCCL\|bf16" nccl1/logs 2>/dev/null | head -5 || true
p=$(printf '%s\n' "${plain[@]}" | median)
n=$(printf '%s\n' "${nccl[@]}" | median)
s=$(printf '%s\n' "${share[@]}" | median)
printf 'sft %sx%s bf16, %s steps: plain %.0f tok/s, NCCL world 1 %.0f tok/s (%.2fx); all-reduce %.2f%% of the training time\n' \
  "$HIDDEN" "$LAYERS" "$STEPS" "$p" "$n" "$(awk -v a="$n" -v b="$p" 'BEGIN{print a/b}')" \
  "$(awk -v x="$s" 'BEGIN{print 100*x}')"
python3 - <<'PY'
import glob, torch
from safetensors.torch import load_file
def w(store):
    return load_file(glob.glob(store + "/artifacts/*/model.safetensors")[0])
def diff(a, b):
    a, b = w(a), w(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
a = w("plain1")
print("weights:", {str(v.dtype) for v in a.values()}, sum(v.numel() for v in a.values()), "parameters")
print(f"max |dw| plain1 vs nccl1: {diff('plain1', 'nccl1'):.3g}")
if glob.glob("plain2/artifacts"):
    print(f"max |dw| plain1 vs plain2: {diff('plain1', 'plain2'):.3g}")
PY
echo "== ranks 2 on one GPU (rank 1 has no device): must fail, not hang"
rm -rf dup && cp -r base dup
start=$(date +%s)
if TEMPER_CUDA_DEVICES=2 timeout 300 "$TEMPER" --store dup run two.kdl >dup.out 2>&1; then
  echo "UNEXPECTED: the run succeeded"; else echo "failed as expected (exit $?) in $(( $(date +%s) - start )) s:"; fi
grep -iE "error|nccl|rank" dup.out | head -12
