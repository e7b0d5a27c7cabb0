#!/usr/bin/env bash
# The Slurm executor's overhead (not a timed test), on the cluster SLURM_CONF names (the
# one-node cluster of scripts/slurm-up.sh by default):
#  1. submit-to-all-done of a DAG of N tiny `dataset` nodes: `temper run --executor slurm
#     --wait` against the local executor (`--jobs 1` and `--jobs 2`), each into a fresh store,
#     alternated, ROUNDS times; prints the medians and the ratios;
#  2. with M jobs recorded (M dataset nodes submitted `--hold`, so none runs): the latency of
#     `plan` and `status` (medians of ROUNDS), and of the `temper cancel` that ends them.
# Usage: bash bench/slurm_bench.sh [path/to/temper]
# Env: N (default 20), M (default 1000), ROUNDS (default 3). Run it with nothing else busy.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TEMPER="$(realpath "${1:-$ROOT/target/release/temper}")"
N="${N:-20}"; M="${M:-1000}"; ROUNDS="${ROUNDS:-3}"
export SLURM_CONF="${SLURM_CONF:-/tmp/temper-slurm/slurm.conf}"
sinfo -h >/dev/null 2>&1 || { echo "no Slurm answers (SLURM_CONF=$SLURM_CONF): bash scripts/slurm-up.sh" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
recipe() { # recipe FILE COUNT: COUNT independent dataset nodes, each with its own file
  mkdir -p "$WORK/data"
  : > "$1"
  for i in $(seq "$2"); do
    [ -f "$WORK/data/d$i.jsonl" ] || echo "{\"text\": \"document $i\"}" > "$WORK/data/d$i.jsonl"
    echo "dataset d$i path=\"data/d$i.jsonl\" format=text" >> "$1"
  done
}
recipe "$WORK/small.kdl" "$N"
recipe "$WORK/large.kdl" "$M"
cd "$WORK"
secs() { # secs CMD…: wall seconds of CMD (output dropped; a failure stops the benchmark)
  local t0 t1; t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.6f", b-a}'
}
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
slurm=(); local1=(); local2=()
for _ in $(seq "$ROUNDS"); do
  rm -rf s; slurm+=("$(secs "$TEMPER" --store s run small.kdl --executor slurm --wait)")
  rm -rf l1; local1+=("$(secs "$TEMPER" --store l1 run small.kdl -q --jobs 1)")
  rm -rf l2; local2+=("$(secs "$TEMPER" --store l2 run small.kdl -q --jobs 2)")
done
s=$(printf '%s\n' "${slurm[@]}" | median)
l1=$(printf '%s\n' "${local1[@]}" | median)
l2=$(printf '%s\n' "${local2[@]}" | median)
printf '%s dataset nodes, submit to all done: slurm %.2f s, local --jobs 1 %.2f s (slurm/local %.1fx), local --jobs 2 %.2f s (%.1fx)\n' \
  "$N" "$s" "$l1" "$(awk -v a="$s" -v b="$l1" 'BEGIN{print a/b}')" "$l2" "$(awk -v a="$s" -v b="$l2" 'BEGIN{print a/b}')"
printf '  per node: slurm %.0f ms, local --jobs 1 %.0f ms\n' \
  "$(awk -v t="$s" -v n="$N" 'BEGIN{print 1000*t/n}')" "$(awk -v t="$l1" -v n="$N" 'BEGIN{print 1000*t/n}')"

rm -rf big
sub=$(secs "$TEMPER" --store big run large.kdl --executor slurm --hold)
plan=(); status=()
for _ in $(seq "$ROUNDS"); do
  plan+=("$(secs "$TEMPER" --store big plan large.kdl)")
  status+=("$(secs "$TEMPER" --store big status)")
done
p=$(printf '%s\n' "${plan[@]}" | median)
st=$(printf '%s\n' "${status[@]}" | median)
recorded=$(ls big/slurm/jobs | wc -l)
c=$(secs "$TEMPER" --store big cancel large.kdl)
printf '%s jobs recorded (submitted held in %.1f s, %.1f ms/job): plan %.3f s, status %.3f s, cancel %.2f s\n' \
  "$recorded" "$sub" "$(awk -v t="$sub" -v n="$M" 'BEGIN{print 1000*t/n}')" "$p" "$st" "$c"
