"""Fine-tuning recipe: turn an existing clean-trained model into a dial, vs FLOAT training from scratch.

Under the digits threat model (eps 0.1) with the strong preset, per seed:

1. a standard model is trained with plain cross-entropy for ``--epochs`` epochs (the "existing model");
2. FLOAT from scratch: floatify.fit with the library defaults for ``--scratch-epochs`` epochs (default ``--epochs``);
3. FLOAT fine-tuning: the standard model is converted and floatify.fit runs for k ∈ ``--finetune-epochs`` epochs
   with learning rate ``--finetune-lr`` and batch size ``--finetune-batch`` (cosine, nothing frozen), and any other
   ``floatify.fit`` setting given as ``--finetune-set KEY=VALUE`` (e.g. ``adv_weight=0.9``, ``warmup_epochs=1``,
   ``optimizer=adamw``; the library's defaults otherwise).

Reported: clean and headline-robust accuracy at λ = 0 and λ = 1 (mean over seeds), the fewest fine-tuning epochs
that come within 1 point of the from-scratch dial at both ends (target ≤ 1/3 of the from-scratch epochs), and how
far the clean model's own accuracy moves at λ = 0 (target: within 1 point).

    python benchmarks/finetune.py [--seeds 0 1 2] [--finetune-epochs 2 3 5 8] [--finetune-batch 64]
        [--finetune-set KEY=VALUE ...] [--scratch-epochs N] [--preset quick]

Writes benchmarks/results/finetune.json and finetune.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import floatify
from floatify.attack_presets import PRESETS
from floatify.data import load_dataset
from floatify.models import create_model
from floatify.summary import param_groups
from floatify.train import TrainConfig

LAMS = [0.0, 1.0]


def fit_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` → (key, value) for floatify.fit: the value read as JSON (numbers, true/false), else as text."""
    key, sep, raw = text.partition("=")
    settings = sorted(set(TrainConfig.__dataclass_fields__) - {"epochs", "lr", "seed"})  # reason: own options
    if not sep or key not in settings:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE with KEY one of {', '.join(settings)} "
                                         "(epochs, lr and seed have options of their own)")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def train_standard(model, loader, epochs: int, lr: float) -> None:
    """Plain cross-entropy training with floatify.fit's optimizer and schedule (SGD nesterov, cosine)."""
    opt = torch.optim.SGD(param_groups(model, 5e-4), lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def scores(model, test, args) -> dict:
    report = floatify.evaluate(model, DataLoader(test, batch_size=512), lams=LAMS,
                               attacks=PRESETS[args.preset](args.eps), score_draws=args.score_draws, progress=False)
    return {str(v): {"clean": 100 * report.score(v, "clean").mean,
                     "robust": 100 * report.score(v, report.headline).mean} for v in LAMS} | {
        "headline": report.attacks[report.headline]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="test_resnet")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10, help="standard and from-scratch FLOAT training epochs")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--finetune-epochs", nargs="+", type=int, default=[2, 3, 5, 8])
    p.add_argument("--finetune-lr", type=float, default=0.1)
    p.add_argument("--finetune-batch", type=int, default=64,
                   help="fine-tuning batch size (standard and from-scratch runs use 64): a smaller batch takes more "
                        "optimizer steps per epoch for about the same work per epoch")
    p.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE", type=fit_setting,
                   help="a floatify.fit setting for the fine-tuning runs (a TrainConfig field; the value read as JSON, "
                        "else as text), e.g. adv_weight=0.9, warmup_epochs=1 or eps=0.125 (the training attack's "
                        "eps; the evaluation keeps --eps); repeatable")
    p.add_argument("--scratch-epochs", type=int, default=None, help="from-scratch FLOAT epochs (default: --epochs)")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--preset", choices=tuple(PRESETS), default="strong")
    p.add_argument("--score-draws", type=int, default=8)
    p.add_argument("--eval-limit", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    try:  # reason: a bad setting fails here in one line, not after the standard model has trained
        TrainConfig(**dict(args.finetune_set))
    except (TypeError, ValueError) as err:
        p.error(f"--finetune-set: {err}")
    torch.set_num_threads(2)
    data = load_dataset("digits", image_size=16, augment="none")  # reason: its recorded results are unaugmented
    test = Subset(data.test, range(min(args.eval_limit, len(data.test))))
    runs = []
    for seed in args.seeds:
        def loader(seed=seed, batch_size=64):
            return DataLoader(data.train, batch_size=batch_size, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(seed))

        torch.manual_seed(seed)
        standard = create_model(args.model, data.num_classes)
        t0 = time.perf_counter()
        train_standard(standard, loader(), args.epochs, args.lr)
        row = {"seed": seed, "standard_s": time.perf_counter() - t0,
               "standard": scores(floatify.convert(copy.deepcopy(standard)), test, args)["0.0"]}
        torch.manual_seed(seed)
        scratch = floatify.convert(create_model(args.model, data.num_classes))
        t0 = time.perf_counter()
        floatify.fit(scratch, loader(), epochs=args.scratch_epochs or args.epochs, lr=args.lr, seed=seed, eps=args.eps,
                     progress=False)
        row["scratch_s"], row["scratch"] = time.perf_counter() - t0, scores(scratch, test, args)
        row["finetune"] = {}
        for k in args.finetune_epochs:
            model = floatify.convert(copy.deepcopy(standard))
            t0 = time.perf_counter()
            floatify.fit(model, loader(batch_size=args.finetune_batch), epochs=k, lr=args.finetune_lr, seed=seed,
                         progress=False, **({"eps": args.eps} | dict(args.finetune_set)))
            seconds = time.perf_counter() - t0  # reason: training only, before the (much longer) evaluation
            row["finetune"][str(k)] = scores(model, test, args) | {"seconds": seconds}
        runs.append(row)
        print(json.dumps({"seed": seed, "standard": row["standard"], "scratch": row["scratch"],
                          "finetune": row["finetune"]}), flush=True)
    summary = summarise(runs, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune.json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs,
                                                         "summary": summary}, indent=2))
    (args.out / "finetune.md").write_text("\n".join(summary["table"]) + "\n")
    print("\n".join(summary["table"]))


def summarise(runs: list[dict], args) -> dict:
    mean = statistics.mean

    def cell(get) -> str:
        vals = [get(r) for r in runs]
        return f"{mean(v[0] for v in vals):.1f} / {mean(v[1] for v in vals):.1f}"

    def ends(s: dict) -> tuple[float, float, float, float]:
        return s["0.0"]["clean"], s["0.0"]["robust"], s["1.0"]["clean"], s["1.0"]["robust"]

    scratch = [mean(ends(r["scratch"])[i] for r in runs) for i in range(4)]
    batch = getattr(args, "finetune_batch", 64)
    scratch_epochs = getattr(args, "scratch_epochs", None) or args.epochs
    table = ["| model | epochs | batch | train s | λ=0 clean / robust | λ=1 clean / robust "
             "| worst gap to from-scratch (points) |",
             "|---|---|---|---|---|---|---|",
             f"| standard (the existing model) | {args.epochs} | 64 | {mean(r['standard_s'] for r in runs):.1f} | "
             f"{cell(lambda r: (r['standard']['clean'], r['standard']['robust']))} | | |",
             f"| FLOAT from scratch | {scratch_epochs} | 64 | {mean(r['scratch_s'] for r in runs):.1f} | "
             f"{cell(lambda r: ends(r['scratch'])[:2])} | {cell(lambda r: ends(r['scratch'])[2:])} | |"]
    enough = None
    for k in args.finetune_epochs:
        got = [mean(ends(r["finetune"][str(k)])[i] for r in runs) for i in range(4)]
        gap = min(g - s for g, s in zip(got, scratch))
        if gap >= -1.0 and enough is None:
            enough = k
        seconds = mean(r["finetune"][str(k)]["seconds"] for r in runs)
        table.append(f"| FLOAT fine-tuned from the standard model | {k} | {batch} | {seconds:.1f} | "
                     f"{cell(lambda r, k=k: ends(r['finetune'][str(k)])[:2])} | "
                     f"{cell(lambda r, k=k: ends(r['finetune'][str(k)])[2:])} | {gap:+.1f} |")
    std_clean = mean(r["standard"]["clean"] for r in runs)
    moves = {k: mean(r["finetune"][str(k)]["0.0"]["clean"] for r in runs) - std_clean for k in args.finetune_epochs}
    return {"table": table, "scratch": scratch, "epochs_within_1": enough, "clean_move_at_lam0": moves,
            "standard_clean": std_clean}


if __name__ == "__main__":
    main()
