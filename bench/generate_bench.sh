#!/usr/bin/env bash
# Decoding throughput (not a timed test): temper's `generate` node against transformers'
# `generate` (tests/python/hf_generate.py) on SmolLM2-135M-Instruct, greedy, f32, CPU, NEW new
# tokens per prompt, 16 short chat questions (one user turn, the model's chat template), the same
# THREADS on both sides (the node's `threads`, torch.set_num_threads), at batch 1 and batch 8;
# then temper with its KV cache against TEMPER_GENERATE_NO_CACHE=1 (the whole prefix re-run per
# token) at batch 1 on the first NOCACHE_PROMPTS prompts only (it is slow), both sides on those.
# The sides alternate, ROUNDS times. Each temper run goes into a fresh store copied from one base
# store that holds the shared inputs (the dataset and the imported model, built once), so only
# the generate node runs; its number is generate_summary.json's tokens_per_s (decode wall time
# of the node's generation loop). transformers' number is generated tokens (EOS not counted) /
# wall time of its model.generate calls, one warm-up batch first, in a fresh process per round.
# Prints per side the median tokens/s and the ratios, with the goals (temper / transformers
# >= 1.0x at batch 1, >= 1.5x at batch 8), and how many greedy outputs agree token for token.
# Needs examples/models/smollm2-135m-instruct (bash scripts/prepare-smollm2.sh).
# Usage: bash bench/generate_bench.sh [path/to/temper]     (run `make build` first)
# Env: ROUNDS (default 3), THREADS (default 2), NEW (new tokens, default 128), NOCACHE_PROMPTS
# (default 4). Run it with nothing else busy.
set -euo pipefail
export HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TEMPER="$(realpath "${1:-$ROOT/target/release/temper}")"
ROUNDS="${ROUNDS:-3}"; THREADS="${THREADS:-2}"; NEW="${NEW:-128}"; NOCACHE_PROMPTS="${NOCACHE_PROMPTS:-4}"
SMOL="$ROOT/examples/models/smollm2-135m-instruct"
HFGEN="$ROOT/tests/python/hf_generate.py"
PY="$ROOT/.venv/bin/python"; [[ -x "$PY" ]] || PY=python3
[[ -x "$TEMPER" ]] || { echo "no $TEMPER: run 'make build' first" >&2; exit 1; }
[[ -f "$SMOL/model.safetensors" ]] \
  || { echo "no $SMOL: run 'bash scripts/prepare-smollm2.sh' (from the repository root) first" >&2; exit 1; }
"$PY" -c 'import transformers' 2>/dev/null \
  || { echo "$PY has no transformers: run 'make env' (installs the test helpers, transformers included)" >&2; exit 1; }
(( ROUNDS >= 1 && THREADS >= 1 && NEW >= 1 && NOCACHE_PROMPTS >= 1 && NOCACHE_PROMPTS <= 16 )) \
  || { echo "ROUNDS, THREADS, NEW must be >= 1, NOCACHE_PROMPTS in 1..16" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ln -s "$SMOL" "$WORK/smol"

# The prompts: prompts.jsonl (prompt-completion, a short reference each) for temper,
# prompts.json (the prompt strings, same order) and prompts-few.json (the first
# NOCACHE_PROMPTS) for transformers.
"$PY" - "$WORK" "$NOCACHE_PROMPTS" <<'PY'
import json, sys
work, few = sys.argv[1], int(sys.argv[2])
qa = [
    ("What is the capital of France?", "Paris."),
    ("Name three primary colors.", "Red, yellow and blue."),
    ("Write a haiku about the sea.", "Waves fold into foam."),
    ("Why is the sky blue?", "Rayleigh scattering."),
    ("How many legs does a spider have?", "Eight."),
    ("Explain what a prime number is.", "A number with exactly two divisors."),
    ("Give me a tip for sleeping better.", "Keep a regular schedule."),
    ("What does a compiler do?", "Translates source code."),
    ("Suggest a name for a small black cat.", "Shadow."),
    ("What is 12 times 7?", "84."),
    ("Describe the taste of a lemon.", "Sour."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare."),
    ("How do plants make their food?", "Photosynthesis."),
    ("List two benefits of regular exercise.", "Health and mood."),
    ("What is the boiling point of water in Celsius?", "100 degrees."),
    ("Translate 'good morning' into Spanish.", "Buenos días."),
]
with open(f"{work}/prompts.jsonl", "w") as f:
    for p, c in qa:
        f.write(json.dumps({"prompt": p, "completion": c}) + "\n")
json.dump([p for p, _ in qa], open(f"{work}/prompts.json", "w"))
json.dump([p for p, _ in qa[:few]], open(f"{work}/prompts-few.json", "w"))
PY

recipe() { # recipe BATCH [MAX-RECORDS]
  cat <<KDL
model smol path="smol"
dataset prompts path="prompts.jsonl" format=prompt-completion
generate samples model=smol data=prompts {
    n 1; max-new-tokens $NEW; temperature 0; batch-size $1; use-chat-template #true
    dtype f32; device cpu; threads $THREADS${2:+; max-records $2}
}
KDL
}
recipe 1 > "$WORK/b1.kdl"
recipe 8 > "$WORK/b8.kdl"
recipe 1 "$NOCACHE_PROMPTS" > "$WORK/few.kdl"
cd "$WORK"
for r in b1 b8 few; do "$TEMPER" check -q "$r.kdl" >/dev/null; done
# The shared inputs (the dataset and the model), once; all three recipes give them the same keys.
"$TEMPER" --store base run -q b1.kdl --only smol prompts >/dev/null 2>&1 \
  || { echo "building the inputs failed" >&2; "$TEMPER" --store base run b1.kdl --only smol prompts >&2; exit 1; }

# temper_once RECIPE OUT [ENV=VALUE ...]: a fresh run of the generate node; prints its tokens/s
# and copies its samples.jsonl to OUT. The one place that reads the node's outputs: adjust here
# if generate_summary.json's fields differ.
temper_once() {
  local kdl=$1 out=$2; shift 2
  rm -rf s && cp -r base s
  env "$@" "$TEMPER" --store s run -q "$kdl" >run.log 2>&1 \
    || { echo "temper run failed: $kdl $*" >&2; cat run.log >&2; exit 1; }
  "$PY" - s "$out" <<'PY'
import glob, json, shutil, sys
found = glob.glob(sys.argv[1] + "/artifacts/*/generate_summary.json")
if len(found) != 1:
    sys.exit(f"expected one generate_summary.json in the store, found {found}")
s = json.load(open(found[0]))
tps = s.get("tokens_per_s") or s["new_tokens"] / s["seconds"]
shutil.copy(found[0].rsplit("/", 1)[0] + "/samples.jsonl", sys.argv[2])
print(f"{tps:.3f}")
PY
  rm -rf s
}
# hf_once PROMPTS BATCH OUT: transformers' tokens/s in a fresh process (one warm-up batch).
hf_once() {
  "$PY" "$HFGEN" "$SMOL" "$1" "$3" --chat --max-new-tokens "$NEW" --batch-size "$2" \
    --threads "$THREADS" --repeat 1 --warmup-batches 1 2>hf.log \
    || { echo "transformers run failed: $*" >&2; cat hf.log >&2; exit 1; }
  "$PY" -c 'import json, sys; print("%.3f" % json.load(open(sys.argv[1]))["tokens_per_s"])' "$3"
}
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
t1=(); h1=(); t8=(); h8=(); tc=(); tn=()
for i in $(seq "$ROUNDS"); do
  t1+=("$(temper_once b1.kdl t1.jsonl)"); h1+=("$(hf_once prompts.json 1 h1.json)")
  t8+=("$(temper_once b8.kdl t8.jsonl)"); h8+=("$(hf_once prompts.json 8 h8.json)")
  tc+=("$(temper_once few.kdl tc.jsonl)"); tn+=("$(temper_once few.kdl tn.jsonl TEMPER_GENERATE_NO_CACHE=1)")
  echo "round $i/$ROUNDS tok/s: batch 1 temper ${t1[-1]} transformers ${h1[-1]}; batch 8 temper ${t8[-1]}" \
    "transformers ${h8[-1]}; $NOCACHE_PROMPTS prompts cache ${tc[-1]} no cache ${tn[-1]}" >&2
done
T1=$(printf '%s\n' "${t1[@]}" | median); H1=$(printf '%s\n' "${h1[@]}" | median)
T8=$(printf '%s\n' "${t8[@]}" | median); H8=$(printf '%s\n' "${h8[@]}" | median)
TC=$(printf '%s\n' "${tc[@]}" | median); TN=$(printf '%s\n' "${tn[@]}" | median)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
verdict() { awk -v r="$1" -v g="$2" 'BEGIN{print (r >= g) ? "ok" : "BELOW GOAL"}'; }
# Greedy agreement of the last round: temper's token_ids against transformers' new_ids (a
# trailing EOS dropped on temper's side), and the generated token counts of both.
agree() { # agree TEMPER-SAMPLES HF-JSON
  "$PY" - "$1" "$2" "$SMOL/generation_config.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
hf = json.load(open(sys.argv[2]))
eos = json.load(open(sys.argv[3])).get("eos_token_id")
eos = set([eos] if isinstance(eos, int) else eos or [])
rows.sort(key=lambda r: r["index"])
same = tok = 0
for r, h in zip(rows, hf["new_ids"]):
    ids = list(r["token_ids"][0])
    while ids and ids[-1] in eos:
        ids.pop()
    same += ids == h; tok += len(ids)
print(f"{same}/{len(hf['new_ids'])} identical, {tok} vs {hf['new_tokens']} tokens")
PY
}
A1=$(agree t1.jsonl h1.json 2>&1 || true); A8=$(agree t8.jsonl h8.json 2>&1 || true)
R1=$(ratio "$T1" "$H1"); R8=$(ratio "$T8" "$H8"); RC=$(ratio "$TC" "$TN")
echo "SmolLM2-135M-Instruct generate: greedy, f32, CPU, $THREADS threads both sides, $NEW new tokens," \
  "16 chat prompts, $ROUNDS rounds (medians of tokens/s)"
printf '%-8s %12s %18s %20s %8s   %s\n' "" "temper" "transformers" "temper/transformers" goal "greedy outputs (temper vs transformers)"
printf '%-8s %12.1f %18.1f %19sx %8s   %s  %s\n' "batch 1" "$T1" "$H1" "$R1" ">= 1.0x" "$A1" "$(verdict "$R1" 1.0)"
printf '%-8s %12.1f %18.1f %19sx %8s   %s  %s\n' "batch 8" "$T8" "$H8" "$R8" ">= 1.5x" "$A8" "$(verdict "$R8" 1.5)"
printf 'KV cache, batch 1, first %s prompts only (the cache-free side is slow): cache %.1f tok/s, TEMPER_GENERATE_NO_CACHE=1 %.1f tok/s: %sx\n' \
  "$NOCACHE_PROMPTS" "$TC" "$TN" "$RC"
