"""Trade-off quality: FLOAT (each λ-sampling strategy) vs OAT/FiLM vs standard and PGD-AT training.

Equal training budget for every method (same epochs, batch, optimizer, PGD settings); clean and
EOT-PGD accuracy at λ ∈ {0, .1, .2, .3, .5, .7, 1}, several seeds, mean ± spread across seeds.

    python benchmarks/tradeoff.py --seeds 0 1 2 --epochs 6          # embedded digits, CPU
    python benchmarks/tradeoff.py --dataset cifar10 --download --model resnet18 --epochs 100 --device cuda

Writes benchmarks/results/tradeoff.json, tradeoff.md and tradeoff.png; every finished (method, seed) run is
appended to tradeoff.jsonl and skipped when the command is run again with the same settings (delete the file
to start over, e.g. after changing the library).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import floatify
from floatify.attacks import AttackSpec, make_attack
from floatify.data import load_dataset
from floatify.train import LamSampler

sys.path.insert(0, str(Path(__file__).parent))
from baselines import filmify  # noqa: E402

LAMS = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
SETTINGS = ("model", "dataset", "image_size", "epochs", "batch_size", "lr", "eps", "steps", "eval_steps", "eot",
            "score_draws", "eval_limit")  # a logged run is reused only if all of these match
METHODS = ("float-binary", "float-oat", "float-uniform", "float-binary-fwd", "film-oat", "standard", "pgd-at")
# float-<strategy>: floatify.fit with that λ strategy and one noise draw per step (the default);
# float-binary-fwd: the same with a fresh noise draw per forward (the reference code) — checks the default.


def train_baseline(model, loader, method, epochs, lr, seed, eps, steps, device):
    """Standard, PGD-AT and OAT/FiLM training with the same optimizer/schedule as floatify.fit."""
    opt = torch.optim.SGD(floatify.param_groups(model, 5e-4), lr=lr, momentum=0.9, nesterov=True)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + torch.cos(torch.tensor(s / total * 3.14159))))
    sampler = LamSampler("oat", seed=seed)
    step = 0
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if method == "standard":
                loss = F.cross_entropy(model(x), y)
            elif method == "pgd-at":
                x_adv = make_attack(model, "pgd", eps, steps, 2 / 255)(x, y)
                loss = F.cross_entropy(model(x_adv), y)
            else:  # film-oat: the OAT loss on the FiLM model
                lam = sampler(step)[0]
                loss = floatify.float_loss(model, x, y, lam, eps=eps, steps=steps)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1


def run(method, seed, args, data) -> dict:
    torch.manual_seed(seed)
    base = floatify.create_model(args.model, data.num_classes).to(args.device)
    loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    if method.startswith("float-"):
        model = floatify.convert(base)
        floatify.fit(model, loader, epochs=args.epochs, lr=args.lr, strategy=method.split("-")[1], seed=seed,
                     eps=args.eps, steps=args.steps, progress=False,
                     noise_draw="forward" if method.endswith("-fwd") else "step")
    else:
        model = filmify(copy.deepcopy(base)) if method == "film-oat" else base
        train_baseline(model, loader, method, args.epochs, args.lr, seed, args.eps, args.steps, args.device)
    train_s = time.perf_counter() - t0
    test = data.test if args.eval_limit is None else Subset(data.test, range(args.eval_limit))
    lams = LAMS if method not in ("standard", "pgd-at") else [0.0]  # reason: one operating point only
    attacks = [AttackSpec("clean", args.eps), AttackSpec("eot-pgd", args.eps, args.eval_steps, eot_draws=args.eot)]
    t1 = time.perf_counter()
    loader = DataLoader(test, batch_size=512)
    report = floatify.evaluate(model, loader, lams, attacks, score_draws=args.score_draws, progress=False)
    result = {"method": method, "seed": seed, "train_s": train_s, "eval_s": time.perf_counter() - t1,
              "clean": {str(v): report.score(v, "clean").mean for v in lams},
              "robust": {str(v): report.score(v, attacks[1].label).mean for v in lams},
              "attack": attacks[1].describe(), "score_draws": args.score_draws, "eval_points": len(test)}
    if method.startswith("float-"):  # reason: how much of λ = 1's robustness is randomness, and PGD vs EOT-PGD
        extra = [AttackSpec("pgd", args.eps, args.eval_steps),
                 AttackSpec("pgd", args.eps, args.eval_steps, noise=False)]
        at_one = floatify.evaluate(model, loader, [1.0], extra, score_draws=args.score_draws, progress=False)
        result["at_1"] = {a.label: at_one.score(1.0, a.label).mean for a in extra}
    return result


def summarise(results: list[dict]) -> str:
    lines = ["| method | λ | clean % (mean ± sd over seeds) | EOT-PGD % | seeds |", "|---|---|---|---|---|"]
    for method in METHODS:
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue
        for lam in rows[0]["clean"]:
            c = [100 * r["clean"][lam] for r in rows]
            a = [100 * r["robust"][lam] for r in rows]
            sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)  # noqa: E731
            lines.append(f"| {method} | {lam} | {statistics.mean(c):.1f} ± {sd(c):.1f} | "
                         f"{statistics.mean(a):.1f} ± {sd(a):.1f} | {len(rows)} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method in METHODS:
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue
        lams = list(rows[0]["clean"])
        cx = [statistics.mean(100 * r["clean"][v] for r in rows) for v in lams]
        ry = [statistics.mean(100 * r["robust"][v] for r in rows) for v in lams]
        ax.plot(cx, ry, marker="o" if len(lams) > 1 else "*", markersize=6 if len(lams) > 1 else 12, label=method)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("EOT-PGD accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--download", action="store_true")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--eval-steps", type=int, default=10)
    p.add_argument("--eot", type=int, default=4)
    p.add_argument("--score-draws", type=int, default=8)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_dataset(args.dataset, image_size=args.image_size, download=args.download)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in SETTINGS}
    log = args.out / "tradeoff.jsonl"  # reason: one line per finished run, so an interrupted bench resumes
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for seed in args.seeds:
        for method in args.methods:
            if any(r["method"] == method and r["seed"] == seed and r.get("settings") == settings for r in done):
                continue
            done.append(run(method, seed, args, data) | {"settings": settings})
            with log.open("a") as f:
                f.write(json.dumps(done[-1]) + "\n")
            print(json.dumps(done[-1]), flush=True)
    results = [r for r in done if r["seed"] in args.seeds and r["method"] in args.methods
               and r.get("settings") == settings]
    (args.out / "tradeoff.json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                                         "results": results}, indent=2))
    table = summarise(results)
    (args.out / "tradeoff.md").write_text(table + "\n")
    plot(results, args.out / "tradeoff.png")
    print(table)


if __name__ == "__main__":
    main()
