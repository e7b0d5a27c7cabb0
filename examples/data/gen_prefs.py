#!/usr/bin/env python3
"""Synthetic preference task for examples/preference.kdl and the preference tests.

Prompt `sort: 4 7 8 4 =`; chosen = the digits sorted ascending, rejected = the same digits in
a different (unsorted) order. Both sides hold the same tokens, so a model that has not learned
the preference scores them about equally (~50% pairwise accuracy); a model that has prefers the
ascending order. Held-out pairs use digit lists absent from the training pairs.

Also writes an unlearning task: forget = prompt-completion records of `reverse:` lists,
retain = `sort:` records (same format as examples/data/train.jsonl).

Deterministic (seed 7). Writes prefs.jsonl (240), prefs_heldout.jsonl (60), forget.jsonl (48),
retain.jsonl (96) next to this script.
"""
import json
import random
from pathlib import Path

rng = random.Random(7)
here = Path(__file__).parent


def digits():
    return [rng.randrange(10) for _ in range(rng.randint(3, 5))]


def fmt(xs):
    return " " + " ".join(map(str, xs))


seen, pairs = set(), []
while len(pairs) < 300:
    xs = digits()
    s = sorted(xs)
    if tuple(xs) in seen or len(set(xs)) < 2:
        continue
    seen.add(tuple(xs))
    bad = xs[:]
    while bad == s:
        rng.shuffle(bad)
    pairs.append({"prompt": "sort:" + fmt(xs) + " =", "chosen": fmt(s), "rejected": fmt(bad)})

with open(here / "prefs.jsonl", "w") as f:
    for p in pairs[:240]:
        f.write(json.dumps(p) + "\n")
with open(here / "prefs_heldout.jsonl", "w") as f:
    for p in pairs[240:]:
        f.write(json.dumps(p) + "\n")

with open(here / "forget.jsonl", "w") as f:
    for _ in range(48):
        xs = digits()
        f.write(json.dumps({"prompt": "reverse:" + fmt(xs) + " =", "completion": fmt(xs[::-1])}) + "\n")
with open(here / "retain.jsonl", "w") as f:
    for _ in range(96):
        xs = digits()
        f.write(json.dumps({"prompt": "sort:" + fmt(xs) + " =", "completion": fmt(sorted(xs))}) + "\n")
