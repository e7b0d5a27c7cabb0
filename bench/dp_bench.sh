#!/usr/bin/env bash
# Data-parallel scaling on CPU (not a timed test): the same SFT node (tiny Llama, hidden 64) as
# 1 rank × 2 threads and as 2 ranks × 1 thread (Open MPI), each into a fresh store, alternated,
# ROUNDS times; prints median train tokens/s of each (tokens_seen / seconds of the training
# loop, from train_summary.json), the scaling efficiency (2-rank / 1-rank), and the share of
# the 2-rank step time spent in the all-reduces (allreduce_seconds / seconds).
#
# SHARD=1: instead, the `shard` modes at 2 ranks on a model whose training state dominates the
# process (hidden 1536, 8 layers, 227M parameters, `precision bf16-mixed`: 20 bytes each — f32
# master and its gradient, bf16 working weight and gradient, two f32 AdamW moments — against
# a few hundred MiB of libtorch, data and buffers): `none`, `optimizer`, `gradients`, `full`,
# alternated ROUNDS times; prints the median peak resident memory of rank 0 (`peak_rss_mib` of
# train_summary.json: rank 0 writes it) and tokens/s of each.
# Usage: bash bench/dp_bench.sh [path/to/temper]   (temper-rank beside it: `make build` with MPI)
# Env: STEPS (default 60; STEPS_SHARD, default 4, with SHARD=1), ROUNDS (default 3), SHARD. Run
# it with nothing else busy (SHARD=1 needs about 12 GiB of memory).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TEMPER="$(realpath "${1:-$ROOT/target/release/temper}")"
STEPS="${STEPS:-60}"; ROUNDS="${ROUNDS:-3}"
[ -x "$(dirname "$TEMPER")/temper-rank" ] || { echo "temper-rank not built (make build with Open MPI)" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp "$ROOT/examples/data/train.jsonl" "$ROOT/examples/data/corpus.jsonl" "$WORK/"
recipe() { # recipe RANKS THREADS
  cat <<KDL
dataset corpus path="corpus.jsonl" format=text
dataset train path="train.jsonl" format=prompt-completion
tokenizer tok vocab-size=384 { data corpus; data train; }
model tiny tokenizer=tok hidden-size=64 layers=2 heads=4 kv-heads=2 intermediate-size=176 seed=0
sft tuned model=tiny data=train {
    steps $STEPS; batch-size 8; grad-accum 2; seq-len 128; lr 1e-3
    checkpoint-every 0; log-every 10; device cpu; threads $2; ranks $1
}
KDL
}
if [[ "${SHARD:-0}" == 1 ]]; then
  STEPS="${STEPS_SHARD:-4}"
  MODES="none optimizer gradients full"
  for mode in $MODES; do
    cat > "$WORK/$mode.kdl" <<KDL
dataset corpus path="corpus.jsonl" format=text
dataset train path="train.jsonl" format=prompt-completion
tokenizer tok vocab-size=384 { data corpus; data train; }
model wide tokenizer=tok hidden-size=1536 layers=8 heads=12 kv-heads=12 intermediate-size=4096 seed=0
sft tuned model=wide data=train {
    steps $STEPS; batch-size 4; grad-accum 2; seq-len 64; lr 1e-4; precision bf16-mixed
    checkpoint-every 0; log-every 10; device cpu; threads 1; ranks 2; shard $mode
}
KDL
  done
  cd "$WORK"
  "$TEMPER" --store base run none.kdl --only wide -q >/dev/null 2>&1
  declare -A rss tps
  for _ in $(seq "$ROUNDS"); do
    for mode in $MODES; do
      rm -rf s && cp -r base s
      "$TEMPER" --store s run "$mode.kdl" -q >/dev/null 2>&1 || { echo "run failed: $mode" >&2; exit 1; }
      read -r r t <<<"$(python3 - s <<'PY'
import glob, json, sys
s = json.load(open(glob.glob(sys.argv[1] + "/artifacts/*/train_summary.json")[0]))
print(s["peak_rss_mib"], s["tokens_seen"] / s["seconds"])
PY
)"
      rss[$mode]+="$r "; tps[$mode]+="$t "
    done
  done
  med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
  base_rss=$(echo "${rss[none]}" | med)
  for mode in $MODES; do
    r=$(echo "${rss[$mode]}" | med); t=$(echo "${tps[$mode]}" | med)
    printf 'shard %-9s  rank-0 peak RSS %6.0f MiB (%.2fx of none)  %6.0f tok/s\n' \
      "$mode" "$r" "$(awk -v a="$r" -v b="$base_rss" 'BEGIN{print a/b}')" "$t"
  done
  exit 0
fi
recipe 1 2 > "$WORK/one.kdl"
recipe 2 1 > "$WORK/two.kdl"
cd "$WORK"
# Shared prefix once (dataset, tokenizer, model), then only the sft node reruns per round.
"$TEMPER" --store base run one.kdl --only tiny -q >/dev/null 2>&1
once() { # once RECIPE: "tokens/s allreduce-share" of a fresh run of its sft node
  rm -rf s && cp -r base s
  "$TEMPER" --store s run "$1" -q >/dev/null 2>&1 || { echo "run failed: $1" >&2; exit 1; }
  python3 - s <<'PY'
import glob, json, sys
d = [p for p in glob.glob(sys.argv[1] + "/artifacts/*/train_summary.json")][0]
s = json.load(open(d))
print(s["tokens_seen"] / s["seconds"], s.get("allreduce_seconds", 0.0) / s["seconds"])
PY
}
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
one=(); two=(); share=()
for _ in $(seq "$ROUNDS"); do
  read -r t _ <<<"$(once one.kdl)"; one+=("$t")
  read -r t sh <<<"$(once two.kdl)"; two+=("$t"); share+=("$sh")
done
o=$(printf '%s\n' "${one[@]}" | median)
t=$(printf '%s\n' "${two[@]}" | median)
s=$(printf '%s\n' "${share[@]}" | median)
printf 'sft, %s steps: 1 rank x 2 threads %.0f tok/s, 2 ranks x 1 thread %.0f tok/s: 2-rank/1-rank %.2fx; all-reduce %.1f%% of the 2-rank step time\n' \
  "$STEPS" "$o" "$t" "$(awk -v a="$t" -v b="$o" 'BEGIN{print a/b}')" "$(awk -v x="$s" 'BEGIN{print 100*x}')"
