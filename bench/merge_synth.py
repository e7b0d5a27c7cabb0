"""Writes a synthetic SmolLM2-135M-shaped Llama checkpoint (float32, ~540 MB) for the merge
benchmark: config.json, model.safetensors, and a trivial tokenizer.json.

Usage: merge_synth.py OUT_DIR SEED
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

out, seed = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
V, H, I, L, NH, KV = 49152, 576, 1536, 30, 9, 3
hd = H // NH
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V,
       "hidden_size": H, "intermediate_size": I, "num_hidden_layers": L,
       "num_attention_heads": NH, "num_key_value_heads": KV, "max_position_embeddings": 2048,
       "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
       "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 0}
json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
json.dump({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}},
          open(os.path.join(out, "tokenizer.json"), "w"))
g = torch.Generator().manual_seed(seed)
r = lambda *s: torch.randn(*s, generator=g) * 0.02
t = {"model.embed_tokens.weight": r(V, H), "model.norm.weight": torch.ones(H)}
for l in range(L):
    p = f"model.layers.{l}."
    t[p + "input_layernorm.weight"] = torch.ones(H)
    t[p + "post_attention_layernorm.weight"] = torch.ones(H)
    t[p + "self_attn.q_proj.weight"] = r(NH * hd, H)
    t[p + "self_attn.k_proj.weight"] = r(KV * hd, H)
    t[p + "self_attn.v_proj.weight"] = r(KV * hd, H)
    t[p + "self_attn.o_proj.weight"] = r(H, NH * hd)
    t[p + "mlp.gate_proj.weight"] = r(I, H)
    t[p + "mlp.up_proj.weight"] = r(I, H)
    t[p + "mlp.down_proj.weight"] = r(H, I)
save_file(t, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
largest = max(v.numel() * 4 for v in t.values())
total = sum(v.numel() * 4 for v in t.values())
print(f"{out}: {total / 1e6:.1f} MB, largest tensor {largest / 1e6:.1f} MB")
