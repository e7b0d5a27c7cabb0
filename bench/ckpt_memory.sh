#!/usr/bin/env bash
# Peak memory of a training step with and without `activation-checkpointing #true` (run by hand;
# never part of `make test`). SmolLM2-135M's shapes (bench/gpu_models.py: random weights, its
# real vocabulary, nothing downloaded), one packed row of SEQ tokens per micro-batch, STEPS
# optimizer steps, f32 on CPU by default. Each side is its own worker process: its peak
# resident memory (`peak_rss_mib` of train_summary.json, VmHWM) holds the model, the AdamW
# moments and, on CPU, the activations of the step. The two sides alternate ROUNDS times; the
# medians are printed with the time per step.
#
# Usage: bash bench/ckpt_memory.sh [dir with temper, temper-worker]
# Env: ARCH (smollm2-135m), SEQ (2048), STEPS (2), ROUNDS (3), DEVICE (cpu), PY (python with
#      torch and transformers; default: the project's .venv, else python3).
set -euo pipefail
export HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$(realpath "${1:-$ROOT/target/release}")"
TEMPER="$BIN/temper"
ARCH="${ARCH:-smollm2-135m}"; SEQ="${SEQ:-2048}"; STEPS="${STEPS:-2}"; ROUNDS="${ROUNDS:-3}"
DEVICE="${DEVICE:-cpu}"
PY="${PY:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
[[ -x "$TEMPER" ]] || { echo "no $TEMPER: build it first (make build)" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PY" "$ROOT/bench/gpu_models.py" "$WORK" "$ARCH" --seq "$SEQ" >/dev/null 2>&1
echo "activation checkpointing: $ARCH, 1 x $SEQ tokens per step, $STEPS steps, $DEVICE, $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
  for ckpt in '#false' '#true'; do
    name="r$round-${ckpt#\#}"
    # `seed` differs per round so that every run is a fresh node (nothing cached).
    cat > "$WORK/$name.kdl" <<KDL
model m path="model"
dataset data path="packed.jsonl" format=prompt-completion
sft tuned model=m data=data {
    steps $STEPS; batch-size 1; seq-len $SEQ; packing #true; seed $round
    lr 1e-5; schedule constant; checkpoint-every 0; log-every 1; device $DEVICE
    activation-checkpointing $ckpt
}
KDL
    (cd "$WORK" && "$TEMPER" --store "$WORK/store-$name" run -q "$name.kdl" >/dev/null)
    art=$(cd "$WORK" && "$TEMPER" --store "$WORK/store-$name" show "$name.kdl" tuned \
      | awk '/^artifact/ {print $2}')
    cp "$art/train_summary.json" "$WORK/$name.json"
  done
done
"$PY" - "$WORK" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for side in ("false", "true"):
    runs = [json.load(open(f"{work}/r{r}-{side}.json")) for r in range(1, rounds + 1)]
    rss = statistics.median(s["peak_rss_mib"] for s in runs)
    step = statistics.median(s["seconds"] / s["steps"] for s in runs)
    loss = runs[0]["final_loss"]
    rows[side] = (rss, step, loss)
    label = "with checkpointing   " if side == "true" else "without checkpointing"
    print(f"{label}  peak RSS {rss:8.0f} MiB  {step:7.2f} s/step  final loss {loss:.6f}")
(a, sa, la), (b, sb, lb) = rows["false"], rows["true"]
print(f"checkpointing saves {a - b:.0f} MiB ({(a - b) / a * 100:.0f}% of the peak) "
      f"for {sb / sa:.2f}x the step time; same final loss: {la == lb}")
PY
