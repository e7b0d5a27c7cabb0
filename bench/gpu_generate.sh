#!/usr/bin/env bash
# GPU check of decoding (run by hand on a CUDA machine; never part of `make test`): the quickstart's
# model trained on cuda:0, then two `generate` nodes on its held-out prompts (greedy, and 4 samples
# at temperature 0.8 / top-p 0.95), both in f32, each run into a copy of the trained store
#  - with the KV cache (batch 32 / 16),
#  - without it (TEMPER_GENERATE_NO_CACHE=1),
#  - with the cache at batch size 1;
# every run must write the same samples.jsonl (tokens included). Prints decode tokens/s of each, the
# same with bf16, and SFT tokens/s at batch 16 and 64 (how the training loop scales on a GPU).
# Usage: bash bench/gpu_generate.sh [dir with temper, temper-worker]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$(realpath "${1:-$ROOT/target/release}")"
TEMPER="$BIN/temper"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp -r "$ROOT/examples/data" "$WORK/"
{
  echo 'defaults { device cuda; }'
  sed -n '/^dataset/,/^\/\/ Before\/after/p' "$ROOT/examples/quickstart.kdl" | grep -v '^// Before/after'
  cat <<'KDL'
generate greedy model=tuned data=heldout {
    n 1; max-new-tokens 24; temperature 0; dtype f32; batch-size 32
}
generate sampled model=tuned data=heldout {
    n 4; max-new-tokens 24; temperature 0.8; top-p 0.95; seed 3; dtype f32; batch-size 16
}
KDL
} > "$WORK/r.kdl"
cd "$WORK"
"$TEMPER" --store base run r.kdl --only tuned -q
once() { # once NAME [ENV...] -- [temper args]: the generate nodes into a copy of the base store
  local name="$1"; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  rm -rf "$name" && cp -r base "$name"
  env "${envs[@]}" "$TEMPER" --store "$name" run r.kdl -q "$@"
  python3 - "$name" <<'PY'
import glob, json, sys
for f in sorted(glob.glob(sys.argv[1] + "/artifacts/*/generate_summary.json")):
    s = json.load(open(f))
    print(f"  {sys.argv[1]:8} n={s['n']} temperature={s['temperature']}: {s['completions']} completions, "
          f"{s['new_tokens']} tokens, {s['tokens_per_s']:.0f} tokens/s, {s['finish_reasons']}")
PY
}
once cached X=1 --
once nocache TEMPER_GENERATE_NO_CACHE=1 --
once batch1 X=1 -- --set greedy.batch-size=1 --set sampled.batch-size=1
python3 - <<'PY'
import glob
def samples(store):
    return sorted(open(f).read() for f in glob.glob(store + "/artifacts/*/samples.jsonl"))
a, b, c = samples("cached"), samples("nocache"), samples("batch1")
print("samples.jsonl: cache = no cache:", a == b, "; batch 32/16 = batch 1:", a == c, f"({len(a)} nodes)")
PY
once bf16 X=1 -- --set greedy.dtype=bf16 --set sampled.dtype=bf16
rm -rf sft64 && cp -r base sft64
"$TEMPER" --store sft64 run r.kdl --only tuned -q --set tuned.batch-size=64
python3 - <<'PY'
import glob, json
for store in ("base", "sft64"):
    for f in sorted(glob.glob(store + "/artifacts/*/train_summary.json")):
        s = json.load(open(f))
        print(f"  {store:6} {s['steps']} steps in {s['seconds']:.1f} s: {s['steps'] / s['seconds']:.1f} steps/s, "
              f"{s['tokens_seen'] / s['seconds']:.0f} tokens/s")
PY
