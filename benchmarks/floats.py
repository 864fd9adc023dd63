"""FLOATS three-way trade-off on the embedded dataset: density × λ → clean and EOT-PGD accuracy + size.

    python benchmarks/floats.py [--densities 1.0 0.5 0.2 0.1] [--epochs 6] [--criterion magnitude]

Writes benchmarks/results/floats.json, floats.md and floats.png.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import floatify
from floatify.attacks import AttackSpec
from floatify.data import load_dataset

LAMS = [0.0, 0.25, 0.5, 0.75, 1.0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.5, 0.2, 0.1])
    p.add_argument("--criterion", default="magnitude")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eot", type=int, default=4)
    p.add_argument("--eval-steps", type=int, default=10)
    p.add_argument("--score-draws", type=int, default=8)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("digits", image_size=16)
    test = data.test if args.eval_limit is None else Subset(data.test, range(args.eval_limit))
    eps = 8 / 255
    attacks = [AttackSpec("clean", eps), AttackSpec("eot-pgd", eps, args.eval_steps, eot_draws=args.eot)]
    rows = []
    for density in args.densities:
        torch.manual_seed(args.seed)
        model = floatify.convert(floatify.create_model(args.model, data.num_classes))
        loader = DataLoader(data.train, batch_size=64, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(args.seed))
        if density < 1.0:
            floatify.sparsify(model, density, criterion=args.criterion, data=loader)
        floatify.fit(model, loader, epochs=args.epochs, seed=args.seed, progress=False)
        report = floatify.evaluate(model, DataLoader(test, batch_size=512), LAMS, attacks,
                                   score_draws=args.score_draws, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            size = floatify.save_sparse(floatify.freeze(model, 0.0), Path(tmp) / "m.safetensors").stat().st_size
        rep = floatify.sparsity_report(model)
        rows.append({"density": density, "attack": attacks[1].describe(), "measured_density": rep.density,
                     "export_MB": size / 1e6,
                     "clean": {str(v): report.score(v, "clean").mean for v in LAMS},
                     "robust": {str(v): report.score(v, attacks[1].label).mean for v in LAMS}})
        print(json.dumps(rows[-1]), flush=True)
    lines = ["| density | export MB | " + " | ".join(f"λ={v:g} clean / EOT-PGD" for v in LAMS) + " |",
             "|---|---|" + "---|" * len(LAMS)]
    for r in rows:
        cells = [f"{100 * r['clean'][str(v)]:.1f} / {100 * r['robust'][str(v)]:.1f}" for v in LAMS]
        lines.append(f"| {r['measured_density']:.3f} | {r['export_MB']:.2f} | " + " | ".join(cells) + " |")
    lines.append(f"\nAttack: {attacks[1].describe()}; scoring: {args.score_draws} noise draws per point.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "floats.json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows},
                                                      indent=2))
    (args.out / "floats.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        ax.plot([100 * r["clean"][str(v)] for v in LAMS], [100 * r["robust"][str(v)] for v in LAMS], marker="o",
                label=f"density {r['measured_density']:.2f} ({r['export_MB']:.1f} MB)")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("EOT-PGD accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "floats.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
