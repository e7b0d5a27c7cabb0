#!/usr/bin/env bash
# GPU check of the CUDA-only training paths (run by hand on a CUDA machine; never part of
# `make test`): the varlen flash attention of packed rows, SDPA's causal path for right-padded
# rows, and activation checkpointing, against what CPU runs check. One small SFT node (hidden
# HIDDEN, LAYERS layers, GQA, a 3-example-per-row packing) for STEPS steps:
#  1. `packing #true` on CPU (f32, the dense segment mask) and on CUDA (bf16-mixed, varlen flash):
#     the per-step losses must agree to bf16 rounding (printed: max relative difference, and the
#     CPU run's own first/last loss);
#  2. `packing #false` on CUDA (right-padded rows: SDPA causal) against `packing #false` on CPU;
#  3. CUDA packed with `activation-checkpointing #true` against without: max |Δw| of the written
#     weights, beside max |Δw| of two plain CUDA runs (CUDA's own run-to-run noise), and both
#     runs' peak GPU memory (nvidia-smi, polled).
# Usage: bash bench/gpu_numerics.sh [dir with temper, temper-worker]
# Env: HIDDEN (256), LAYERS (4), STEPS (60), SEQ (512).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$(realpath "${1:-$ROOT/target/release}")"
TEMPER="$BIN/temper"
HIDDEN="${HIDDEN:-256}"; LAYERS="${LAYERS:-4}"; STEPS="${STEPS:-60}"; SEQ="${SEQ:-512}"
PY="${PY:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp "$ROOT/examples/data/train.jsonl" "$ROOT/examples/data/corpus.jsonl" "$WORK/"
recipe() { # recipe DEVICE PACKING CKPT
  cat <<KDL
dataset corpus path="corpus.jsonl" format=text
dataset train path="train.jsonl" format=prompt-completion
tokenizer tok vocab-size=384 { data corpus; data train; }
model base tokenizer=tok hidden-size=$HIDDEN layers=$LAYERS heads=8 kv-heads=2 \\
    intermediate-size=$((HIDDEN * 11 / 4)) max-position=$SEQ seed=0
sft tuned model=base data=train {
    steps $STEPS; batch-size 8; seq-len $SEQ; lr 3e-4; packing $2
    checkpoint-every 0; log-every 1; device $1; activation-checkpointing $3
}
KDL
}
cd "$WORK"
recipe cpu '#true' '#false' > base.kdl
"$TEMPER" --store base run base.kdl --only base -q >/dev/null
PEAK=0
run() { # run NAME DEVICE PACKING CKPT: trains into a fresh store; prints the artifact dir
  recipe "$2" "$3" "$4" > "$1.kdl"
  rm -rf "s-$1" && cp -r base "s-$1"
  echo 0 > peak
  ( p=0; while sleep 0.2; do
      u=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
      [[ -n "$u" ]] && (( u > p )) && p=$u && echo "$p" > peak
    done ) &
  poll=$!
  "$TEMPER" --store "s-$1" run "$1.kdl" -q >/dev/null
  kill "$poll" 2>/dev/null || true; wait "$poll" 2>/dev/null || true
  PEAK=$(cat peak)
  "$TEMPER" --store "s-$1" show "$1.kdl" tuned | awk '/^artifact/ {print $2}'
}
compare() { # compare LABEL DIR_A DIR_B: max relative loss difference and max |Δw|
  "$PY" - "$@" <<'PY'
import json, sys
from safetensors.torch import load_file
label, a, b = sys.argv[1:4]
la = [json.loads(l)["loss"] for l in open(f"{a}/metrics.jsonl")]
lb = [json.loads(l)["loss"] for l in open(f"{b}/metrics.jsonl")]
rel = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(la, lb))
wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
dw = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
print(f"{label:<44} loss {la[0]:.4f} -> {la[-1]:.4f} vs {lb[0]:.4f} -> {lb[-1]:.4f}  "
      f"max rel. loss diff {rel:.2e}  max |dw| {dw:.2e}")
PY
}
cpu_packed=$(run cpu-packed cpu '#true' '#false')
cuda_packed=$(run cuda-packed cuda '#true' '#false'); peak_plain=$PEAK
cuda_again=$(run cuda-again cuda '#true' '#false')
cuda_ckpt=$(run cuda-ckpt cuda '#true' '#true'); peak_ckpt=$PEAK
cpu_padded=$(run cpu-padded cpu '#false' '#false')
cuda_padded=$(run cuda-padded cuda '#false' '#false')
echo "sft ${HIDDEN}x${LAYERS}, $STEPS steps of 8 x $SEQ tokens"
compare "packed: CUDA varlen flash vs CPU segment mask" "$cuda_packed" "$cpu_packed"
compare "padded: CUDA SDPA causal vs CPU padding mask" "$cuda_padded" "$cpu_padded"
compare "CUDA packed: checkpointing vs not" "$cuda_ckpt" "$cuda_packed"
compare "CUDA packed: two plain runs (noise)" "$cuda_again" "$cuda_packed"
echo "peak GPU memory: $peak_plain MiB without checkpointing, $peak_ckpt MiB with"
