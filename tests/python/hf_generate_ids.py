"""Greedy continuations of token-id prompts by transformers' `generate`, for temper's decoder
parity test (recipes/tests/generate/hf.rs).

Usage: hf_generate_ids.py FIXTURES_DIR PROMPTS_JSON OUT_JSON

PROMPTS_JSON: {"models": [names of checkpoints under FIXTURES_DIR], "prompts": [[ids…]…],
"max_new_tokens": N}. Each prompt is generated alone (batch 1, no padding), float32, greedy,
with EOS disabled so every continuation has N tokens. OUT_JSON: {model: [[new ids…]…]}.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    fixtures, prompts_json, out_json = sys.argv[1:4]
    spec = json.load(open(prompts_json))
    out = {}
    for name in spec["models"]:
        model = AutoModelForCausalLM.from_pretrained(f"{fixtures}/{name}", dtype=torch.float32)
        model.eval()
        gens = []
        for ids in spec["prompts"]:
            x = torch.tensor([ids])
            with torch.no_grad():
                y = model.generate(
                    x,
                    attention_mask=torch.ones_like(x),
                    max_new_tokens=spec["max_new_tokens"],
                    min_new_tokens=spec["max_new_tokens"],
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=None,
                    pad_token_id=0,
                )
            gens.append(y[0, len(ids):].tolist())
        out[name] = gens
    json.dump(out, open(out_json, "w"))


if __name__ == "__main__":
    main()
