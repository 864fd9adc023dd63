"""Threat model for the embedded digits task: at which eps does robustness cost accuracy?

A trade-off exists only where a standard model loses most of its accuracy under attack and adversarial
training buys a lot of it back. For each candidate eps this trains a standard and a PGD-AT model (same
budget) and attacks both with APGD-CE + APGD-DLR (deterministic models: one draw, worst case per point).
Target (issue "The dial, made real"): standard robust accuracy ≤ 40%, PGD-AT at least 25 points above it.

    python benchmarks/threat_model.py --models test_resnet resnet18 --eps 0.0314 0.1 0.15

Writes benchmarks/results/threat_model.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import floatify
from floatify.attack_presets import strong
from floatify.data import load_dataset
from floatify.models import create_model

sys.path.insert(0, str(Path(__file__).parent))
from tradeoff import train_baseline  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["test_resnet", "resnet18"])
    p.add_argument("--eps", nargs="+", type=float, default=[8 / 255, 0.1, 0.15])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--eval-steps", type=int, default=50)
    p.add_argument("--eval-limit", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/threat_model.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("digits", image_size=16, augment="none")  # reason: its recorded results are unaugmented
    test = DataLoader(Subset(data.test, range(args.eval_limit)), batch_size=512)
    rows = []
    for name in args.models:
        for eps in args.eps:
            for method in ("standard", "pgd-at"):
                torch.manual_seed(args.seed)
                model = create_model(name, data.num_classes)
                loader = DataLoader(data.train, batch_size=64, shuffle=True, drop_last=True,
                                    generator=torch.Generator().manual_seed(args.seed))
                t0 = time.perf_counter()
                train_baseline(model, loader, method, args.epochs, 0.1, args.seed, eps, args.steps, "cpu",
                               step_size=2.5 * eps / args.steps)
                train_s = time.perf_counter() - t0
                attacks = strong(eps, steps=args.eval_steps)[:3]  # clean, APGD-CE, APGD-DLR (deterministic model)
                report = floatify.evaluate(floatify.convert(model), test, lams=[0.0], attacks=attacks, progress=False)
                row = {"model": name, "eps": eps, "method": method, "epochs": args.epochs, "train_s": train_s,
                       "clean": report.score(0.0, "clean").mean, "robust": report.score(0.0, report.headline).mean,
                       "attack": f"worst of APGD-CE/APGD-DLR, {args.eval_steps} iterations",
                       "points": args.eval_limit}
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
