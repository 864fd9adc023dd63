"""The evaluation audit (floatify.audit) on the default digits model, on two masked models, and what it costs.

    python benchmarks/audit.py                 # the lead runs it alone on a quiet machine
    python benchmarks/audit.py --limit 8 --eval-steps 2 --eot-draws 2 --repeats 1   # a smoke run (seconds)

(a) audits the default digits model (runs/demo, the model ``make demo`` trains; trained here with the same command
when absent) at every evaluated λ; (b) audits the same model behind an input quantisation (``round(4x)/4``, no
straight-through: zero input gradients) and behind a logit temperature of 1e4 (a saturated softmax), both of which
must be flagged; (c) times the evaluation alone against the evaluation with the default audit (the dial's ends and
middle), interleaved, and reports the medians and the audit's share, in seconds and in model passes. Every
evaluation is the strong preset on the first --limit test points at the training eps.

Writes benchmarks/results/audit.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

import floatify
from floatify.audit import AuditConfig, verdict
from floatify.audit_subject import PassCounter
from floatify.data import load_dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from audit_models import InputQuantisation, Temperature  # noqa: E402  (the masked models the tests flag)

PARTS = ("every", "masked", "cost")  # (a), (b), (c) of the module docstring
SAME = ("limit", "lams", "eval_steps", "eot_draws", "audit_steps", "audit_draws", "square_queries")
DEMO = ["--model", "resnet18", "--dataset", "digits", "--eval-attacks", "strong", "--eval-steps", "20", "--eot-draws",
        "5", "--eval-limit", "200", "--no-progress"]  # the Makefile's demo command


# the masked models of (b): name, wrapper, the evaluation's attacks
MASKED: tuple[tuple[str, type[nn.Module], str], ...] = (
    ("input quantisation round(4x)/4", InputQuantisation, "strong"), ("logit temperature x1e4", Temperature, "strong"),
    ("logit temperature x1e4", Temperature, "quick"))


def demo_model(folder: Path, epochs: int | None) -> tuple[nn.Module, dict]:
    """runs/demo (or ``folder``) loaded; trained first with the demo's command when it is not there."""
    from floatify.artifact import read_config
    from floatify.cli import main as cli

    if not (folder / "model.safetensors").exists():
        argv = ["train", "--out", str(folder), *DEMO] + (["--epochs", str(epochs)] if epochs else [])
        if cli(argv) != 0:
            raise SystemExit(f"training the demo model into {folder} failed")
    return floatify.load(folder).eval(), read_config(folder)


def test_data(config: dict):
    """The test split the model was trained beside (as ``floatify eval`` reads it)."""
    training = config["training"]
    return load_dataset(training["dataset"], image_size=training["image_size"], seed=training.get("seed", 0),
                        augment="none", val_split=training.get("val_split"),
                        data_config=training.get("data_config")).test


def audited(model, data, args, lams, attacks, audit: AuditConfig) -> dict:
    torch.manual_seed(0)
    report = floatify.evaluate(model, data, lams=lams, attacks=attacks, eps=args.eps, steps=args.eval_steps,
                               eot_draws=args.eot_draws, limit=args.limit, progress=False, audit=audit)
    label = report.robust_label()
    assert report.audit is not None and label is not None
    headline = {f"{v:g}": report.score(v, label) for v in report.lams}
    return {"verdict": verdict(report.audit), "flagged": [c.name for c in report.audit if c.passed is False],
            "headline_pct": {v: None if s is None else round(100 * s.mean, 2) for v, s in headline.items()},
            "checks": [asdict(c) for c in report.audit]}


def timed(model, data, args, audit: AuditConfig | bool) -> tuple[float, float]:
    """Seconds and model passes (forwards of the --limit points, a backward counted as two) of one evaluation."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with PassCounter(model) as counter:
        floatify.evaluate(model, data, lams=args.lams, eps=args.eps, steps=args.eval_steps, eot_draws=args.eot_draws,
                          limit=args.limit, progress=False, audit=audit)
    return time.perf_counter() - t0, counter.passes(args.limit)


def measure_cost(model: nn.Module, data, args: argparse.Namespace, config: AuditConfig) -> dict:
    """The evaluation alone and with the audit, interleaved; medians and the audit's share."""
    plain, with_audit = [], []
    for _ in range(args.repeats):  # reason: interleaved, so a slow spell of the machine hits both alike
        plain.append(timed(model, data, args, False))
        with_audit.append(timed(model, data, args, config))
    eval_s, total_s = statistics.median(t for t, _ in plain), statistics.median(t for t, _ in with_audit)
    eval_passes, audit_passes = plain[0][1], with_audit[0][1] - plain[0][1]  # reason: counts do not vary by round
    print(f"audit {total_s - eval_s:.1f} s vs evaluation {eval_s:.1f} s: {(total_s - eval_s) / eval_s:.2f}×; "
          f"model passes {audit_passes:.0f} vs {eval_passes:.0f}: {audit_passes / eval_passes:.2f}×")
    return {"eval_s": [t for t, _ in plain], "eval_with_audit_s": [t for t, _ in with_audit], "eval_median_s": eval_s,
            "audit_median_s": total_s - eval_s, "audit_over_eval": (total_s - eval_s) / eval_s,
            "eval_passes": eval_passes, "audit_passes": audit_passes,
            "audit_over_eval_passes": audit_passes / eval_passes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=ROOT / "runs" / "demo")
    p.add_argument("--train-epochs", type=int, default=None, help="when training the demo model: fewer epochs "
                                                                   "(a shorter training; the JSON says so)")
    p.add_argument("--limit", type=int, default=100, help="test points evaluated and audited")
    p.add_argument("--lams", type=float, nargs="+", default=list(floatify.EvalConfig.lams))
    p.add_argument("--eval-steps", type=int, default=None, help="the evaluation's iterations (default: strong's)")
    p.add_argument("--eot-draws", type=int, default=None, help="the evaluation's draws (default: strong's)")
    p.add_argument("--audit-steps", type=int, default=AuditConfig.steps)
    p.add_argument("--audit-draws", type=int, default=AuditConfig.eot_draws)
    p.add_argument("--square-queries", type=int, default=AuditConfig.square_queries)
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (medians)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "audit.json")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="what to measure; the other parts are kept from --out (same settings required)")
    args = p.parse_args()
    kept = json.loads(args.out.read_text()) if set(args.parts) != set(PARTS) else {}
    if kept and any(kept["args"].get(k) != v for k, v in vars(args).items() if k in SAME):
        raise SystemExit(f"audit.py --parts: {args.out} was measured with other settings; run every part")
    torch.set_num_threads(2)
    trained_here = not (args.model_dir / "model.safetensors").exists()
    model, config = demo_model(args.model_dir, args.train_epochs)
    args.eps = config["training"]["eps"]
    data = test_data(config)
    settings = {"subset": args.limit, "steps": args.audit_steps, "eot_draws": args.audit_draws,
                "square_queries": args.square_queries}
    every, masked, cost = kept.get("every_lam"), kept.get("masked", []), kept.get("cost")
    if "every" in args.parts:
        every = audited(model, data, args, args.lams, "strong", AuditConfig(lams=tuple(args.lams), **settings))
        print("every λ:", every["verdict"])
    if "masked" in args.parts:
        masked = []
    for name, wrap, attacks in MASKED if "masked" in args.parts else ():
        row = {"model": name, "attacks": attacks,
               **audited(wrap(model).eval(), data, args, [0.0, 1.0], attacks, AuditConfig(**settings))}
        print(f"{name} ({attacks}):", row["verdict"])
        masked.append(row)
    if "cost" in args.parts:
        cost = measure_cost(model, data, args, AuditConfig(**settings))
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "parts"},
              "model": {"folder": str(args.model_dir), "trained_here": trained_here,
                        "epochs": config["training"].get("epochs_trained"), "eps": args.eps},
              "every_lam": every, "masked": masked, "cost": cost}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
