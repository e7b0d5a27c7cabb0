"""Writes random tiny Llama-family checkpoints with transformers, and their logits, for temper's
parity tests (recipes/tests/arch_parity.rs).

Usage: make_tiny_hf.py OUT_DIR

OUT_DIR/inputs.safetensors: fixed batches (see logits.py), b0 unpadded [2, 16], b1 padded
[3, 12] (a full row, a right-padded row, a left-padded row; positions = cumsum(mask) - 1).
OUT_DIR/<name>/: a checkpoint saved by `save_pretrained` (float32) and `logits.safetensors`.
Weights are drawn with a fixed seed at a scale that makes activations O(1) (transformers'
initializer_range of 0.02 would make every logit nearly 0 and the comparison meaningless).
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from logits import logits_of  # noqa: E402

VOCAB = 256

MODELS = {
    # GQA 4/2, non-default rope_theta.
    "llama": (LlamaConfig, LlamaForCausalLM, dict(
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        rope_theta=500000.0)),
    # SmolLM-style tied embeddings, plus llama's optional attention and MLP biases.
    "llama_tied": (LlamaConfig, LlamaForCausalLM, dict(
        hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4,
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True)),
    # q/k/v biases; sliding window on layer 1 only (max_window_layers=1).
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(
        hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
        rope_theta=1000000.0, use_sliding_window=True, sliding_window=5, max_window_layers=1)),
    # head_dim 16 with hidden 48 (q dim 64 != hidden), sliding window on every layer.
    "mistral": (MistralConfig, MistralForCausalLM, dict(
        hidden_size=48, intermediate_size=112, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, sliding_window=6)),
}


def inputs():
    g = torch.Generator().manual_seed(1234)
    b0 = torch.randint(1, VOCAB, (2, 16), generator=g)
    b1 = torch.randint(1, VOCAB, (3, 12), generator=g)
    m1 = torch.ones_like(b1)
    m1[1, 8:] = 0
    m1[2, :3] = 0
    b1 = b1 * m1
    pos = lambda m: (m.cumsum(-1) - 1).clamp(min=0)
    m0 = torch.ones_like(b0)
    return {
        "b0.input_ids": b0, "b0.attention_mask": m0, "b0.position_ids": pos(m0),
        "b1.input_ids": b1, "b1.attention_mask": m1, "b1.position_ids": pos(m1),
    }


@torch.no_grad()
def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=g)
        if "norm" in name:
            p.copy_(1.0 + 0.1 * noise)
        elif name.endswith(".bias"):
            p.copy_(0.1 * noise)
        elif "embed_tokens" in name:
            p.copy_(noise)
        else:
            p.copy_(noise / p.shape[-1] ** 0.5)


def main(out):
    torch.set_num_threads(1)
    os.makedirs(out, exist_ok=True)
    batch = inputs()
    save_file(batch, os.path.join(out, "inputs.safetensors"))
    for seed, (name, (cfg_cls, model_cls, kw)) in enumerate(MODELS.items()):
        cfg = cfg_cls(vocab_size=VOCAB, num_hidden_layers=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, **kw)
        torch.manual_seed(seed)
        model = model_cls(cfg).eval()
        randomize(model, 100 + seed)
        d = os.path.join(out, name)
        model.save_pretrained(d)
        save_file(logits_of(model, batch), os.path.join(d, "logits.safetensors"))
    with open(os.path.join(out, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__}, f)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
