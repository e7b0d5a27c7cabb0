#!/usr/bin/env python3
"""Generates the quickstart's synthetic data set (deterministic; stdlib only).

Tasks a tiny model can learn in minutes on a CPU:
  - addition of two numbers below 100          "12+35="        -> "47"
  - reversing a short lowercase word           "reverse: abc"  -> "cba"
  - sorting three digits                       "sort: 3 1 2"   -> "1 2 3"
Outputs (next to this script):
  corpus.jsonl   format=text               CPT documents: worked examples mixed with filler prose
  filler.jsonl   format=text               filler prose only (a second mixture source)
  train.jsonl    format=prompt-completion  SFT training pairs
  heldout.jsonl  format=prompt-completion  held-out pairs (disjoint prompts) for eval
  chat.jsonl     format=messages           the same tasks as chat turns
Run: python3 examples/data/generate.py
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
WORDS = ("apple river stone cloud light music garden paper winter silver forest window "
         "bridge candle harbor meadow pencil rocket saddle tunnel velvet wagon yellow zebra "
         "anchor basket copper desert engine falcon glacier hammer island jungle kettle lemon").split()
FILLER = [
    "The weather changed slowly over the hills and the farmers watched the sky.",
    "A small boat crossed the harbor before the evening bell rang twice.",
    "Numbers are written with digits and words are written with letters.",
    "The library opened early so the students could read before class.",
    "Every morning the baker counted loaves and wrote the total on a board.",
    "Rivers carry stones downhill and leave sand where the water slows.",
    "She reversed the order of the cards and then sorted them again.",
    "The old clock in the station was always three minutes late.",
]


def task(rng):
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randrange(100), rng.randrange(100)
        return f"{a}+{b}=", f"{a + b}"
    if kind == 1:
        w = rng.choice(WORDS)[: rng.randrange(3, 7)]
        return f"reverse: {w} =", " " + w[::-1]
    d = [rng.randrange(10) for _ in range(3)]
    return "sort: " + " ".join(map(str, d)) + " =", " " + " ".join(map(str, sorted(d)))


def write(name, rows):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    rng = random.Random(20261128)
    seen, pairs = set(), []
    while len(pairs) < 3200:
        p, c = task(rng)
        if p not in seen:
            seen.add(p)
            pairs.append((p, c))
    heldout, train = pairs[:200], pairs[200:]
    corpus = []
    for i in range(0, len(train), 8):
        lines = [rng.choice(FILLER)] + [p + c for p, c in train[i:i + 8]]
        corpus.append({"text": "\n".join(lines)})
    write("corpus.jsonl", corpus)
    write("filler.jsonl", [{"text": " ".join(rng.sample(FILLER, 4))} for _ in range(300)])
    write("train.jsonl", [{"prompt": p, "completion": c} for p, c in train])
    write("heldout.jsonl", [{"prompt": p, "completion": c} for p, c in heldout])
    write("chat.jsonl", [{"messages": [{"role": "user", "content": p.strip()},
                                       {"role": "assistant", "content": c.strip()}]}
                         for p, c in train[:1000]])


if __name__ == "__main__":
    main()
