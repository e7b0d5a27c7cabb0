#!/usr/bin/env python3
"""The PyTorch eager reference of bench/gpu_train.sh: how a careful user trains with plain
PyTorch + transformers on one GPU today.

Model: transformers' AutoModelForCausalLM from MODEL_DIR (made by bench/gpu_models.py),
`attn_implementation="sdpa"`, f32 master weights, forward/backward under bf16 autocast,
`AdamW(fused=True)` (weight decay 0, betas 0.9/0.999, eps 1e-8), `clip_grad_norm_(1.0,
foreach=True)`, constant learning rate; loss = Σ CE over targets / targets (completion and EOS,
as temper's `sft`), computed in f32.

Batches, as temper's `sft` builds them: `padded` — one example per row, right-padded to the
longest of the batch; `packed` — consecutive examples packed whole into rows of SEQ tokens
(padding the rest of a row), each attending only within itself (a block-diagonal causal mask,
positions restarting at each example). WARMUP untimed steps, then STEPS timed ones between two
device synchronisations, with no host read in between. Prints one JSON line: tokens (real, not
padding), seconds, tokens/s, peak memory (reserved by the caching allocator), final loss.

Usage: torch_train_gpu.py MODEL_DIR DATA.jsonl --mode packed|padded [--batch 8] [--seq 2048]
       [--steps 50] [--warmup 10] [--lr 1e-5] [--device cuda] [--ckpt]

`--ckpt`: activation checkpointing (transformers' `gradient_checkpointing_enable`, non-reentrant),
the counterpart of temper's `activation-checkpointing #true`.
"""
import argparse
import json
import time

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def encode(model_dir, data, seq):
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    eos = tok.token_to_id(json.load(open(f"{model_dir}/tokenizer_config.json"))["eos_token"])
    out = []
    for line in open(data, encoding="utf-8"):
        r = json.loads(line)
        p = tok.encode(r["prompt"]).ids
        full = tok.encode(r["prompt"] + r["completion"]).ids[: seq - 1] + [eos]
        out.append((full, [-100] * len(p) + full[len(p):]))
    return out, eos


def padded_batches(examples, batch, pad):
    k = 0
    while True:
        rows = [examples[(k + i) % len(examples)] for i in range(batch)]
        k += batch
        width = max(len(x) for x, _ in rows)
        ids = torch.full((batch, width), pad)
        lab = torch.full((batch, width), -100)
        att = torch.zeros((batch, width), dtype=torch.long)
        for i, (x, y) in enumerate(rows):
            ids[i, : len(x)] = torch.tensor(x)
            lab[i, : len(y)] = torch.tensor(y)
            att[i, : len(x)] = 1
        yield ids, lab, {"attention_mask": att}, int(att.sum())


def packed_batches(examples, batch, seq, pad):
    k = 0
    while True:
        ids = torch.full((batch, seq), pad)
        lab = torch.full((batch, seq), -100)
        pos = torch.zeros((batch, seq), dtype=torch.long)
        doc = torch.full((batch, seq), -1)
        real = 0
        for b in range(batch):
            at, d = 0, 0
            while True:
                x, y = examples[k % len(examples)]
                if at + len(x) > seq:
                    break
                ids[b, at: at + len(x)] = torch.tensor(x)
                lab[b, at: at + len(y)] = torch.tensor(y)
                pos[b, at: at + len(x)] = torch.arange(len(x))
                doc[b, at: at + len(x)] = d
                at, d, k, real = at + len(x), d + 1, k + 1, real + len(x)
        same = (doc[:, :, None] == doc[:, None, :]) & (doc[:, :, None] >= 0)
        causal = torch.ones(seq, seq, dtype=torch.bool).tril()
        allowed = same & causal
        allowed |= torch.eye(seq, dtype=torch.bool)  # padding rows attend to themselves
        mask = torch.zeros(batch, 1, seq, seq).masked_fill(~allowed[:, None], float("-inf"))
        yield ids, lab, {"attention_mask": mask, "position_ids": pos}, real


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--mode", choices=["packed", "padded"], required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--ckpt", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    examples, eos = encode(a.model, a.data, a.seq)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32,
                                                 attn_implementation="sdpa").to(dev)
    if a.ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0, fused=fused)
    batches = (packed_batches(examples, a.batch, a.seq, eos) if a.mode == "packed"
               else padded_batches(examples, a.batch, eos))
    # Host-side batches are built ahead (as a data loader would), not timed.
    ready = [next(batches) for _ in range(a.warmup + a.steps)]

    def step(ids, lab, extra):
        ids = ids.to(dev, non_blocking=True)
        lab = lab.to(dev, non_blocking=True)
        extra = {k: v.to(dev, non_blocking=True) for k, v in extra.items()}
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            logits = model(input_ids=ids, **extra).logits
        shift = logits[:, :-1].float().reshape(-1, logits.size(-1))
        target = lab[:, 1:].reshape(-1)
        n = (target != -100).sum().clamp(min=1)
        loss = torch.nn.functional.cross_entropy(shift, target, ignore_index=-100,
                                                 reduction="sum") / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        return loss.detach()

    for ids, lab, extra, _ in ready[: a.warmup]:
        step(ids, lab, extra)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens, t0, loss = 0, time.perf_counter(), None
    for ids, lab, extra, real in ready[a.warmup:]:
        loss = step(ids, lab, extra)
        tokens += real
    sync()
    secs = time.perf_counter() - t0
    peak = torch.cuda.max_memory_reserved() / 2**20 if dev.type == "cuda" else 0.0
    print(json.dumps({"impl": "pytorch-eager", "mode": a.mode, "steps": a.steps,
                      "tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs,
                      "peak_mb": peak, "final_loss": float(loss),
                      "parameters": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
