#!/usr/bin/env python3
"""The standing fault campaign: run before a release (not part of `make test`).

    python3 scripts/fault_campaign.py kills [--trials 20] [--seed S]
    python3 scripts/fault_campaign.py disk-full [--size-mb 6]
    python3 scripts/fault_campaign.py fuzz [--seconds 600]
    python3 scripts/fault_campaign.py corrupt [--trials 20] [--seed S]
    python3 scripts/fault_campaign.py submit-kill [--trials 20] [--seed S]   (needs a Slurm cluster)
    python3 scripts/fault_campaign.py all

`kills`: one uninterrupted reference run of a training recipe (tokenizer -> tiny model -> CPT
-> SFT), then TRIALS runs in fresh stores, each `kill -9`ed at one to three random instants,
`temper verify` after every kill, and rerun to completion. Every artifact of every trial must be
byte-identical to the reference (wall-clock fields aside: `seconds` in `train_summary.json`,
`tokens_per_s` in `metrics.jsonl`). Prints `N/N bit-identical`.

`disk-full`: mounts a small tmpfs (root only; skipped with a message otherwise), pins a built
node, then runs a bigger recipe there until the disk is full. The run must fail with a clear
"disk full" / "No space left" message and no panic; then `status`, `verify`, `unpin` of the pin
and `gc --yes` must work on the full disk and free space, and the pin must have survived.

`corrupt`: one reference run, then TRIALS copies of its store (times preserved), in each of which
one to three random artifact files (manifests included) get one to eight random bytes flipped,
half the time with the modification time put back (then `temper verify` must find and mark it,
since no `stat` can). `temper plan` must call every corrupted artifact `damaged`, `temper run`
must rebuild each one and move its copy aside, and afterwards every artifact must be
byte-identical to the reference and `temper verify` clean. Prints `N/N rebuilt and identical`.

`fuzz`: the DSL fuzzer (byte and token mutations of every example and bad-corpus recipe through
parse -> validate -> expand), `TEMPER_FUZZ_SECS` seconds; zero panics, zero hangs.

Uses `target/release/temper` (run `make build` first) or `--temper PATH`.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPER = ROOT / "target" / "release" / "temper"

RECIPE = """
dataset corpus path="data/corpus.jsonl" format=text
dataset train  path="data/train.jsonl"  format=prompt-completion
tokenizer tok vocab-size=320 { data corpus; data train; }
model tiny tokenizer=tok hidden-size=32 layers=2 heads=4 kv-heads=2 intermediate-size=64 seed=0
cpt domain model=tiny data=corpus {
    seq-len 64; batch-size 8; steps 600; lr 2e-3; schedule cosine warmup=0.1
    checkpoint-every 17; device cpu; threads 1; log-every 5
}
sft tuned model=domain data=train {
    seq-len 48; batch-size 8; steps 400; lr 1e-3; checkpoint-every 13; device cpu; threads 1
}
"""


def project(dirname: Path, recipe: str = RECIPE) -> Path:
    (dirname / "data").mkdir(parents=True, exist_ok=True)
    for f in ["corpus.jsonl", "train.jsonl"]:
        shutil.copy(ROOT / "examples" / "data" / f, dirname / "data" / f)
    (dirname / "recipe.kdl").write_text(recipe)
    return dirname


def temper(proj: Path, *args, store=None, check=True, **kw):
    cmd = [str(TEMPER), "--store", str(store or proj / ".temper"), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "TEMPER_STORE")}
    out = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, **kw)
    if "panicked at" in out.stderr or out.returncode == 101:
        sys.exit(f"PANIC: temper {' '.join(args)}\n{out.stderr}")
    if check and out.returncode != 0:
        sys.exit(f"FAILED: temper {' '.join(args)} ({out.returncode})\n{out.stdout}\n{out.stderr}")
    return out


def fingerprint(store: Path) -> dict:
    """key -> {file: digest} over every published artifact, wall-clock fields removed."""
    fp = {}
    for art in sorted((store / "artifacts").iterdir()):
        files = {}
        for f in sorted(art.rglob("*")):
            if not f.is_file() or f.name == "MANIFEST.json":
                continue
            rel = str(f.relative_to(art))
            data = f.read_bytes()
            if f.name == "train_summary.json":
                s = json.loads(data)
                for k in ("seconds", "resumed_from"):
                    s.pop(k, None)
                data = json.dumps(s, sort_keys=True).encode()
            elif f.name == "metrics.jsonl":
                lines = []
                for line in data.decode().splitlines():
                    m = json.loads(line)
                    m.pop("tokens_per_s", None)
                    lines.append(json.dumps(m, sort_keys=True))
                data = "\n".join(lines).encode()
            files[rel] = hashlib.blake2b(data, digest_size=16).hexdigest()
        fp[art.name] = files
    return fp


def kills(trials: int, seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="temper-kills-") as tmp:
        tmp = Path(tmp)
        ref = project(tmp / "ref")
        t0 = time.time()
        temper(ref, "run", "recipe.kdl")
        ref_time = time.time() - t0
        ref_fp = fingerprint(ref / ".temper")
        print(f"reference run: {ref_time:.1f} s, {len(ref_fp)} artifacts")
        same = 0
        total_kills = 0
        mid_stage = 0
        for t in range(trials):
            p = project(tmp / f"trial-{t}")
            n_kills = rng.randint(1, 3)
            moments = []
            for _ in range(n_kills):
                # temper starts in ~0.5 s; kill anywhere in the remaining run.
                at = rng.uniform(0.3, ref_time * 0.9)
                env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
                child = subprocess.Popen(
                    [str(TEMPER), "--store", str(p / ".temper"), "run", "recipe.kdl"],
                    cwd=p, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                try:
                    child.wait(timeout=at)
                    moments.append(f"{at:.1f}s (finished first)")
                except subprocess.TimeoutExpired:
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    total_kills += 1
                    arts = p / ".temper" / "artifacts"
                    done = len(list(arts.iterdir())) if arts.is_dir() else 0
                    moments.append(f"{at:.1f}s ({done}/{len(ref_fp)} published)")
                v = temper(p, "verify", check=False)
                if v.returncode != 0:
                    sys.exit(f"trial {t}: verify after kill failed\n{v.stdout}{v.stderr}")
            temper(p, "run", "recipe.kdl")
            resumed = 0
            for ts in (p / ".temper" / "artifacts").glob("*/train_summary.json"):
                resumed += json.loads(ts.read_text()).get("resumed_from", 0) > 0
            mid_stage += resumed > 0
            if resumed:
                moments.append(f"{resumed} node(s) resumed mid-stage")
            fp = fingerprint(p / ".temper")
            ok = fp == ref_fp
            same += ok
            print(f"trial {t + 1:>2}: killed at {', '.join(moments)}: "
                  f"{'bit-identical' if ok else 'DIFFERENT'}")
            if not ok:
                for k in sorted(set(fp) | set(ref_fp)):
                    if fp.get(k) != ref_fp.get(k):
                        print(f"  differs: {k}: {fp.get(k)} vs {ref_fp.get(k)}")
            shutil.rmtree(p)
        print(f"kills: {total_kills} kill -9s over {trials} trials ({mid_stage} resumed a "
              f"training node mid-stage); {same}/{trials} bit-identical to the uninterrupted run")
        if same != trials:
            sys.exit(1)


def flip_bytes(path: Path, rng: random.Random, keep_time: bool) -> int:
    """Flips 1-8 random bytes of `path` in place; returns how many. `keep_time` restores mtime."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    n = rng.randint(1, min(8, len(data)))
    for at in rng.sample(range(len(data)), n):
        data[at] ^= rng.choice([0x01, 0x20, 0x80, 0xFF])
    with open(path, "r+b") as f:
        f.write(data)
    if keep_time:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    return n


def corrupt(trials: int, seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="temper-corrupt-") as tmp:
        tmp = Path(tmp)
        ref = project(tmp / "ref")
        temper(ref, "run", "recipe.kdl")
        ref_fp = fingerprint(ref / ".temper")
        print(f"reference run: {len(ref_fp)} artifacts")
        good = 0
        for t in range(trials):
            p = project(tmp / f"trial-{t}")
            shutil.copytree(ref / ".temper", p / ".temper", symlinks=True)
            arts = sorted((p / ".temper" / "artifacts").iterdir())
            hit = rng.sample(arts, rng.randint(1, 3))
            keep_time = rng.random() < 0.5
            what = []
            for art in hit:
                files = sorted(f for f in art.rglob("*") if f.is_file() and f.stat().st_size > 0)
                f = rng.choice(files)
                n = flip_bytes(f, rng, keep_time)
                what.append(f"{art.name[:8]}/{f.relative_to(art)} ({n} B)")
            if keep_time:
                v = temper(p, "verify", check=False)
                if v.returncode != 1:
                    sys.exit(f"trial {t}: verify did not report the corruption\n{v.stdout}{v.stderr}")
            plan = json.loads(temper(p, "plan", "recipe.kdl", "--json").stdout)
            damaged = {e["key"] for e in plan if e["state"] == "damaged"}
            missed = {a.name for a in hit} - damaged
            temper(p, "run", "recipe.kdl")
            fp = fingerprint(p / ".temper")
            aside = [d for d in (p / ".temper" / "damaged").iterdir() if d.is_dir()]
            v = temper(p, "verify", check=False)
            ok = not missed and fp == ref_fp and len(aside) == len(hit) and v.returncode == 0
            good += ok
            print(f"trial {t + 1:>2}: {'time kept, ' if keep_time else ''}{', '.join(what)}: "
                  f"{len(damaged)} damaged in plan, {len(aside)} moved aside: "
                  f"{'rebuilt and identical' if ok else 'FAILED'}")
            if not ok:
                if missed:
                    print(f"  plan did not call damaged: {sorted(missed)}")
                for k in sorted(set(fp) | set(ref_fp)):
                    if fp.get(k) != ref_fp.get(k):
                        print(f"  differs: {k}")
                if v.returncode != 0:
                    print(f"  verify after the run: {v.stdout}{v.stderr}")
            shutil.rmtree(p)
        print(f"corrupt: {good}/{trials} rebuilt and identical")
        if good != trials:
            sys.exit(1)


def disk_full(size_mb: int) -> None:
    if os.geteuid() != 0:
        print("disk-full: skipped: mounting a tmpfs needs root")
        return
    with tempfile.TemporaryDirectory(prefix="temper-full-") as tmp:
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"disk-full: skipped: cannot mount tmpfs: {r.stderr.strip()}")
            return
        try:
            p = project(Path(tmp) / "proj", RECIPE.replace("steps 600", "steps 4000")
                        .replace("checkpoint-every 17", "checkpoint-every 1"))
            store = mnt / "store"
            small = project(Path(tmp) / "small", RECIPE.split("cpt domain")[0])
            temper(small, "run", "recipe.kdl", store=store)
            temper(small, "pin", "keepme", "recipe.kdl", store=store)
            out = temper(p, "run", "recipe.kdl", store=store, check=False)
            msg = out.stdout + out.stderr
            print(f"run on a {size_mb} MB tmpfs: exit {out.returncode}")
            print("  " + "\n  ".join(msg.strip().splitlines()[-4:]))
            if out.returncode == 0:
                sys.exit("disk-full: the run did not fill the disk; lower --size-mb")
            if not any(s in msg.lower() for s in ("disk full", "no space left", "not enough free space")):
                sys.exit("disk-full: the failure does not say the disk is full")
            df = shutil.disk_usage(mnt)
            print(f"  free after the failed run: {df.free} bytes")
            for args in (["status"], ["verify"], ["unpin", "keepme"], ["gc", "--yes"]):
                o = temper(p, *args, store=store, check=False)
                print(f"temper {' '.join(args)} on the full disk: exit {o.returncode}")
                if o.returncode != 0:
                    sys.exit(f"disk-full: temper {' '.join(args)} failed\n{o.stdout}{o.stderr}")
            print(f"  free after gc: {shutil.disk_usage(mnt).free} bytes")
            print("disk-full: ok")
        finally:
            subprocess.run(["umount", "-l", str(mnt)])


def fuzz(seconds: int) -> None:
    env = dict(os.environ, TEMPER_FUZZ_SECS=str(seconds))
    r = subprocess.run(
        ["cargo", "test", "--release", "-p", "temper-dsl", "--test", "all", "fuzz", "--",
         "--nocapture"], cwd=ROOT, env=env)
    if r.returncode != 0:
        sys.exit("fuzz: failed")


SWEEP_RECIPE = """
dataset corpus path="data/corpus.jsonl" format=text
tokenizer tok vocab-size=300 { data corpus; }
sweep { tok.vocab-size %s; }
""" % " ".join(str(v) for v in range(300, 340))


def submit_kill(trials: int, seed: int) -> None:
    """`submit-kill`: a front killed while it submits to Slurm. A 40-value sweep (41 jobs) is
    submitted held (`--hold`, nothing runs) and `kill -9`ed one to three times at random instants
    of its submission, then submitted again to the end. Slurm must list exactly one job per
    instance (every job of the trial's recipe, found by name, in all states), the ledger must
    hold exactly those ids, and `temper cancel` must leave none active. A last trial does the
    same unheld and follows the rerun (`--wait`) until every node is built. Needs a cluster
    (`bash scripts/slurm-up.sh; export SLURM_CONF=...`); skipped with a message otherwise."""
    if subprocess.run(["sinfo", "--noheader"], capture_output=True).returncode != 0:
        print("submit-kill: skipped: no Slurm cluster answers (scripts/slurm-up.sh, SLURM_CONF)")
        return
    rng = random.Random(seed)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()

    def listing() -> list:
        out = subprocess.run(["squeue", "--noheader", "--states=all", "--user", user,
                              "--format=%i|%j|%T"], capture_output=True, text=True, check=True)
        return [l.strip().split("|", 2) for l in out.stdout.splitlines() if l.count("|") >= 2]

    def newest() -> int:
        return max((int(i) for i, _, _ in listing() if i.isdigit()), default=0)

    def jobs_of(stem: str, after: int) -> dict:
        """instance id -> [(job id, state)] of every job named for `stem` newer than `after`."""
        by = {}
        prefix = f"temper:{stem}:"
        for i, name, state in listing():
            if i.isdigit() and int(i) > after and name.startswith(prefix):
                inst = name[len(prefix):]
                # `temper:<recipe>:<instance>:<16 hex of the key>` (older: no key).
                head, _, tail = inst.rpartition(":")
                if head and len(tail) == 16 and all(c in "0123456789abcdef" for c in tail):
                    inst = head
                by.setdefault(inst, []).append((i, state))
        return by

    def ledger_ids(store: Path) -> dict:
        ids = {}
        for f in (store / "slurm" / "jobs").glob("*.json"):
            s = json.loads(f.read_text())
            ids[s["node"]] = s.get("job_id")
        return ids

    def submit(p: Path, stem: str, held: bool):
        args = [str(TEMPER), "--store", str(p / ".temper"), "run", f"{stem}.kdl",
                "--executor", "slurm"] + (["--hold"] if held else [])
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        return subprocess.Popen(args, cwd=p, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    with tempfile.TemporaryDirectory(prefix="temper-submit-kill-") as tmp:
        tmp = Path(tmp)
        ref = project(tmp / "ref", SWEEP_RECIPE)
        stem = f"sk{seed}ref"
        (ref / "recipe.kdl").rename(ref / f"{stem}.kdl")
        t0 = time.time()
        out = submit(ref, stem, True).communicate()[0]
        ref_time = time.time() - t0
        if "41 submitted" not in out:
            sys.exit(f"submit-kill: the reference submission failed\n{out}")
        temper(ref, "cancel", f"{stem}.kdl")
        print(f"reference held submission of 41 jobs: {ref_time:.2f} s")
        good = 0
        for t in range(trials + 1):
            held = t < trials
            p = project(tmp / f"trial-{t}", SWEEP_RECIPE)
            stem = f"sk{seed}t{t}"
            (p / "recipe.kdl").rename(p / f"{stem}.kdl")
            before = newest()
            moments = []
            for _ in range(rng.randint(1, 3)):
                at = rng.uniform(0.05, 0.8) * ref_time
                child = submit(p, stem, held)
                try:
                    child.wait(timeout=at)
                    moments.append(f"{at:.2f}s (finished first)")
                except subprocess.TimeoutExpired:
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    n = sum(len(v) for v in jobs_of(stem, before).values())
                    moments.append(f"{at:.2f}s ({n} jobs)")
            rerun = [str(TEMPER), "--store", str(p / ".temper"), "run", f"{stem}.kdl",
                     "--executor", "slurm"] + (["--hold"] if held else ["--wait"])
            env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
            r = subprocess.run(rerun, cwd=p, env=env, capture_output=True, text=True,
                               timeout=None if held else 1800)
            summary = next((l for l in r.stdout.splitlines() if " submitted, " in l), "")
            adopted = r.stdout.count("recorded now")
            if adopted:
                summary = f"{summary.strip()} ({adopted} adopted)"
            problems = []
            if r.returncode != 0:
                problems.append(f"the rerun failed ({r.returncode}): {r.stdout[-400:]}{r.stderr[-400:]}")
            if not held and "all done" not in r.stdout:
                problems.append("the followed rerun did not end all done")
            jobs = jobs_of(stem, before)
            twice = {k: v for k, v in jobs.items() if len(v) != 1}
            if len(jobs) != 41 or twice:
                problems.append(f"{len(jobs)} instances with jobs (want 41); more than one job: {twice}")
            recorded = ledger_ids(p / ".temper")
            want = {k: v[0][0] for k, v in jobs.items() if len(v) == 1}
            if recorded != want:
                diff = {k: (recorded.get(k), want.get(k)) for k in set(recorded) | set(want)
                        if recorded.get(k) != want.get(k)}
                problems.append(f"ledger and Slurm disagree (ledger, slurm): {diff}")
            if held:
                temper(p, "cancel", f"{stem}.kdl", check=False)
                active = [i for i, _, st in listing() if i in {j for v in jobs.values() for j, _ in v}
                          and st not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")]
                if active:
                    problems.append(f"jobs left active after `temper cancel`: {active}")
            what = "held" if held else "unheld, followed to the end"
            print(f"trial {t + 1:>2} ({what}): killed at {', '.join(moments)}; rerun: "
                  f"{summary.strip()}: {'ok' if not problems else 'WRONG'}")
            for pr in problems:
                print(f"  {pr}")
            good += not problems
            if problems:
                ids = [j for v in jobs.values() for j, _ in v]
                if ids:
                    subprocess.run(["scancel", *ids], capture_output=True)
            shutil.rmtree(p)
        print(f"submit-kill: {good}/{trials + 1} trials left exactly one job per instance")
        if good != trials + 1:
            sys.exit(1)


def main() -> None:
    global TEMPER
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["kills", "disk-full", "fuzz", "corrupt", "submit-kill", "all"])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--size-mb", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--temper", type=Path, default=TEMPER, help="the binary to test")
    a = ap.parse_args()
    TEMPER = a.temper.resolve()
    if not TEMPER.exists():
        sys.exit(f"{TEMPER} not found: run `make build` first")
    if a.what in ("kills", "all"):
        print(f"== kills (seed {a.seed})")
        kills(a.trials, a.seed)
    if a.what in ("corrupt", "all"):
        print(f"== corrupt (seed {a.seed})")
        corrupt(a.trials, a.seed)
    if a.what in ("disk-full", "all"):
        print("== disk-full")
        disk_full(a.size_mb)
    if a.what in ("fuzz", "all"):
        print(f"== fuzz ({a.seconds} s)")
        fuzz(a.seconds)
    if a.what in ("submit-kill", "all"):
        print(f"== submit-kill (seed {a.seed})")
        submit_kill(a.trials, a.seed)


if __name__ == "__main__":
    main()
