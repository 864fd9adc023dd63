"""Attack strength and convergence: robust accuracy vs iterations and vs EOT draws, and the cost of each preset.

On one FLOAT model trained on the embedded digits under the default threat model (eps 0.1), at λ = 1 (the most
randomised point) and λ = 0 (deterministic), this measures PGD-CE (EOT), APGD-CE, APGD-DLR and their ensemble
(per point worst case, re-scored with fresh draws):

* vs iterations (10, 25, 50, 100, 200) at a fixed number of draws,
* vs draws (1, 5, 10, 20, 40) at a fixed number of iterations,
* the candidate strong setting against twice its iterations and draws (Carlini et al.'s convergence check)
  and against AutoAttack-'rand''s 100 iterations × 20 draws,
* seconds per 100 points of the quick and strong presets at one λ > 0.

    python benchmarks/attack_strength.py                        # ~15 min on 2 CPU cores

Writes benchmarks/results/attack_strength.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import floatify
from floatify.attack_presets import quick, strong
from floatify.attacks import AttackSpec, attack_and_score
from floatify.data import load_dataset
from floatify.headline import worst_case
from floatify.models import create_model


def spec_for(kind: str, eps: float, steps: int, draws: int) -> AttackSpec:
    """PGD-CE (EOT-PGD with several draws), APGD-CE or APGD-DLR."""
    if kind == "pgd-ce":
        return AttackSpec("eot-pgd" if draws > 1 else "pgd", eps, steps, eot_draws=draws)
    return AttackSpec(kind, eps, steps, eot_draws=draws)


def measure(model, x, y, lam, eps, steps, draws, score_draws) -> dict:
    """Each attack's robust accuracy (and seconds), and the APGD-CE + APGD-DLR ensemble's (per-point worst case)."""
    out, candidates = {}, []
    for kind in ("pgd-ce", "apgd-ce", "apgd-dlr"):
        t0 = time.perf_counter()
        x_adv, c = attack_and_score(model, spec_for(kind, eps, steps, draws), x, y, lam, score_draws)
        out[kind] = c.mean().item()
        out[kind + "_s"] = time.perf_counter() - t0
        if kind != "pgd-ce":
            candidates.append((x_adv, c))
    _, c, _ = worst_case(model, candidates, x, y, lam, score_draws)
    out["ensemble (apgd-ce+dlr)"] = c.mean().item()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="test_resnet")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--points", type=int, default=150)
    p.add_argument("--score-draws", type=int, default=16)
    p.add_argument("--iterations", nargs="+", type=int, default=[10, 25, 50, 100, 200])
    p.add_argument("--draws", nargs="+", type=int, default=[1, 5, 10, 20, 40],
                   help="the draw sweep (the fixed-draws value is taken from the iteration sweep)")
    p.add_argument("--fixed-draws", type=int, default=10, help="draws during the iteration sweep")
    p.add_argument("--fixed-iterations", type=int, default=50, help="iterations during the draw sweep")
    p.add_argument("--candidate", nargs=2, type=int, default=[50, 10], help="strong-preset candidate: iters draws")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/attack_strength.json"))
    p.add_argument("--cost-only", action="store_true",
                   help="re-time the presets only (on a quiet machine) and update the cost section of --out")
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("digits", image_size=16, augment="none")  # reason: its recorded results are unaugmented
    torch.manual_seed(0)
    model = floatify.convert(create_model(args.model, data.num_classes))
    loader = DataLoader(data.train, batch_size=64, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    floatify.fit(model, loader, epochs=args.epochs, eps=args.eps, steps=7, step_size=2.5 * args.eps / 7,
                 progress=False)
    train_s = time.perf_counter() - t0
    model.eval()
    x, y = next(iter(DataLoader(Subset(data.test, range(args.points)), batch_size=args.points)))
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "train_s": train_s, "points": args.points,
              "score_draws": args.score_draws, "vs_iterations": {}, "vs_draws": {}, "check": {}, "cost": {}}
    if args.cost_only:
        result = json.loads(args.out.read_text()) | {"cost": {}}

    def log(section, key, row):
        result[section][key] = row
        print(section, key, json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)

    for lam in (1.0, 0.0) if not args.cost_only else ():
        for n in args.iterations if lam > 0 else [10, 50, 100]:
            log("vs_iterations", f"lam={lam:g} iters={n}",
                measure(model, x, y, lam, args.eps, n, args.fixed_draws if lam > 0 else 1, args.score_draws))
    for d in args.draws if not args.cost_only else ():
        key = f"lam=1 iters={args.fixed_iterations}"
        if d == args.fixed_draws and key in result["vs_iterations"]:  # reason: already measured, same setting
            result["vs_draws"][f"lam=1 draws={d}"] = result["vs_iterations"][key]
            continue
        log("vs_draws", f"lam=1 draws={d}", measure(model, x, y, 1.0, args.eps, args.fixed_iterations, d,
                                                    args.score_draws))
    n, d = args.candidate
    checks = {"candidate": (n, d), "doubled": (2 * n, 2 * d), "autoattack-rand": (100, 20)}
    for label, (ni, di) in checks.items() if not args.cost_only else ():
        same = next((k for k, v in checks.items() if v == (ni, di) and f"check {k}" in result["check"]), None)
        if same is not None:  # reason: the doubled candidate can be AutoAttack-rand's setting itself
            result["check"][f"check {label}"] = result["check"][f"check {same}"]
            continue
        log("check", f"check {label}", measure(model, x, y, 1.0, args.eps, ni, di, args.score_draws) |
            {"iterations": ni, "draws": di})
    sub = DataLoader(Subset(data.test, range(100)), batch_size=100)
    result["cost_note"] = "timed alone" if args.cost_only else "timed right after the sweeps (other load possible)"
    for name, specs in {"quick": quick(args.eps), f"strong {n}x{d}": strong(args.eps, n, d),
                        "strong 100x20": strong(args.eps, 100, 20)}.items():
        t0 = time.perf_counter()
        floatify.evaluate(model, sub, lams=[1.0], attacks=specs, score_draws=8, progress=False)
        log("cost", name, {"seconds_per_100_points_per_lam": time.perf_counter() - t0})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
