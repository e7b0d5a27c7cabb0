#!/usr/bin/env python3
"""Model directories and data for bench/gpu_train.sh, made locally (nothing downloaded).

    gpu_models.py OUT ARCH [--seq 2048]

ARCH is one of the real architectures' shapes below (or `tiny`, for a CPU smoke test of the
scripts). OUT/model gets a Hugging Face directory initialised randomly from that config (weights in
bf16, transformers' own initialisation, seed 0) with a word-level tokenizer of exactly the
architecture's vocabulary size (`w0` … `wN`, whitespace-split, EOS `</s>`), so the embedding and
LM head have their real shapes; OUT gets two datasets of random words in the prompt-completion
format: `padded.jsonl` (one example fills a row: SEQ-1 tokens with EOS) and `packed.jsonl`
(documents of 100-700 tokens, packed several to a row).
"""
import argparse
import json
import random
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

ARCHS = {
    # hidden, layers, heads, kv heads, intermediate, vocab, tied, type, rope theta
    "smollm2-135m": dict(model_type="llama", hidden_size=576, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
                         vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                         vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192,
                         vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "tiny": dict(model_type="llama", hidden_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, intermediate_size=176,
                 vocab_size=512, tie_word_embeddings=True, rope_theta=10000.0),
}


def tokenizer_files(out: Path, vocab: int) -> None:
    words = {f"w{i}": i for i in range(vocab - 2)}
    words["</s>"] = vocab - 2
    words["<unk>"] = vocab - 1
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [
            {"id": vocab - 2, "content": "</s>", "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True},
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "<unk>"},
    }
    (out / "tokenizer.json").write_text(json.dumps(tok))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 20,
    }, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>",
                                                             "pad_token": "</s>"}))


def data(out: Path, vocab: int, seq: int) -> None:
    rng = random.Random(0)
    words = lambda n: " ".join(f"w{rng.randrange(vocab - 2)}" for _ in range(n))  # noqa: E731
    with open(out / "padded.jsonl", "w") as f:
        for _ in range(256):
            p = 16
            f.write(json.dumps({"prompt": words(p), "completion": " " + words(seq - 1 - p)}) + "\n")
    with open(out / "packed.jsonl", "w") as f:
        for _ in range(2048):
            n = rng.randrange(100, 700) if seq >= 1024 else rng.randrange(seq // 8, seq // 2)
            p = max(1, n // 8)
            f.write(json.dumps({"prompt": words(p), "completion": " " + words(n - p)}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("arch", choices=sorted(ARCHS))
    ap.add_argument("--seq", type=int, default=2048)
    a = ap.parse_args()
    spec = dict(ARCHS[a.arch])
    kind = spec.pop("model_type")
    cfg = AutoConfig.for_model(kind, max_position_embeddings=max(a.seq, 4096), **spec,
                               eos_token_id=spec["vocab_size"] - 2,
                               pad_token_id=spec["vocab_size"] - 2, bos_token_id=None)
    mdir = a.out / "model"
    mdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(mdir)
    tokenizer_files(mdir, spec["vocab_size"])
    data(a.out, spec["vocab_size"], a.seq)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"arch": a.arch, "parameters": n, "dir": str(mdir)}))


if __name__ == "__main__":
    main()
