#!/usr/bin/env python3
"""Generates the quickstart's synthetic data set (deterministic; stdlib only).

Tasks on short lists of digits, chosen so that a tiny model trained from scratch on 2 CPU
cores learns them in a couple of minutes and *generalises* to prompts it never saw (there are
10^3 + 10^4 lists per task, far more than the training pairs):
  - sorting       "sort: 3 1 2 ="     -> " 1 2 3"
  - reversing     "reverse: 3 1 2 ="  -> " 2 1 3"
  - the maximum   "max: 3 1 2 ="      -> " 3"
Lists have 3 or 4 digits. Outputs (next to this script):
  corpus.jsonl   format=text               CPT documents: worked examples mixed with filler prose
  filler.jsonl   format=text               filler prose only (a second mixture source)
  train.jsonl    format=prompt-completion  SFT training pairs
  heldout.jsonl  format=prompt-completion  held-out pairs (prompts disjoint from all others)
  chat.jsonl     format=messages           the same tasks as chat turns
Run: python3 examples/data/generate.py
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
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
N_TRAIN, N_HELDOUT = 4000, 150


def task(rng):
    d = [rng.randrange(10) for _ in range(rng.choice((3, 4)))]
    kind = rng.randrange(3)
    show = " ".join(map(str, d))
    if kind == 0:
        return f"sort: {show} =", " " + " ".join(map(str, sorted(d)))
    if kind == 1:
        return f"reverse: {show} =", " " + " ".join(map(str, d[::-1]))
    return f"max: {show} =", f" {max(d)}"


def write(name, rows):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    rng = random.Random(20261128)
    seen, pairs = set(), []
    while len(pairs) < N_TRAIN + N_HELDOUT:
        p, c = task(rng)
        if p not in seen:
            seen.add(p)
            pairs.append((p, c))
    heldout, train = pairs[:N_HELDOUT], pairs[N_HELDOUT:]
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
