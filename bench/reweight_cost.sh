#!/usr/bin/env bash
# Cost of a `reweight` node as a multiple of one training step of the same model:
# 4 domains × 64 samples (plus 64 target samples), seq-len 64, on the phases example's data
# and tiny model; one CPT step = 8 sequences of 64 tokens. Prints both times and the ratio,
# measured in the same run. Usage: bench/reweight_cost.sh [path/to/temper]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
T="${1:-$ROOT/target/release/temper}"
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
mkdir -p "$DIR/data"
cp "$ROOT"/examples/data/dom_*.jsonl "$ROOT"/examples/data/med_val.jsonl "$DIR/data/"
cat > "$DIR/bench.kdl" <<'KDL'
dataset med     path="data/dom_med.jsonl"   format=text
dataset web     path="data/dom_web.jsonl"   format=text
dataset code    path="data/dom_code.jsonl"  format=text
dataset noise   path="data/dom_noise.jsonl" format=text
dataset med-val path="data/med_val.jsonl"   format=text
tokenizer tok vocab-size=320 { data med; data web; data code; data noise; }
model tiny tokenizer=tok hidden-size=64 layers=2 heads=4 kv-heads=2 intermediate-size=128 max-position=128 seed=0
mixture start tokenizer=tok { source med; source web; source code; source noise; tokens 1_000_000; seed 1; }
reweight rw model=tiny mixture=start { target med-val; samples 64; target-samples 64; seq-len 64; batch-size 8; device cpu; }
cpt steps model=tiny data=start { seq-len 64; batch-size 8; steps 20; lr 1e-3; device cpu; }
KDL
cd "$DIR"
"$T" run bench.kdl --store st -q --jobs 1 >/dev/null
secs() { "$T" show bench.kdl "$1" --store st | sed -n 's/^finished.*(\([0-9.]*\) s).*/\1/p'; }
RW=$(secs rw)
ART=$("$T" show bench.kdl steps --store st | sed -n 's/^artifact *\([^ ]*\).*/\1/p')
STEP=$(python3 -c "import json,sys; s=json.load(open('$ART/train_summary.json')); print(s['seconds']/s['steps'])")
python3 -c "print(f'reweight node: {float($RW):.2f} s; one training step: {float($STEP)*1000:.1f} ms; ratio: {float($RW)/float($STEP):.1f} steps')"
