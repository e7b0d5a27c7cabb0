#!/usr/bin/env bash
# Merge benchmark: two synthetic SmolLM2-135M-shaped float32 checkpoints (~540 MB each) merged
# with slerp; wall time and peak RSS (/usr/bin/time -v) of
#   1. the streaming driver alone (the `merge` test binary's ignored `bench::stream` test), and
#   2. a whole `temper run` of a recipe with the two models and the merge (adds the store's
#      content hashing of inputs and output, which memory-maps whole files).
# Check: the driver's peak RSS < 3 × the largest tensor (f32) + the fixed overhead, which is the
# peak RSS of the same binary running a trivial test (the process with libtorch's libraries
# loaded, ~460 MB with the CUDA wheel) + SLACK_MB (allocator slack, default 32).
# Usage: bench/merge_bench.sh [WORK_DIR]   (from the repository root; needs `make build`)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/temper-merge-bench.XXXX)}
SLACK_MB=${SLACK_MB:-32}
export VIRTUAL_ENV=$ROOT/.venv PATH=$ROOT/.venv/bin:$PATH LIBTORCH_USE_PYTORCH=1
export LD_LIBRARY_PATH=$ROOT/.venv/lib/python3.11/site-packages/torch/lib
mkdir -p "$WORK"
[ -f "$WORK/a/model.safetensors" ] || python "$ROOT/bench/merge_synth.py" "$WORK/a" 1
[ -f "$WORK/b/model.safetensors" ] || python "$ROOT/bench/merge_synth.py" "$WORK/b" 2
largest_mb=$(python - "$WORK/a" <<'PY'
import json, struct, sys
f = open(sys.argv[1] + "/model.safetensors", "rb"); n = struct.unpack("<Q", f.read(8))[0]
h = json.loads(f.read(n)); h.pop("__metadata__", None)
print(max(v["data_offsets"][1] - v["data_offsets"][0] for v in h.values()) // 1000000)
PY
)
cd "$ROOT"
# The merge tests are the `merge` module of temper-recipes' one test binary (`all`).
BIN=$(cargo test --release -p temper-recipes --test all --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')
echo "test binary: $BIN"
rss() { grep "Maximum resident" "$1" | awk '{print int($6/1024)}'; }
wall() { grep "Elapsed (wall" "$1" | awk '{print $8}'; }
/usr/bin/time -v "$BIN" --exact merge::golden::dare_rescale_keeps_the_l1_norm >/dev/null 2>"$WORK/noop.time"
rm -rf "$WORK/out"
MERGE_BENCH_A=$WORK/a MERGE_BENCH_B=$WORK/b MERGE_BENCH_OUT=$WORK/out \
  /usr/bin/time -v "$BIN" --ignored --exact merge::bench::stream --nocapture 2>"$WORK/driver.time" >/dev/null
grep "merged" "$WORK/driver.time" || true
cat > "$WORK/recipe.kdl" <<KDL
model a path="a"
model b path="b"
merge m method=slerp t=0.5 { model a; model b; }
KDL
rm -rf "$WORK/.temper"
"$ROOT/target/release/temper" --store "$WORK/.temper" -q run "$WORK/recipe.kdl" --only a --only b >/dev/null
/usr/bin/time -v "$ROOT/target/release/temper" --store "$WORK/.temper" -q run "$WORK/recipe.kdl" >/dev/null 2>"$WORK/run.time"
noop=$(rss "$WORK/noop.time"); drv=$(rss "$WORK/driver.time"); run=$(rss "$WORK/run.time")
bound=$((3 * largest_mb + noop + SLACK_MB))
echo "checkpoints: 2 x $(du -m "$WORK/a/model.safetensors" | cut -f1) MB, largest tensor ${largest_mb} MB (f32)"
echo "no-op test binary:      peak RSS ${noop} MB"
echo "streaming driver:       wall $(wall "$WORK/driver.time"), peak RSS ${drv} MB (bound 3 x ${largest_mb} + ${noop} + ${SLACK_MB} = ${bound} MB; merge itself: $((drv - noop)) MB)"
echo "temper run (merge node): wall $(wall "$WORK/run.time"), peak RSS ${run} MB (includes store hashing)"
echo "driver RSS / model size: $(python -c "print(round($drv / $(du -m "$WORK/a/model.safetensors" | cut -f1), 2))")"
if [ "$drv" -lt "$bound" ]; then echo "PASS: peak RSS under the bound"; else echo "FAIL: peak RSS ${drv} MB >= ${bound} MB"; exit 1; fi
