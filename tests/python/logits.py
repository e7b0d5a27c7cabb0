"""Runs Hugging Face causal LMs with transformers on fixed input batches and writes their logits.

Usage: logits.py INPUTS.safetensors MODEL_DIR OUT.safetensors [MODEL_DIR OUT.safetensors ...]

INPUTS holds, per batch `bN`, the int64 tensors `bN.input_ids`, `bN.attention_mask` and
`bN.position_ids` ([B, T] each); OUT receives `bN.logits` ([B, T, V], float32). CPU, float32,
transformers' default (sdpa) attention. Used by temper's parity tests (recipes/tests/arch_parity.rs).
"""
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM


def batches(inputs):
    names = sorted({k.split(".")[0] for k in inputs})
    return [(n, inputs[f"{n}.input_ids"], inputs[f"{n}.attention_mask"], inputs[f"{n}.position_ids"]) for n in names]


@torch.no_grad()
def logits_of(model, inputs):
    out = {}
    for name, ids, mask, pos in batches(inputs):
        out[f"{name}.logits"] = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float().contiguous()
    return out


def main(argv):
    if len(argv) < 3 or len(argv) % 2 == 0:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    inputs = load_file(argv[0])
    for model_dir, out in zip(argv[1::2], argv[2::2]):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        save_file(logits_of(model, inputs), out)


if __name__ == "__main__":
    main(sys.argv[1:])
