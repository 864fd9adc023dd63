"""Does the noise bank weaken the defence? The default recipe with bank noise vs today's fresh draws.

The weight noise now comes from a pre-drawn Gaussian bank read at random offsets (:mod:`floatify.layers.noise`).
This benchmark trains the default method (``float-paired``) under the trade-off benchmark's exact settings
(test_resnet on digits, eps 0.1, strong preset: EOT-PGD 50 steps × 10 draws, 200 points, 3 seeds) with the bank
and scores it under the same strong EOT attack twice: with bank noise (what a user gets) and with fresh
``torch.randn`` draws (the same model, the reference distribution). The reference is the ``float-paired`` rows
of ``benchmarks/results/tradeoff.jsonl`` (fresh draws in training and evaluation, before the bank existed).
Every λ's mean must stay within the seed spread (max − min over seeds) of that reference; reported both ways:
within it (two-sided) and not below it (the defence not weakened).

    python benchmarks/noise_source.py [--seeds 0 1 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch

from floatify.data import load_dataset
from floatify.layers.noise import noise_source

sys.path.insert(0, str(Path(__file__).parent))
import tradeoff  # noqa: E402

METHOD = "float-paired"


def _defaults() -> argparse.Namespace:
    """The trade-off benchmark's defaults (its settings key the reference rows)."""
    return argparse.Namespace(model="test_resnet", dataset="digits", image_size=16, epochs=10, batch_size=64, lr=0.1,
                              eps=0.1, steps=7, preset="strong", eval_steps=None, eot=None, score_draws=8,
                              eval_limit=200, device="cuda" if torch.cuda.is_available() else "cpu")


def summary(rows: list[dict], reference: list[dict]) -> dict:
    lams = list(rows[0]["clean"])
    out: dict = {"lams": lams, "seeds": sorted(r["seed"] for r in rows), "attack": rows[0]["headline"]}
    for variant in ("bank", "bank-model-fresh-eval"):
        for metric in ("clean", "robust"):
            key = metric if variant == "bank" else f"{metric}_fresh_eval"
            out[f"{variant}/{metric}"] = {v: 100 * statistics.mean(r[key][v] for r in rows) for v in lams}
    for metric in ("clean", "robust"):
        out[f"reference/{metric}"] = {v: 100 * statistics.mean(r[metric][v] for r in reference) for v in lams}
        out[f"reference/{metric}_spread"] = {
            v: 100 * (max(r[metric][v] for r in reference) - min(r[metric][v] for r in reference)) for v in lams}
        diff = {v: out[f"bank/{metric}"][v] - out[f"reference/{metric}"][v] for v in lams}
        out[f"bank_minus_reference/{metric}"] = diff
        out[f"within_spread/{metric}"] = all(abs(diff[v]) <= out[f"reference/{metric}_spread"][v] for v in lams)
        out[f"not_below_spread/{metric}"] = all(diff[v] >= -out[f"reference/{metric}_spread"][v] for v in lams)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    cli = p.parse_args()
    args = _defaults()
    torch.set_num_threads(2)
    settings = {k: getattr(args, k) for k in tradeoff.SETTINGS}
    ref_log = cli.out / "tradeoff.jsonl"
    reference = [r for r in map(json.loads, ref_log.read_text().splitlines())
                 if r["method"] == METHOD and r.get("settings") == settings and r["seed"] in cli.seeds]
    if len(reference) != len(cli.seeds):
        sys.exit(f"error: {ref_log} lacks {METHOD} rows for seeds {cli.seeds} under today's settings; "
                 f"run benchmarks/tradeoff.py --methods {METHOD} first")
    data = load_dataset(args.dataset, image_size=args.image_size, augment="none")  # reason: as its reference rows
    log = cli.out / "noise_source.jsonl"  # reason: one line per finished seed, so an interrupted run resumes
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for seed in cli.seeds:
        if any(r["seed"] == seed and r["settings"] == settings for r in done):
            continue
        with noise_source("bank"):
            bank = tradeoff.run(METHOD, seed, args, data)
            fresh_eval = tradeoff.run(METHOD, seed, args, data,  # reason: the same training, re-run (deterministic)
                                      eval_context=functools.partial(noise_source, "fresh"))
        row = bank | {"clean_fresh_eval": fresh_eval["clean"], "robust_fresh_eval": fresh_eval["robust"],
                      "settings": settings}
        done.append(row)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("seed", "clean", "robust", "robust_fresh_eval")}), flush=True)
    rows = [r for r in done if r["seed"] in cli.seeds and r["settings"] == settings]
    result = summary(rows, reference)
    (cli.out / "noise_source.json").write_text(json.dumps(result, indent=2))
    for key in ("reference/robust", "bank/robust", "bank-model-fresh-eval/robust", "reference/robust_spread",
                "reference/clean", "bank/clean"):
        print(f"{key:32s} " + " ".join(f"{result[key][v]:5.1f}" for v in result["lams"]))
    print("within the reference's seed spread:", {m: result[f"within_spread/{m}"] for m in ("clean", "robust")},
          "not below it:", {m: result[f"not_below_spread/{m}"] for m in ("clean", "robust")})


if __name__ == "__main__":
    main()
