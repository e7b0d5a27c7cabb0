"""Golden values for temper's merge methods, computed in float64 with torch from the formulas of
shared/reference/merging.md (an implementation independent of the Rust one).

Run: .venv/bin/python recipes/tests/merge/gen_golden.py > recipes/tests/merge/golden.json
Each case: method, inputs (base, models), parameters, expected output (flat list).
DARE masks replicate temper's SplitMix64 stream (`task_vector::dare_mask`).
"""
import json
import math

import torch

torch.set_default_dtype(torch.float64)
M64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & M64

    def next_u64(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def next_f64(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    @staticmethod
    def derived(seed, a, b):
        g = SplitMix64(seed ^ 0x5EED0F7E4DE8)
        x = g.next_u64() ^ ((a * 0xD1B54A32D192ED03) & M64)
        g = SplitMix64(x)
        y = g.next_u64() ^ ((b * 0x8CB92BA72F3D8DD7) & M64)
        return SplitMix64(y)


def dare_mask(n, density, seed, model):
    g = SplitMix64.derived(seed, model, 0xDA4E)
    return torch.tensor([g.next_f64() < density for _ in range(n)])


def linear(models, w, normalize):
    out = sum(wi * m for wi, m in zip(w, models))
    s = sum(w)
    return out / s if normalize and s != 0 else out


def slerp(v0, v1, t):
    if t == 0:
        return v0
    if t == 1:
        return v1
    n0, n1 = v0.norm().item(), v1.norm().item()
    a = v0 / n0 if n0 > 1e-8 else v0
    b = v1 / n1 if n1 > 1e-8 else v1
    d = (a * b).sum().item()
    if abs(d) > 0.9995:
        return (1 - t) * v0 + t * v1
    th = math.acos(d)
    return (math.sin((1 - t) * th) * v0 + math.sin(t * th) * v1) / math.sin(th)


def topk(tau, density):
    n = tau.numel()
    k = int(density * n)
    order = sorted(range(n), key=lambda i: (-abs(tau[i].item()), i))
    keep = torch.zeros(n, dtype=torch.bool)
    keep[order[:k]] = True
    return tau * keep


def gta(base, models, w, dens, lam, normalize, sparsify, consensus, seed=0):
    Ws = []
    for i, m in enumerate(models):
        tau = m - base
        if sparsify == "topk":
            tau = topk(tau, dens[i])
        elif sparsify == "random":
            mask = dare_mask(tau.numel(), dens[i], seed, i)
            before = tau.abs().sum()
            kept = tau * mask
            after = kept.abs().sum()
            tau = kept * (before / after) if after > 0 else kept
        Ws.append(w[i] * tau)
    W = torch.stack(Ws)
    wv = torch.tensor(w).unsqueeze(1).expand_as(W)
    if consensus:
        maj = torch.where(W.sum(0) >= 0, 1.0, -1.0)
        mask = torch.sign(W) == maj
    else:
        mask = torch.ones_like(W, dtype=torch.bool)
    mixed = (W * mask).sum(0)
    if normalize:
        div = (wv * mask).sum(0)
        div = torch.where(div == 0, torch.ones_like(div), div)
        mixed = mixed / div
    return base + lam * mixed


def model_stock(base, models):
    taus = [m - base for m in models]
    n = len(models)
    cs = []
    for i in range(n):
        for j in range(i + 1, n):
            cs.append((taus[i] @ taus[j]).item() / max(taus[i].norm().item() * taus[j].norm().item(), 1e-6))
    cos = sum(cs) / len(cs)
    den = 1 + (n - 1) * cos
    t = 0.0 if den == 0 else n * cos / den
    return t * torch.stack(models).mean(0) + (1 - t) * base


g = torch.Generator().manual_seed(1234)
N = 24
base = torch.randn(N, generator=g)
A = base + 0.3 * torch.randn(N, generator=g)
B = base + 0.3 * torch.randn(N, generator=g)
C = base + 0.3 * torch.randn(N, generator=g)
ident = lambda m: m.tolist()
cases = []


def case(name, method, base_t, models, expected, **p):
    cases.append({
        "name": name, "method": method,
        "base": None if base_t is None else base_t.tolist(),
        "models": [m.tolist() for m in models],
        "params": p, "expected": expected.tolist(),
    })


case("linear normalized", "linear", None, [A, B], linear([A, B], [0.3, 0.7], True), weight=[0.3, 0.7], normalize=True)
case("linear unnormalized", "linear", None, [A, B, C], linear([A, B, C], [0.5, 0.2, 0.6], False), weight=[0.5, 0.2, 0.6], normalize=False)
case("linear zero weight sum", "linear", None, [A, B], linear([A, B], [1.0, -1.0], True), weight=[1.0, -1.0], normalize=True)
case("slerp t=0.3", "slerp", A, [B], slerp(A, B, 0.3), t=0.3)
case("slerp t=0.5 far apart", "slerp", A, [-0.5 * A + B], slerp(A, -0.5 * A + B, 0.5), t=0.5)
case("slerp t=0", "slerp", A, [B], A, t=0.0)
case("slerp t=1", "slerp", A, [B], B, t=1.0)
case("slerp colinear", "slerp", A, [2.5 * A], slerp(A, 2.5 * A, 0.4), t=0.4)
case("slerp anti-colinear", "slerp", A, [-2.0 * A], slerp(A, -2.0 * A, 0.25), t=0.25)
case("slerp zero-norm side", "slerp", torch.zeros(N), [B], slerp(torch.zeros(N), B, 0.3), t=0.3)
case("task_arithmetic", "task_arithmetic", base, [A, B], gta(base, [A, B], [0.5, 1.0], [1, 1], 0.8, False, None, False), weight=[0.5, 1.0], lam=0.8, normalize=False)
case("task_arithmetic normalized", "task_arithmetic", base, [A, B], gta(base, [A, B], [0.5, 1.0], [1, 1], 1.0, True, None, False), weight=[0.5, 1.0], lam=1.0, normalize=True)
case("ties density 0.5", "ties", base, [A, B, C], gta(base, [A, B, C], [1.0, 0.5, 0.8], [0.5, 0.5, 0.3], 1.0, True, "topk", True), weight=[1.0, 0.5, 0.8], density=[0.5, 0.5, 0.3], lam=1.0, normalize=True)
case("ties density 1", "ties", base, [A, B], gta(base, [A, B], [1.0, 1.0], [1, 1], 0.7, True, "topk", True), weight=[1.0, 1.0], density=[1.0, 1.0], lam=0.7, normalize=True)
case("ties unnormalized", "ties", base, [A, B], gta(base, [A, B], [0.6, 0.4], [0.7, 0.7], 1.0, False, "topk", True), weight=[0.6, 0.4], density=[0.7, 0.7], lam=1.0, normalize=False)
# Sign ties and zero divisors, by hand: base 0; element 0: +1 and -1 (sum 0 -> +, only +1 kept);
# element 1: both 0 (nobody votes: divisor 0 -> 1, result 0); element 2: +2, +4; element 3: -1, +0.5.
z = torch.zeros(4)
x1 = torch.tensor([1.0, 0.0, 2.0, -1.0])
x2 = torch.tensor([-1.0, 0.0, 4.0, 0.5])
case("ties sign tie and zero divisor", "ties", z, [x1, x2], gta(z, [x1, x2], [1.0, 1.0], [1, 1], 1.0, True, "topk", True), weight=[1.0, 1.0], density=[1.0, 1.0], lam=1.0, normalize=True)
case("ties opposite weights zero divisor", "ties", z, [x1, x1], gta(z, [x1, x1], [1.0, -1.0], [1, 1], 1.0, True, "topk", True), weight=[1.0, -1.0], density=[1.0, 1.0], lam=1.0, normalize=True)
case("dare_linear density 0.5", "dare_linear", base, [A, B], gta(base, [A, B], [0.7, 0.3], [0.5, 0.6], 1.0, False, "random", False, seed=42), weight=[0.7, 0.3], density=[0.5, 0.6], lam=1.0, normalize=False, seed=42)
case("dare_linear density 1", "dare_linear", base, [A, B], gta(base, [A, B], [0.7, 0.3], [1.0, 1.0], 1.0, False, None, False), weight=[0.7, 0.3], density=[1.0, 1.0], lam=1.0, normalize=False, seed=7)
case("dare_ties density 0.4", "dare_ties", base, [A, B, C], gta(base, [A, B, C], [1.0, 0.8, 0.6], [0.4, 0.4, 0.9], 0.9, False, "random", True, seed=3), weight=[1.0, 0.8, 0.6], density=[0.4, 0.4, 0.9], lam=0.9, normalize=False, seed=3)
case("model_stock 3 models", "model_stock", base, [A, B, C], model_stock(base, [A, B, C]))
case("model_stock 2 models", "model_stock", base, [A, B], model_stock(base, [A, B]))
case("model_stock models equal base", "model_stock", base, [base, base], base)

dm = dare_mask(16, 0.5, 99, 1)
print(json.dumps({"source": "gen_golden.py (torch float64, formulas of merging.md)", "cases": cases,
                  "dare_mask": {"n": 16, "density": 0.5, "seed": 99, "model": 1, "mask": dm.tolist()}}, indent=1))
