"""Trade-off quality: is λ a dial? FLOAT variants vs dedicated models vs OAT/FiLM vs standard and PGD-AT.

Every method is trained with the same budget (epochs, batch, optimizer, PGD settings) under the digits threat
model (L∞ eps 0.1, where a standard model keeps almost nothing under attack) and evaluated at
λ ∈ {0, .1, .2, .3, .5, .7, 1} with an attack preset (``strong`` for decisions, ``quick`` for screening); the
robust number is the report's headline, the per-point worst case over the preset's attacks on the noisy model.

Methods:
* ``float-paired``: the library defaults (strategy "paired", its ``adv_weight``, ``bn_mix="interpolate"`` with the
  default ``bn_curve``); ``float-paired-linear``: the same with a linear BatchNorm mix (``bn_curve=1``);
  ``float-paired-w50``: the same with ``adv_weight=0.5``.
* ``float-<strategy>[-switch]`` (binary, oat, uniform): floatify.fit with that λ strategy and a linear BatchNorm
  mix; ``-switch`` keeps the reference dual BatchNorm (adversarial copy at every λ > 0).
* ``dedicated``: a family of models, each trained only at one operating point with the same loss
  (1-λ)·CE + λ·CE_adv (strategy "fixed") and evaluated there: OAT's anchor for "as good as a model trained
  for it".
* ``film-oat`` (OAT's FiLM conditioning, benchmarks/baselines.py), ``standard`` and ``pgd-at`` (one point each).

Per method: monotonicity (clean never rises, robust never falls with λ beyond the 95% CI) and coverage (the
largest step between neighbouring λ as a share of the total clean drop / robust gain; a dial keeps it ≤ 50%).

    python benchmarks/tradeoff.py --preset quick --seeds 0          # screening, minutes
    python benchmarks/tradeoff.py --seeds 0 1 2                     # the decision run (strong preset)

Every finished (method, seed[, λ]) run is appended to results/tradeoff.jsonl and reused when the command is run
again with the same settings (delete the file after changing the library).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import floatify
from floatify.attack_presets import PRESETS
from floatify.attacks import make_attack
from floatify.data import load_dataset
from floatify.losses import LamSampler
from floatify.models import create_model
from floatify.summary import param_groups

sys.path.insert(0, str(Path(__file__).parent))
from baselines import filmify  # noqa: E402

LAMS = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
SETTINGS = ("model", "dataset", "image_size", "epochs", "batch_size", "lr", "eps", "steps", "preset", "eval_steps",
            "eot", "score_draws", "eval_limit")  # a logged run is reused only if all of these match
# float-paired: the library defaults (strategy "paired", adv_weight, bn_curve); the other float-* variants keep a
# linear BatchNorm mix (bn_curve 1), as they were measured before bn_curve existed.
FLOAT_METHODS = ("float-paired", "float-paired-linear", "float-paired-w50") + tuple(
    f"float-{s}{m}" for s in ("binary", "oat", "uniform") for m in ("", "-switch"))
METHODS = FLOAT_METHODS + ("dedicated", "film-oat", "standard", "pgd-at")


def train_baseline(model, loader, method, epochs, lr, seed, eps, steps, device, step_size=2 / 255):
    """Standard, PGD-AT and OAT/FiLM training with the same optimizer/schedule as floatify.fit."""
    opt = torch.optim.SGD(param_groups(model, 5e-4), lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    sampler = LamSampler("oat", seed=seed)
    step = 0
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if method == "standard":
                loss = F.cross_entropy(model(x), y)
            elif method == "pgd-at":
                x_adv = make_attack(model, "pgd", eps, steps, step_size)(x, y)
                loss = F.cross_entropy(model(x_adv), y)
            else:  # film-oat: the OAT loss on the FiLM model
                loss = floatify.float_loss(model, x, y, sampler(step)[0], eps=eps, steps=steps, step_size=step_size)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1


def attacks(args):
    kwargs = {k: v for k, v in (("steps", args.eval_steps), ("eot_draws", args.eot)) if v is not None}
    return PRESETS[args.preset](args.eps, **kwargs)


def run(method, seed, args, data, lam=None, eval_context=contextlib.nullcontext) -> dict:
    torch.manual_seed(seed)
    base = create_model(args.model, data.num_classes).to(args.device)
    loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    step_size = 2.5 * args.eps / args.steps
    t0 = time.perf_counter()
    common = dict(epochs=args.epochs, lr=args.lr, seed=seed, eps=args.eps, steps=args.steps, step_size=step_size,
                  progress=False)
    if method.startswith("float-"):
        strategy = method.split("-")[1]
        mix = "switch" if method.endswith("-switch") else "interpolate"
        curve = {} if method in ("float-paired", "float-paired-w50") else {"bn_curve": 1.0}
        weight = {"adv_weight": 0.5} if method == "float-paired-w50" else {}
        model = floatify.convert(base, floatify.FloatConfig(bn_mix=mix, **curve))
        floatify.fit(model, loader, strategy=strategy, **weight, **common)
    elif method == "dedicated":  # reason: one model per operating point, BatchNorm not shared across λ
        model = floatify.convert(base, floatify.FloatConfig(bn_mix="switch"))
        floatify.fit(model, loader, strategy="fixed", fixed_lam=lam, **common)
    else:
        model = filmify(copy.deepcopy(base)) if method == "film-oat" else base
        train_baseline(model, loader, method, args.epochs, args.lr, seed, args.eps, args.steps, args.device,
                       step_size)
        model = floatify.convert(model) if method != "film-oat" else model  # reason: evaluate() at λ = 0
    train_s = time.perf_counter() - t0
    test = data.test if args.eval_limit is None else Subset(data.test, range(args.eval_limit))
    lams = [lam] if method == "dedicated" else LAMS if method not in ("standard", "pgd-at") else [0.0]
    t1 = time.perf_counter()
    with eval_context():
        report = floatify.evaluate(model, DataLoader(test, batch_size=512), lams=lams, attacks=attacks(args),
                                   score_draws=args.score_draws, progress=False)
    noise_off = next(a.label for a in attacks(args) if not a.noise)
    return {"method": method, "seed": seed, "lam": lam, "train_s": train_s, "eval_s": time.perf_counter() - t1,
            "clean": {str(v): report.score(v, "clean").mean for v in lams},
            "robust": {str(v): report.score(v, report.headline).mean for v in lams},
            "robust_ci": {str(v): report.score(v, report.headline).ci95 for v in lams},
            "clean_ci": {str(v): report.score(v, "clean").ci95 for v in lams},
            "noise_off": {str(v): report.score(v, noise_off).mean for v in lams},
            "headline": report.attacks[report.headline], "attacks": report.attacks,
            "score_draws": args.score_draws, "eval_points": len(test)}


def merge_dedicated(rows: list[dict]) -> list[dict]:
    """One 'dedicated' row per seed, gathering its per-λ models."""
    out, by_seed = [r for r in rows if r["method"] != "dedicated"], {}
    for r in rows:
        if r["method"] == "dedicated":
            merged = by_seed.setdefault(r["seed"], {"method": "dedicated", "seed": r["seed"], "train_s": 0.0})
            merged["train_s"] += r["train_s"]
            for key in ("clean", "robust", "robust_ci", "clean_ci", "noise_off"):
                merged.setdefault(key, {}).update(r[key])
    for merged in by_seed.values():
        for key in ("clean", "robust", "robust_ci", "clean_ci", "noise_off"):
            merged[key] = {str(v): merged[key][str(v)] for v in LAMS if str(v) in merged[key]}
        out.append(merged)
    return out


def curve(rows: list[dict], key: str) -> tuple[list[float], list[float], list[float]]:
    """λ, mean over seeds, and the 95% CI of that mean (per-run CIs combined) for one method."""
    lams = [v for v in rows[0][key]]
    means = [statistics.mean(r[key][v] for r in rows) for v in lams]
    cis = [math.sqrt(sum(r[key + "_ci"][v] ** 2 for r in rows)) / len(rows) for v in lams]
    return [float(v) for v in lams], means, cis


def dial_metrics(rows: list[dict]) -> dict:
    """Monotonicity violations and coverage (largest neighbouring step as a share of the total change)."""
    out = {}
    for key, sign in (("clean", -1), ("robust", +1)):
        lams, m, ci = curve(rows, key)
        if len(lams) < 2:
            return {}
        wrong = [f"{lams[i]:g}→{lams[i + 1]:g}" for i in range(len(m) - 1)
                 if sign * (m[i + 1] - m[i]) < -math.hypot(ci[i], ci[i + 1])]
        total = sign * (m[-1] - m[0])
        steps = [sign * (m[i + 1] - m[i]) for i in range(len(m) - 1)]
        out[key] = {"violations": wrong, "total": total,
                    "largest_step_share": max(steps) / total if total > 0 else float("nan")}
    return out


def summarise(results: list[dict], methods) -> str:
    lines = ["| method | " + " | ".join(f"λ={v:g}" for v in LAMS) + " | clean: monotone / largest step | "
             "robust: monotone / largest step | train s |", "|---|" + "---|" * (len(LAMS) + 3)]
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)  # noqa: E731
        cells = []
        for v in LAMS:
            if str(v) not in rows[0]["clean"]:
                cells.append("")
                continue
            c = [100 * r["clean"][str(v)] for r in rows]
            a = [100 * r["robust"][str(v)] for r in rows]
            cells.append(f"{statistics.mean(c):.1f}±{sd(c):.1f} / {statistics.mean(a):.1f}±{sd(a):.1f}")
        dm = dial_metrics(rows)
        fmt = (lambda d: f"{'yes' if not d['violations'] else 'no (' + ', '.join(d['violations']) + ')'} / "  # noqa: E731
                         f"{100 * d['largest_step_share']:.0f}% of {100 * d['total']:.1f}")
        extra = [fmt(dm["clean"]), fmt(dm["robust"])] if dm else ["", ""]
        train = statistics.median(r["train_s"] for r in rows)
        lines.append(f"| {method} | " + " | ".join(cells + extra) + f" | {train:.0f} |")
    return "\n".join(lines)


def plot(results: list[dict], methods, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue
        lams, c, _ = curve(rows, "clean")
        _, a, _ = curve(rows, "robust")
        style = dict(marker="o" if len(lams) > 1 else "*", markersize=5 if len(lams) > 1 else 12, label=method,
                     linestyle="--" if method == "dedicated" else "-", linewidth=2.2 if method == "dedicated" else 1.2)
        axes[0].plot([100 * v for v in c], [100 * v for v in a], **style)
        if len(lams) > 1:
            axes[1].plot(lams, [100 * v for v in c], **style)
            axes[2].plot(lams, [100 * v for v in a], **style)
    for ax, (xl, yl) in zip(axes, [("clean accuracy (%)", "robust accuracy (%)"), ("λ", "clean accuracy (%)"),
                                   ("λ", "robust accuracy (%), headline")]):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="test_resnet")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--download", action="store_true")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--preset", choices=tuple(PRESETS), default="strong")
    p.add_argument("--eval-steps", type=int, default=None, help="attack iterations (default: the preset's)")
    p.add_argument("--eot", type=int, default=None, help="EOT draws per iteration (default: the preset's)")
    p.add_argument("--score-draws", type=int, default=8)
    p.add_argument("--eval-limit", type=int, default=200)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--tag", default="tradeoff", help="output file stem (e.g. tradeoff-screen)")
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_dataset(args.dataset, image_size=args.image_size, download=args.download,
                        augment="none")  # reason: its recorded results are unaugmented
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in SETTINGS}
    log = args.out / f"{args.tag}.jsonl"  # reason: one line per finished run, so an interrupted bench resumes
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for seed in args.seeds:
        for method in args.methods:
            for lam in (LAMS if method == "dedicated" else [None]):
                if any(r["method"] == method and r["seed"] == seed and r.get("lam") == lam
                       and r.get("settings") == settings for r in done):
                    continue
                done.append(run(method, seed, args, data, lam) | {"settings": settings})
                with log.open("a") as f:
                    f.write(json.dumps(done[-1]) + "\n")
                print(json.dumps({k: done[-1][k] for k in ("method", "seed", "lam", "clean", "robust", "train_s",
                                                            "eval_s")}), flush=True)
    results = merge_dedicated([r for r in done if r["seed"] in args.seeds and r["method"] in args.methods
                               and r.get("settings") == settings])
    metrics = {m: dial_metrics([r for r in results if r["method"] == m]) for m in args.methods
               if any(r["method"] == m for r in results)}
    (args.out / f"{args.tag}.json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                                           "results": results, "dial": metrics}, indent=2))
    table = summarise(results, args.methods)
    (args.out / f"{args.tag}.md").write_text(table + "\n")
    plot(results, args.methods, args.out / f"{args.tag}.png")
    print(table)


if __name__ == "__main__":
    main()
