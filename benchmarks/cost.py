"""Cost of FLOAT vs plain PGD adversarial training vs OAT/FiLM, side by side in one run.

Parameters, training step time (same attack settings: PGD-7, eps 8/255, at λ = 1) and inference latency
at λ = 0 and λ = 1 for ResNet-18/34-class models at 32×32. Timings are interleaved (every round times every
variant, in a shuffled order) and reported as medians and median ratios.

    python benchmarks/cost.py [--rounds 10] [--batch 64] [--out benchmarks/results/cost.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import floatify
from floatify.attacks import make_attack

sys.path.insert(0, str(Path(__file__).parent))
from baselines import filmify  # noqa: E402


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train_step(model, opt, x, y, lam, steps):
    model.train()
    with floatify.lam(lam):
        if lam > 0:
            x = make_attack(model, "pgd", 8 / 255, steps, 2 / 255)(x, y)
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def measure(arch: str, batch: int, rounds: int, steps: int) -> dict:
    torch.manual_seed(0)
    base = timm.create_model(arch, num_classes=10)
    variants = {
        "plain": copy.deepcopy(base),
        "float": floatify.convert(copy.deepcopy(base)),
        "film": filmify(copy.deepcopy(base)),
    }
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in variants.items()}
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    step_t = {k: [] for k in variants}
    lat = {f"{k}@{v}": [] for k in variants for v in (0.0, 1.0)}
    for k, m in variants.items():  # warm-up
        train_step(m, opts[k], x, y, 1.0, 1)
    order = list(variants)
    for r in range(rounds):
        random.Random(r).shuffle(order)
        for k in order:
            t = time.perf_counter()
            train_step(variants[k], opts[k], x, y, 1.0, steps)  # plain at λ=1: PGD-AT (no noise, no dual BN)
            step_t[k].append(time.perf_counter() - t)
            variants[k].eval()
            with torch.no_grad():
                for v in (0.0, 1.0):
                    with floatify.lam(v):
                        t = time.perf_counter()
                        variants[k](x)
                        lat[f"{k}@{v}"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in step_t.items()}
    ratio = lambda a, b: statistics.median(p / q for p, q in zip(step_t[a], step_t[b]))  # noqa: E731
    return {
        "arch": arch, "batch": batch, "rounds": rounds, "pgd_steps": steps,
        "params": {k: params(m) for k, m in variants.items()},
        "params_ratio_float_plain": params(variants["float"]) / params(variants["plain"]),
        "params_ratio_film_float": params(variants["film"]) / params(variants["float"]),
        "step_s": med,
        "step_ratio_float_plain": ratio("float", "plain"),
        "step_ratio_film_float": ratio("film", "float"),
        "latency_ms": {k: 1000 * statistics.median(v) for k, v in lat.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet34"])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cost.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    results = [measure(a, args.batch, args.rounds, args.steps) for a in args.archs]
    for r in results:
        print(f"{r['arch']}: params plain {r['params']['plain']:,} float {r['params']['float']:,} "
              f"film {r['params']['film']:,} | float/plain {r['params_ratio_float_plain']:.4f} "
              f"film/float {r['params_ratio_film_float']:.3f}")
        print(f"  step (PGD-{r['pgd_steps']}, batch {r['batch']}): " +
              ", ".join(f"{k} {v:.2f}s" for k, v in r["step_s"].items()) +
              f" | float/plain {r['step_ratio_float_plain']:.3f} film/float {r['step_ratio_film_float']:.3f}")
        print("  latency ms: " + ", ".join(f"{k} {v:.1f}" for k, v in r["latency_ms"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
