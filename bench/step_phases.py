#!/usr/bin/env python3
"""The PyTorch eager counterpart of `recipes/examples/step_phases.rs`: mean milliseconds per
phase of one causal-LM training step (forward, loss, backward, clip, AdamW, zero_grad) of a
transformers model (f32, CPU, sdpa attention, no attention mask: plain causal) on a B x T batch
of random token ids, labels = inputs. Prints one JSON line.

Usage: step_phases.py MODEL_DIR B T [STEPS] [WARMUP]
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir, b, t = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    warmup = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    model.train()
    ids = torch.randint(model.config.vocab_size, (b, t))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    names = ["forward", "loss", "backward", "check_clip", "adamw", "zero_grad"]
    ms = [0.0] * len(names)
    for step in range(warmup + steps):
        lap = []
        t0 = time.perf_counter()

        def tick():
            nonlocal t0
            lap.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()

        logits = model(input_ids=ids).logits
        tick()
        shift = logits[:, :-1].float().reshape(-1, logits.size(-1))
        loss = torch.nn.functional.cross_entropy(shift, ids[:, 1:].reshape(-1),
                                                 reduction="sum") / (b * (t - 1))
        float(loss.detach())
        tick()
        loss.backward()
        tick()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        tick()
        opt.step()
        tick()
        opt.zero_grad(set_to_none=True)
        tick()
        if step >= warmup:
            ms = [m + x / steps for m, x in zip(ms, lap)]
    out = {"impl": "pytorch", "threads": torch.get_num_threads()}
    out.update({n: round(m, 1) for n, m in zip(names, ms)})
    out["total"] = round(sum(ms), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
