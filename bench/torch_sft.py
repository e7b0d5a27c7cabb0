#!/usr/bin/env python3
"""The reference for bench/sft_throughput.sh: a plain PyTorch eager SFT loop.

Same model directory (transformers' LlamaForCausalLM, f32, CPU), same data file and encoding
as temper's `sft` with `packing #false`: prompt-completion records tokenised as
`encode(prompt + completion) + EOS`, loss on the completion and EOS, one example per row,
right-padded to the longest of the batch; `loss = Σ CE over targets / targets`; AdamW (weight
decay 0, betas 0.9/0.999, eps 1e-8), gradients clipped to norm 1, constant learning rate.
Examples are taken in file order (temper shuffles; the data has near-uniform lengths, so the
shapes match). Prints one JSON line: steps, real tokens, seconds, tokens/s, peak RSS.

Usage: torch_sft.py MODEL_DIR DATA.jsonl --steps N --batch-size B [--warmup W]
"""
import argparse
import json
import resource
import time

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--lr", type=float, default=1e-4)
    a = ap.parse_args()

    torch.manual_seed(0)
    tok = Tokenizer.from_file(f"{a.model}/tokenizer.json")
    tcfg = json.load(open(f"{a.model}/tokenizer_config.json"))
    eos_tok = tcfg["eos_token"]
    eos_tok = eos_tok["content"] if isinstance(eos_tok, dict) else eos_tok
    eos = tok.token_to_id(eos_tok)
    pad_tok = tcfg.get("pad_token") or eos_tok
    pad_tok = pad_tok["content"] if isinstance(pad_tok, dict) else pad_tok
    pad = tok.token_to_id(pad_tok)

    examples = []
    for line in open(a.data, encoding="utf-8"):
        r = json.loads(line)
        p = tok.encode(r["prompt"]).ids
        full = tok.encode(r["prompt"] + r["completion"]).ids
        if not full or full[-1] != eos:
            full.append(eos)
        start = next((i for i, (x, y) in enumerate(zip(p, full)) if x != y), min(len(p), len(full)))
        labels = [-100] * start + full[start:]
        examples.append((full, labels))

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)

    def batch(step):
        n = len(examples)
        rows = [examples[(step * a.batch_size + k) % n] for k in range(a.batch_size)]
        width = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        lab = torch.full((len(rows), width), -100, dtype=torch.long)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (x, y) in enumerate(rows):
            ids[i, : len(x)] = torch.tensor(x)
            lab[i, : len(y)] = torch.tensor(y)
            att[i, : len(x)] = 1
        return ids, lab, att

    def step(k):
        ids, lab, att = batch(k)
        logits = model(input_ids=ids, attention_mask=att).logits
        shift = logits[:, :-1].float().reshape(-1, logits.size(-1))
        target = lab[:, 1:].reshape(-1)
        n = int((target != -100).sum())
        loss = torch.nn.functional.cross_entropy(shift, target, ignore_index=-100,
                                                 reduction="sum") / max(n, 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return int(att.sum()), float(loss.detach())

    for k in range(a.warmup):
        step(k)
    tokens, t0, loss = 0, time.perf_counter(), None
    for k in range(a.warmup, a.warmup + a.steps):
        n, loss = step(k)
        tokens += n
    secs = time.perf_counter() - t0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"impl": "pytorch-eager", "steps": a.steps, "tokens": tokens,
                      "seconds": secs, "tokens_per_s": tokens / secs, "final_loss": loss,
                      "threads": torch.get_num_threads(), "peak_rss_mb": rss_kb / 1024}))


if __name__ == "__main__":
    main()
