#!/usr/bin/env bash
# Start-up benchmark of the commands that never train (not a timed test). For each case it runs
# the binary under test and, when given, a baseline binary (e.g. one built from an older commit)
# alternately, ROUNDS times each, and prints the median wall times side by side with their ratio.
#  1. `temper plan examples/quickstart.kdl` (file hashes cached)          goal <= 50 ms
#  2. `temper plan` of a generated 1,000-variant sweep (10 x 10 x 10 grid)  goal <= 0.3 s
#  3. `temper check` of the quickstart, `temper kinds`
#  4. `temper plan` of N = 1,000 / 3,000 / 9,000 cached `dataset` nodes (each its own file)
#     goal <= 1 s at 9,000, linear in N (0.11 / 0.33 / 1 s)
#  5. `temper status` of that store (as many artifacts as the largest N, its last run listing
#     the nodes it built)                                              goal <= 50 ms
# Usage: make bench   (or: bash bench/plan_bench.sh [path/to/temper] [path/to/baseline/temper];
# each temper with its temper-worker beside it, which case 4 needs to build its nodes)
# Env: ROUNDS (default 5), MANY (the N of case 4, default "1000 3000 9000"). Run it with nothing
# else busy.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TEMPER="$(realpath "${1:-$ROOT/target/release/temper}")"
BASE="${2:+$(realpath "$2")}"
ROUNDS="${ROUNDS:-5}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

now() { date +%s.%N; }
once() { # once STORE-SUFFIX BIN args... : wall seconds of one run
  local bin=$1; shift
  local t0; t0=$(now)
  "$bin" "$@" >/dev/null 2>&1 || { echo "command failed: $bin $*" >&2; "$bin" "$@"; exit 1; }
  local t1; t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.6f", b-a}'
}
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# case NAME GOAL_S DIR args... (run in DIR; each binary gets its own store)
case_() {
  local name=$1 goal=$2 dir=$3; shift 3
  local new=() old=()
  cd "$dir"
  once "$TEMPER" --store "$WORK/store-new" "$@" >/dev/null # warm the file-hash cache
  [ -n "$BASE" ] && once "$BASE" --store "$WORK/store-old" "$@" >/dev/null
  for _ in $(seq "$ROUNDS"); do
    new+=("$(once "$TEMPER" --store "$WORK/store-new" "$@")")
    [ -n "$BASE" ] && old+=("$(once "$BASE" --store "$WORK/store-old" "$@")")
  done
  local n; n=$(printf '%s\n' "${new[@]}" | median)
  if [ -n "$BASE" ]; then
    local o; o=$(printf '%s\n' "${old[@]}" | median)
    printf '%-38s %8.3f s  (baseline %8.3f s, %5.2fx faster)  goal <= %s s: %s\n' "$name" "$n" "$o" \
      "$(awk -v a="$o" -v b="$n" 'BEGIN{print a/b}')" "$goal" "$(awk -v a="$n" -v g="$goal" 'BEGIN{print (a<=g)?"met":"MISSED"}')"
  else
    printf '%-38s %8.3f s  goal <= %s s: %s\n' "$name" "$n" "$goal" \
      "$(awk -v a="$n" -v g="$goal" 'BEGIN{print (a<=g)?"met":"MISSED"}')"
  fi
}

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
cp -r "$ROOT/examples" "$WORK/qs"

echo "median of $ROUNDS rounds, binaries alternated; new = $TEMPER${BASE:+, baseline = $BASE}"
case_ "plan quickstart.kdl" 0.05 "$WORK/qs" plan quickstart.kdl
case_ "plan, 1000-variant sweep" 0.3 "$WORK/sweep" plan recipe.kdl
case_ "check quickstart.kdl" 0.05 "$WORK/qs" check quickstart.kdl
case_ "kinds" 0.05 "$WORK/qs" kinds
for n in ${MANY:-1000 3000 9000}; do
  d="$WORK/many-$n"
  mkdir -p "$d"
  python3 - "$d" "$n" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
with open(f"{d}/r.kdl", "w") as r:
    for i in range(n):
        with open(f"{d}/d{i}.jsonl", "w") as f:
            f.write(json.dumps({"text": f"line {i}"}) + "\n")
        r.write(f'dataset d{i} path="d{i}.jsonl" format=text\n')
PY
  # Built once into each store (not timed): the plan then finds every node cached.
  for side in new old; do
    bin=$TEMPER; [ "$side" = old ] && bin=$BASE
    [ -n "$bin" ] || continue
    (cd "$d" && "$bin" --store "$WORK/store-$side" run -q r.kdl >"$WORK/run.log" 2>&1) ||
      { echo "building the $n nodes failed ($bin):" >&2; tail -5 "$WORK/run.log" >&2; exit 1; }
  done
  case_ "plan, $n cached dataset nodes" "$(awk -v n="$n" 'BEGIN{printf "%.2f", n / 9000}')" "$d" plan r.kdl
done
# Case 5: the store now holds the largest N's artifacts; its last run lists those it built.
case_ "status, $n artifacts" 0.05 "$d" status
