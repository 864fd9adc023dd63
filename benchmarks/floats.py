"""FLOATS three-way trade-off on the embedded dataset: criterion × density × λ → clean and robust accuracy + size.

Under the digits threat model (eps 0.1) with the strong preset; robust = the report's headline (per-point worst
case over the preset's attacks on the noisy model).

    python benchmarks/floats.py [--densities 1.0 0.5 0.2 0.1] [--criteria magnitude random snip] [--seeds 0 1 2]

FLOAT training uses the library defaults (floatify.fit, floatify.FloatConfig). Every finished (criterion, density,
seed) run is appended to results/floats.jsonl and reused when the command is run again with the same settings.
Writes benchmarks/results/floats.json, floats.md and floats.png (cells: mean ± sd over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import floatify
from floatify.attack_presets import PRESETS
from floatify.data import load_dataset
from floatify.models import create_model
from floatify.sparsity import save_sparse, sparsity_report

LAMS = [0.0, 0.5, 1.0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="test_resnet")
    p.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.5, 0.2, 0.1])
    p.add_argument("--criteria", nargs="+", default=["magnitude", "random", "snip"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--preset", choices=tuple(PRESETS), default="strong")
    p.add_argument("--score-draws", type=int, default=8)
    p.add_argument("--eval-limit", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("digits", image_size=16, augment="none")  # reason: its recorded results are unaugmented
    test = data.test if args.eval_limit is None else Subset(data.test, range(args.eval_limit))
    attacks = PRESETS[args.preset](args.eps)
    settings = {k: getattr(args, k) for k in ("model", "epochs", "eps", "preset", "score_draws", "eval_limit")}
    cfg, conv = floatify.TrainConfig(), floatify.FloatConfig()  # reason: a run is reused only under the same defaults
    settings["defaults"] = [cfg.strategy, cfg.adv_weight, conv.bn_mix, conv.bn_curve]
    log = args.out / "floats.jsonl"  # reason: one line per finished run, so an interrupted bench resumes
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(c, d) for c in args.criteria for d in args.densities if d < 1.0 or c == args.criteria[0]]
    for seed in args.seeds:
        for criterion, density in jobs:
            name = criterion if density < 1.0 else "dense"
            if any(r["criterion"] == name and r["density"] == density and r["seed"] == seed
                   and r.get("settings") == settings for r in done):
                continue
            done.append(run(args, data, test, attacks, criterion, density, seed) | {"settings": settings})
            with log.open("a") as f:
                f.write(json.dumps(done[-1]) + "\n")
            print(json.dumps({k: done[-1][k] for k in ("criterion", "density", "seed", "clean", "robust")}), flush=True)
    runs = [r for r in done if r.get("settings") == settings and r["seed"] in args.seeds]
    rows = []
    for criterion, density in jobs:
        name = criterion if density < 1.0 else "dense"
        mine = [r for r in runs if r["criterion"] == name and r["density"] == density]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)  # noqa: E731
        rows.append({"criterion": name, "density": density, "attack": mine[0]["attack"], "seeds": len(mine),
                     "measured_density": statistics.mean(r["measured_density"] for r in mine),
                     "export_MB": statistics.mean(r["export_MB"] for r in mine),
                     **{key: {str(v): statistics.mean(r[key][str(v)] for r in mine) for v in LAMS}
                        for key in ("clean", "robust")},
                     **{key + "_sd": {str(v): sd([r[key][str(v)] for r in mine]) for v in LAMS}
                        for key in ("clean", "robust")}})
    lines = ["| criterion | density | export MB | " + " | ".join(f"λ={v:g} clean / robust" for v in LAMS) + " |",
             "|---|---|---|" + "---|" * len(LAMS)]
    for r in rows:
        cells = [f"{100 * r['clean'][str(v)]:.1f}±{100 * r['clean_sd'][str(v)]:.1f} / "
                 f"{100 * r['robust'][str(v)]:.1f}±{100 * r['robust_sd'][str(v)]:.1f}" for v in LAMS]
        lines.append(f"| {r['criterion']} | {r['measured_density']:.3f} | {r['export_MB']:.2f} | "
                     + " | ".join(cells) + " |")
    lines.append(f"\nRobust: {rows[0]['attack']}; scoring: {args.score_draws} noise draws per point.")
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
                label=f"{r['criterion']} {r['measured_density']:.2f} ({r['export_MB']:.1f} MB)")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%), headline")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "floats.png", dpi=110)
    print("\n".join(lines))


def run(args, data, test, attacks, criterion: str, density: float, seed: int) -> dict:
    """Prune (one-shot, before training), FLOAT-train with the library defaults, evaluate; one seed."""
    torch.manual_seed(seed)
    model = floatify.convert(create_model(args.model, data.num_classes))
    loader = DataLoader(data.train, batch_size=64, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    if density < 1.0:
        floatify.sparsify(model, density, criterion=criterion, data=loader)
    floatify.fit(model, loader, epochs=args.epochs, seed=seed, eps=args.eps, progress=False)
    report = floatify.evaluate(model, DataLoader(test, batch_size=512), lams=LAMS, attacks=attacks,
                               score_draws=args.score_draws, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        size = save_sparse(floatify.freeze(model, 0.0), Path(tmp) / "m.safetensors").stat().st_size
    return {"criterion": criterion if density < 1.0 else "dense", "density": density, "seed": seed,
            "attack": report.attacks[report.headline], "measured_density": sparsity_report(model).density,
            "export_MB": size / 1e6,
            "clean": {str(v): report.score(v, "clean").mean for v in LAMS},
            "robust": {str(v): report.score(v, report.headline).mean for v in LAMS}}


if __name__ == "__main__":
    main()
