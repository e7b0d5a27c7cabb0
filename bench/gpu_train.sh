#!/usr/bin/env bash
# GPU training throughput (run by hand on a CUDA machine; never part of `make test`): temper's
# `sft` against the PyTorch eager loop a careful user writes (bench/torch_train_gpu.py:
# transformers, sdpa, bf16 autocast over f32 master weights, fused AdamW, foreach clipping) on
# the same model directory, data, batch and sequence length, side by side.
#
# Models: random initialisations of real architectures' shapes (bench/gpu_models.py: SmolLM2-135M,
# Qwen2.5-0.5B, Llama-3.2-1B; nothing downloaded), BATCH × SEQ tokens per micro-batch, packed rows
# (`packing #true`) and padded rows (`packing #false`). WARMUP untimed steps, then STEPS timed.
# temper's tokens/s come from its metrics (`log-every` = WARMUP: the windows after the first);
# the eager loop times STEPS steps between two device synchronisations. Peak GPU memory of both
# is polled from nvidia-smi (what the process holds, caching allocators included). MFU =
# 6 · parameters · tokens/s ÷ PEAK_TFLOPS (dense bf16; H100/H200: 989), attention FLOPs left out.
# Goal (issue 24): ratio >= 1.0 on each model, MFU >= 40% on the 1B.
#
# Usage: bash bench/gpu_train.sh [dir with temper, temper-worker]
# Env: MODELS ("smollm2-135m qwen2.5-0.5b llama-3.2-1b"), MODES ("packed padded"), BATCH (8),
#      SEQ (2048), STEPS (50), WARMUP (10), PEAK_TFLOPS (989), DEVICE (cuda; `cpu` with
#      MODELS=tiny SEQ=128 smoke-tests the scripts), PRECISION (bf16-mixed; empty = the recipe
#      sets none, for a temper without the `precision` parameter), CKPT (1: activation
#      checkpointing on both sides), PY (python with torch and
#      transformers; default: the project's .venv, else python3).
set -euo pipefail
export HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$(realpath "${1:-$ROOT/target/release}")"
TEMPER="$BIN/temper"
MODELS="${MODELS:-smollm2-135m qwen2.5-0.5b llama-3.2-1b}"
MODES="${MODES:-packed padded}"
BATCH="${BATCH:-8}"; SEQ="${SEQ:-2048}"; STEPS="${STEPS:-50}"; WARMUP="${WARMUP:-10}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"; DEVICE="${DEVICE:-cuda}"; PRECISION="${PRECISION-bf16-mixed}"
PY="${PY:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
CKPT="${CKPT:-0}"
ckpt_line=""; ckpt_flag=()
if [[ "$CKPT" == 1 ]]; then ckpt_line="activation-checkpointing #true"; ckpt_flag=(--ckpt); fi
[[ -x "$TEMPER" ]] || { echo "no $TEMPER: build it first (make build)" >&2; exit 1; }
"$PY" -c 'import torch, transformers' || { echo "$PY lacks torch or transformers" >&2; exit 1; }
WORK="$(mktemp -d)"
POLL=""
cleanup() { if [[ -n "$POLL" ]]; then kill "$POLL" 2>/dev/null || true; fi; rm -rf "$WORK"; }
trap cleanup EXIT

# peak_run CMD…: runs CMD (stdout kept) while polling the GPU memory its process tree holds;
# writes the peak in MiB to $WORK/peak.
peak_run() {
  echo 0 > "$WORK/peak"
  if [[ "$DEVICE" == cuda ]] && command -v nvidia-smi >/dev/null; then
    ( peak=0
      while sleep 0.2; do
        used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
        (( used > peak )) && peak=$used && echo "$peak" > "$WORK/peak"
      done ) &
    POLL=$!
  fi
  "$@"
  if [[ -n "$POLL" ]]; then
    kill "$POLL" 2>/dev/null || true
    wait "$POLL" 2>/dev/null || true
    POLL=""
  fi
}

echo "GPU training throughput: $BATCH x $SEQ tokens per step, $STEPS timed steps after $WARMUP, device $DEVICE"
for arch in $MODELS; do
  dir="$WORK/$arch"
  info=$("$PY" "$ROOT/bench/gpu_models.py" "$dir" "$arch" --seq "$SEQ" 2>/dev/null | tail -1)
  params=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["parameters"])' "$info")
  for mode in $MODES; do
    packing='#false'; [[ "$mode" == packed ]] && packing='#true'
    prec=""; [[ -n "$PRECISION" ]] && prec="precision $PRECISION"
    cat > "$dir/$mode.kdl" <<KDL
model m path="model"
dataset data path="$mode.jsonl" format=prompt-completion
sft tuned model=m data=data {
    steps $((STEPS + WARMUP)); batch-size $BATCH; seq-len $SEQ; packing $packing
    lr 1e-5; schedule constant; weight-decay 0.0
    log-every $WARMUP; checkpoint-every 0; device $DEVICE
    $prec
    $ckpt_line
}
KDL
    (cd "$dir" && "$TEMPER" --store "$WORK/store-$arch-$mode" run -q "$mode.kdl" --only m data >/dev/null)
    peak_run bash -c "cd '$dir' && '$TEMPER' --store '$WORK/store-$arch-$mode' run -q '$mode.kdl' >/dev/null"
    t_peak=$(cat "$WORK/peak")
    art=$(cd "$dir" && "$TEMPER" --store "$WORK/store-$arch-$mode" show "$mode.kdl" tuned | awk '/^artifact/ {print $2}')
    t_json=$("$PY" - "$art/metrics.jsonl" <<'PY'
import json, sys
# One line per window of WARMUP steps: the first window is the warm-up, the rest are timed.
rows = [json.loads(l) for l in open(sys.argv[1])]
tokens = secs = 0.0
for a, b in zip(rows, rows[1:]):
    n = b["tokens_seen"] - a["tokens_seen"]
    tokens += n
    secs += n / b["tokens_per_s"]
print(json.dumps({"tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs,
                  "final_loss": rows[-1]["loss"]}))
PY
)
    peak_run "$PY" "$ROOT/bench/torch_train_gpu.py" "$dir/model" "$dir/$mode.jsonl" --mode "$mode" \
      --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE" \
      "${ckpt_flag[@]}" > "$WORK/eager.json"
    p_peak=$(cat "$WORK/peak")
    "$PY" - "$arch" "$mode" "$params" "$PEAK_TFLOPS" "$t_json" "$(cat "$WORK/eager.json")" \
      "$t_peak" "$p_peak" <<'PY'
import json, sys
arch, mode, params, peak = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
t, p = json.loads(sys.argv[5]), json.loads(sys.argv[6])
mfu = lambda tps: 6 * params * tps / (peak * 1e12) * 100  # noqa: E731
print(f"{arch:<13} {mode:<6} {params / 1e6:7.1f}M  "
      f"temper {t['tokens_per_s']:10.0f} tok/s (MFU {mfu(t['tokens_per_s']):4.1f}%, {sys.argv[7]} MiB)  "
      f"eager {p['tokens_per_s']:10.0f} tok/s (MFU {mfu(p['tokens_per_s']):4.1f}%, {sys.argv[8]} MiB)  "
      f"ratio {t['tokens_per_s'] / p['tokens_per_s']:.2f}x  "
      f"final loss {t['final_loss']:.3f} / {p['final_loss']:.3f}")
PY
  done
done
