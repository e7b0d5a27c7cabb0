#!/usr/bin/env python3
"""The reference for bench/dpo_bench.sh: a plain PyTorch eager DPO (sigmoid) step.

Same model directory (transformers' LlamaForCausalLM, f32, CPU), same pairs and encoding as
temper's `ref-logps` + `dpo` (plain text: `encode(prompt + side) + EOS`, completion from the
first token where it differs from `encode(prompt)`); chosen and rejected of a batch in one
forward (right-padded), summed completion log-probs, reference log-probs precomputed before the
timed loop (as temper stores them), `loss = mean −logσ(β·h)`, AdamW, clip to norm 1.
Prints one JSON line: steps, real tokens, seconds, tokens/s, peak RSS.

Usage: dpo_torch.py MODEL_DIR PREFS.jsonl --steps N --batch-size B [--warmup W]
"""
import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
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

    def side(p, c):
        pi = tok.encode(p).ids
        full = tok.encode(p + c).ids
        if not full or full[-1] != eos:
            full.append(eos)
        start = next((i for i, (x, y) in enumerate(zip(pi, full)) if x != y), min(len(pi), len(full)))
        return full, start

    pairs = []
    for line in open(a.data):
        r = json.loads(line)
        pairs.append((side(r["prompt"], r["chosen"]), side(r["prompt"], r["rejected"])))

    def batch(seqs):
        t = max(len(s) for s, _ in seqs)
        ids = torch.full((len(seqs), t), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), t), dtype=torch.long)
        lab = torch.zeros((len(seqs), t - 1))
        for i, (s, st) in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            lab[i, max(st, 1) - 1 : len(s) - 1] = 1
        return ids, mask, lab

    def logps(model, seqs):
        ids, mask, lab = batch(seqs)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return (lp * lab).sum(1), int(mask.sum())

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    b = a.batch_size
    steps = a.steps + a.warmup
    batches = [pairs[(k * b) % len(pairs):(k * b) % len(pairs) + b] for k in range(steps)]
    with torch.no_grad():  # reference log-probs, precomputed (not timed)
        refs = [logps(model, [c for c, _ in bb] + [r for _, r in bb])[0] for bb in batches]
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0, eps=1e-8)
    tokens = 0
    for k, bb in enumerate(batches):
        if k == a.warmup:
            t0 = time.perf_counter()
            tokens = 0
        lp, n = logps(model, [c for c, _ in bb] + [r for _, r in bb])
        ref = refs[k]
        h = (lp[:b] - ref[:b]) - (lp[b:] - ref[b:])
        loss = -F.logsigmoid(a.beta * h).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        tokens += n
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"steps": a.steps, "tokens": tokens, "seconds": secs,
                      "tokens_per_s": tokens / secs, "peak_rss_mb": rss, "final_loss": float(loss.detach())}))


if __name__ == "__main__":
    main()
