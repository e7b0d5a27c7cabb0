"""Greedy reference decoding with transformers, for checking and benchmarking temper's `generate`.

Usage: hf_generate.py MODEL_DIR PROMPTS_JSON OUT_JSON [--max-new-tokens N] [--chat]
                      [--batch-size B] [--threads T] [--repeat R] [--warmup-batches K]

PROMPTS_JSON is a JSON list of prompt strings. Prompt encoding follows temper
(recipes/src/evaluate/score.rs, recipes/src/batching/examples.rs):
  --chat: the prompt is one user turn rendered with the tokenizer's chat template
          (add_generation_prompt=True), then tokenized with add_special_tokens=False (the
          template spells out its own special tokens);
  plain:  the prompt text tokenized with add_special_tokens=True (the tokenizer's own
          post-processor, as temper's `encode(prompt, true)`).
Decoding: CPU, float32, model.eval(), greedy (do_sample=False, num_beams=1), at most
--max-new-tokens (default 128) new tokens, EOS = generation_config.eos_token_id (an int or a
list). Prompts are decoded in order, --batch-size (default 1) at a time; a batch of more than one
prompt is left-padded with the pad token (the EOS token when the tokenizer has none) and given
its attention mask.

Timing: `seconds` is the wall time of the decode loop alone (the model.generate calls, prefill
included; tokenization and output handling excluded), the median over --repeat (default 1)
timed runs over all prompts, after a warm-up run over the first K batches (--warmup-batches,
default: all of them, i.e. one full run; 0 = none). `new_tokens` counts the generated tokens of
all prompts without their EOS tokens (the lengths of `new_ids`); `tokens_per_s` is
new_tokens / seconds.

OUT_JSON: {"prompt_ids": [[...]], "new_ids": [[...]] (EOS excluded), "finish": ["stop"|"length"],
"seconds", "new_tokens", "tokens_per_s", "runs_seconds": [every timed run], "batch_size",
"threads", "max_new_tokens", "chat"}. The token lists are those of the last timed run.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir")
    p.add_argument("prompts_json")
    p.add_argument("out_json")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--chat", action="store_true")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--warmup-batches", type=int, default=-1,
                   help="batches decoded before timing (-1 = all: one full run; 0 = none)")
    a = p.parse_args(argv)
    if a.max_new_tokens < 1 or a.batch_size < 1 or a.repeat < 1 or a.threads < 0:
        p.error("--max-new-tokens, --batch-size and --repeat must be >= 1, --threads >= 0")
    return a


def load_model(model_dir):
    try:  # transformers >= 4.56 names it `dtype`; older ones only know `torch_dtype`
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    return model


def encode_prompts(tok, prompts, chat):
    out = []
    for p in prompts:
        if chat:
            text = tok.apply_chat_template([{"role": "user", "content": p}],
                                           add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(p, add_special_tokens=True)["input_ids"]
        out.append(list(ids))
    return out


def eos_ids(model, tok):
    e = model.generation_config.eos_token_id
    if e is None:
        e = tok.eos_token_id
    if e is None:
        sys.exit("no EOS token in generation_config.json or the tokenizer")
    return [e] if isinstance(e, int) else list(e)


def left_pad(batch, pad):
    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


@torch.no_grad()
def decode(model, prompt_ids, batch_size, max_new, eos, pad, n_batches=None):
    """Greedy-decodes the prompts; returns (seconds in model.generate, new ids, finish reasons)."""
    seconds, new_ids, finish = 0.0, [], []
    starts = list(range(0, len(prompt_ids), batch_size))
    if n_batches is not None:
        starts = starts[:n_batches]
    for s in starts:
        batch = prompt_ids[s:s + batch_size]
        ids, mask = left_pad(batch, pad)
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                             max_new_tokens=max_new, eos_token_id=eos, pad_token_id=pad,
                             temperature=None, top_p=None, top_k=None)
        seconds += time.perf_counter() - t0
        for row in out[:, ids.shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in eos), None)
            if cut is None:
                new_ids.append(row)
                finish.append("length")
            else:
                new_ids.append(row[:cut])
                finish.append("stop")
    return seconds, new_ids, finish


def main(argv):
    a = parse(argv)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if a.threads:
        torch.set_num_threads(a.threads)
    prompts = json.load(open(a.prompts_json))
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts) or not prompts:
        sys.exit(f"{a.prompts_json}: expected a non-empty JSON list of strings")
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    model = load_model(a.model_dir)
    eos = eos_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    prompt_ids = encode_prompts(tok, prompts, a.chat)

    if a.warmup_batches != 0:
        decode(model, prompt_ids, a.batch_size, a.max_new_tokens, eos, pad,
               None if a.warmup_batches < 0 else a.warmup_batches)
    runs = []
    for _ in range(a.repeat):
        sec, new_ids, finish = decode(model, prompt_ids, a.batch_size, a.max_new_tokens, eos, pad)
        runs.append(sec)
    seconds = statistics.median(runs)
    new_tokens = sum(len(n) for n in new_ids)
    result = {
        "prompt_ids": prompt_ids, "new_ids": new_ids, "finish": finish,
        "seconds": seconds, "new_tokens": new_tokens,
        "tokens_per_s": new_tokens / seconds if seconds > 0 else 0.0,
        "runs_seconds": runs, "batch_size": a.batch_size, "threads": torch.get_num_threads(),
        "max_new_tokens": a.max_new_tokens, "chat": a.chat,
    }
    with open(a.out_json, "w") as f:
        json.dump(result, f)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
