"""Loads a temper LoRA adapter with PEFT on its transformers base and writes the logits.

Usage: peft_logits.py INPUTS.safetensors BASE_DIR ADAPTER_DIR OUT.safetensors

INPUTS holds, per batch `bN`, int64 `bN.input_ids`, `bN.attention_mask`, `bN.position_ids`
([B, T]); OUT receives `bN.logits` ([B, T, V], float32). CPU, float32.

PEFT loads adapter weights with strict=False, so a misnamed tensor would be ignored silently and
the adapter would do nothing. This script therefore fails unless the state dict loads with no
missing LoRA key and no unexpected key, and every LoRA tensor in the file reaches a module.
It prints one JSON line: the adapted modules and the keys loaded.
"""
import json
import sys

import torch
from peft import PeftModel
from peft.utils import load_peft_weights, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    inputs_path, base_dir, adapter_dir, out = argv
    torch.set_num_threads(1)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    state = load_peft_weights(adapter_dir, device="cpu")
    result = set_peft_model_state_dict(model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        sys.exit(f"PEFT did not load the adapter: missing {missing[:5]}, unexpected {unexpected[:5]}")
    adapted = sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    if 2 * len(adapted) != len(state):
        sys.exit(f"{len(state)} tensors in the file, {len(adapted)} adapted modules")
    inputs = load_file(inputs_path)
    names = sorted({k.split(".")[0] for k in inputs})
    logits = {}
    with torch.no_grad():
        for n in names:
            logits[f"{n}.logits"] = model(
                input_ids=inputs[f"{n}.input_ids"],
                attention_mask=inputs[f"{n}.attention_mask"],
                position_ids=inputs[f"{n}.position_ids"],
            ).logits.float().contiguous()
    save_file(logits, out)
    print(json.dumps({"adapted": len(adapted), "tensors": len(state), "first": adapted[:1]}))


if __name__ == "__main__":
    main(sys.argv[1:])
