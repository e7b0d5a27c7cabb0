#!/usr/bin/env bash
# Per-node overhead of running nodes in worker processes (not a timed test): `temper run` of a
# recipe of N tiny independent `dataset` nodes into a fresh store, for the binary under test and,
# when given, a baseline binary, alternately, ROUNDS times each; prints median wall times, the
# time per node, and the ratio. Each worker pays libtorch's start-up once and then serves jobs.
# Usage: bash bench/many_nodes.sh [path/to/temper] [path/to/baseline/temper]
# Env: N (default 20), JOBS (default 1), ROUNDS (default 5). Run it with nothing else busy.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TEMPER="$(realpath "${1:-$ROOT/target/release/temper}")"
BASE="${2:+$(realpath "$2")}"
N="${N:-20}"; JOBS="${JOBS:-1}"; ROUNDS="${ROUNDS:-5}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/data"
: > "$WORK/recipe.kdl"
for i in $(seq "$N"); do
  echo "{\"text\": \"document $i\"}" > "$WORK/data/d$i.jsonl"
  echo "dataset d$i path=\"data/d$i.jsonl\" format=text" >> "$WORK/recipe.kdl"
done
cd "$WORK"
once() { # once BIN: wall seconds of a run into a fresh store
  rm -rf "$WORK/store"
  local t0; t0=$(date +%s.%N)
  "$1" --store "$WORK/store" run recipe.kdl -q --jobs "$JOBS" >/dev/null 2>&1 || { echo "run failed: $1" >&2; exit 1; }
  local t1; t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.6f", b-a}'
}
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
new=(); old=()
for _ in $(seq "$ROUNDS"); do
  new+=("$(once "$TEMPER")")
  [ -n "$BASE" ] && old+=("$(once "$BASE")")
done
n=$(printf '%s\n' "${new[@]}" | median)
printf 'run of %s dataset nodes, --jobs %s: %.3f s (%.1f ms/node)' "$N" "$JOBS" "$n" "$(awk -v t="$n" -v n="$N" 'BEGIN{print 1000*t/n}')"
if [ -n "$BASE" ]; then
  o=$(printf '%s\n' "${old[@]}" | median)
  printf ', baseline %.3f s (%.1f ms/node), ratio %.2fx' "$o" "$(awk -v t="$o" -v n="$N" 'BEGIN{print 1000*t/n}')" "$(awk -v a="$n" -v b="$o" 'BEGIN{print a/b}')"
fi
echo
