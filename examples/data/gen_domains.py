#!/usr/bin/env python3
"""Generates the data of examples/phases.kdl (deterministic; stdlib only).

Four text domains of different usefulness for one target, so that influence-based
reweighting has something to find:
  dom_med.jsonl    clinical notes from a template grammar          (the target's generator)
  dom_web.jsonl    everyday prose from another grammar             (shares words, not structure)
  dom_code.jsonl   short code-like lines                           (unrelated)
  dom_noise.jsonl  random letters                                  (harmful noise)
  med_val.jsonl    held-out clinical notes (the target; disjoint seed)
Run: python3 examples/data/gen_domains.py
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
PATIENTS = ["the patient", "a child", "an older man", "a young woman", "the athlete"]
SYMPTOMS = ["fever", "cough", "headache", "rash", "chest pain", "fatigue", "nausea"]
DRUGS = ["ibuprofen", "amoxicillin", "paracetamol", "saline", "rest and fluids"]
DAYS = ["two", "three", "five", "seven", "ten"]
PLACES = ["the market", "the park", "the station", "the river", "the school"]
PEOPLE = ["my neighbour", "the teacher", "a friend", "the baker", "our cousin"]
VERBS = ["walked to", "talked about", "painted", "visited", "cleaned"]
NAMES = ["x", "y", "total", "count", "items", "value"]


def med(r):
    p, s, d, n = r.choice(PATIENTS), r.choice(SYMPTOMS), r.choice(DRUGS), r.choice(DAYS)
    s2 = r.choice(SYMPTOMS)
    return (f"{p} reported {s} and {s2} for {n} days. "
            f"we prescribed {d} and asked {p} to return if the {s} persists.")


def web(r):
    return (f"{r.choice(PEOPLE)} {r.choice(VERBS)} {r.choice(PLACES)} and "
            f"{r.choice(PEOPLE)} {r.choice(VERBS)} {r.choice(PLACES)} for {r.choice(DAYS)} days.")


def code(r):
    a, b = r.choice(NAMES), r.choice(NAMES)
    return f"for {a} in range({r.randint(1, 99)}): {b} = {b} + {a} * {r.randint(2, 9)}"


def noise(r):
    return " ".join("".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 7)))
                    for _ in range(r.randint(8, 14)))


def write(name, gen, n, seed):
    r = random.Random(seed)
    with open(os.path.join(HERE, name), "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": gen(r)}) + "\n")


if __name__ == "__main__":
    write("dom_med.jsonl", med, 300, 1)
    write("dom_web.jsonl", web, 300, 2)
    write("dom_code.jsonl", code, 300, 3)
    write("dom_noise.jsonl", noise, 300, 4)
    write("med_val.jsonl", med, 100, 99)
