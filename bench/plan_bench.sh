#!/usr/bin/env bash
# Benchmarks of the foundation (not timed tests): prints wall times and the ratio to the 1 s target.
#  1. `temper plan` of a generated 1,000-variant sweep recipe (10 x 10 x 10 grid over a model node).
#  2. a fully cached rerun of the quickstart (`temper run examples/quickstart.kdl` after it has run).
# Usage: make bench   (or: bash bench/plan_bench.sh [path/to/temper])
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TEMPER="${1:-$ROOT/target/release/temper}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.6f", b-a}'; }
best_of() { # best_of N cmd... : best wall time of N runs
  local n=$1; shift; local best=999999
  for _ in $(seq "$n"); do
    local t0; t0=$(now); "$@" >/dev/null 2>&1 || { echo "command failed: $*" >&2; "$@"; exit 1; }
    local t1; t1=$(now); local d; d=$(elapsed "$t0" "$t1")
    best=$(awk -v a="$d" -v b="$best" 'BEGIN{print (a<b)?a:b}')
  done
  echo "$best"
}

# --- 1. plan of a 1,000-variant sweep -------------------------------------------------------
mkdir -p "$WORK/sweep/data"
cp "$ROOT/examples/data/corpus.jsonl" "$WORK/sweep/data/"
cat > "$WORK/sweep/recipe.kdl" <<'KDL'
dataset corpus path="data/corpus.jsonl" format=text
tokenizer tok vocab-size=300 { data corpus; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
sweep {
    tiny.seed 0 1 2 3 4 5 6 7 8 9
    tiny.init-std 0.01 0.02 0.03 0.04 0.05 0.06 0.07 0.08 0.09 0.1
    tiny.rope-theta 1000.0 2000.0 3000.0 4000.0 5000.0 6000.0 7000.0 8000.0 9000.0 10000.0
}
KDL
cd "$WORK/sweep"
"$TEMPER" --store "$WORK/store1" plan recipe.kdl > "$WORK/plan.txt"
variants=$(grep -c '^.*tiny\[' "$WORK/plan.txt" || true)
cold=$(best_of 1 "$TEMPER" --store "$WORK/store1b" plan recipe.kdl)
warm=$(best_of 5 "$TEMPER" --store "$WORK/store1" plan recipe.kdl)
printf 'plan, 1000-variant sweep (%s model instances): first %.3f s, best of 5 %.3f s  -> %.2fx of the 1 s target\n' \
  "$variants" "$cold" "$warm" "$warm"

# --- 2. fully cached rerun of the quickstart -------------------------------------------------
cp -r "$ROOT/examples" "$WORK/qs"
cd "$WORK/qs"
t0=$(now); "$TEMPER" --store "$WORK/store2" run quickstart.kdl -q >/dev/null 2>&1; t1=$(now)
first=$(elapsed "$t0" "$t1")
cached=$(best_of 5 "$TEMPER" --store "$WORK/store2" run quickstart.kdl -q)
printf 'quickstart: first run %.2f s, fully cached rerun best of 5 %.3f s  -> %.2fx of the 1 s target\n' \
  "$first" "$cached" "$cached"
