"""Your data through floatify's pipeline: does reading image files keep up, and what does augmentation buy?

Writes the embedded digits (the same stratified 80/20 split, 16 px, RGB) as PNG files into an ImageFolder
(``train/<digit>/*.png`` + ``val/<digit>/*.png``), then:

(a) speed: one training epoch (``floatify.fit``, the demo's model, batch and recipe, ``augment="none"`` for
    both so the work per image is the same) from the PNG folder with 2 loader workers vs from the in-memory
    tensors; median of 3, the two interleaved. Target: PNG / in-memory ≤ 1.15.
(b) augmentation: ``floatify train`` on the PNG folder with ``--augment crop`` (the digits rule: random crop with
    padding, no flip) vs ``--augment none``, 3 seeds, the settings of ``make demo`` (resnet18, eps 0.1, 16 px, batch
    64) but the quick preset (10 steps, 2 draws); clean and robust (the report's headline, worst case over the
    attacks) at λ = 0, 1.
(c) torchrun: the ``--augment crop`` runs of (b) again under ``torchrun --nproc-per-node 2`` (gloo on CPU), batch
    32 per process (the same 64 per step); both must finish and agree with (b) within the seed spread.

Writes benchmarks/results/data_pipeline.json. ``--quick``: a smoke run (tiny model, data and epochs; numbers
meaningless).

    python benchmarks/data_pipeline.py [--quick] [--device cpu] [--out benchmarks/results/data_pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Subset

import floatify
from floatify.cli import main as cli_main
from floatify.data import default_eps, load_dataset, make_loader
from floatify.io import atomic_write
from floatify.models import create_model, model_data_config

SEEDS = (0, 1, 2)
LAMS = ("0.0", "1.0")


def write_digits_folder(root: Path, image_size: int, per_class: int | None = None) -> int:
    """The digits' train/test split as PNG files under ``root/train`` and ``root/val`` (at most ``per_class`` images
    of each digit per split); returns the file count."""
    data = load_dataset("digits", image_size=image_size, augment="none")
    count = 0
    for split, dataset in (("train", data.train), ("val", data.test)):
        images, labels = dataset.tensors
        for i in range(len(labels)):
            folder = root / split / str(int(labels[i]))
            if per_class is not None and int((labels[:i] == labels[i]).sum()) >= per_class:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (images[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{i:05d}.png")
            count += 1
    return count


def _epoch_seconds(dataset, workers: int, args, cfg: floatify.TrainConfig) -> float:
    torch.manual_seed(0)
    model = floatify.convert(create_model(args.model, 10)).to(args.device)
    loader = make_loader(dataset, args.batch_size, workers=workers, device=args.device, seed=0)
    start = time.perf_counter()
    floatify.fit(model, loader, cfg, progress=False)
    return time.perf_counter() - start


def time_pipelines(root: Path, args) -> dict:
    """(a): one epoch from the PNG folder (2 workers) vs the in-memory tensors, median of 3, interleaved."""
    memory = load_dataset("digits", image_size=args.image_size, augment="none").train
    files = load_dataset(f"imagefolder:{root}", image_size=args.image_size, augment="none",
                         data_config=model_data_config(args.model)).train
    if args.quick:
        memory, files = Subset(memory, range(len(files))), files
    cfg = floatify.TrainConfig(epochs=1, eps=0.1, steps=args.steps)
    seconds: dict[str, list[float]] = {"memory": [], "png_workers2": []}
    for _ in range(args.repeats):
        seconds["memory"].append(_epoch_seconds(memory, 0, args, cfg))
        seconds["png_workers2"].append(_epoch_seconds(files, 2, args, cfg))
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    return {"seconds": seconds, "median_s": medians, "ratio_png_over_memory": medians["png_workers2"] /
            medians["memory"], "target": 1.15, "train_points": len(memory)}


def _scores(metrics: dict) -> dict:
    headline = metrics["headline"]
    return {lam: {"clean": metrics["scores"][lam]["clean"]["mean"], "robust": metrics["scores"][lam][headline]["mean"]}
            for lam in LAMS}


def _train_argv(root: Path, out: Path, seed: int, augment: str, args, batch_size: int) -> list[str]:
    return ["train", "--out", str(out), "--model", args.model, "--dataset", f"imagefolder:{root}",
            "--image-size", str(args.image_size), "--eps", str(default_eps("digits")), "--seed", str(seed),
            "--augment", augment, "--workers", "2", "--eval-attacks", "quick", "--eval-steps", str(args.eval_steps),
            "--eot-draws", str(args.eot_draws), "--eval-limit", str(args.eval_limit), "--lams", "0,1",
            "--no-progress", "--device", args.device, "--batch-size", str(batch_size)] + args.extra


def _mean(rows: list[dict]) -> dict:
    return {lam: {m: statistics.mean(r[lam][m] for r in rows) for m in ("clean", "robust")} for lam in LAMS}


def _spread(rows: list[dict]) -> dict:
    return {lam: {m: (max(r[lam][m] for r in rows) - min(r[lam][m] for r in rows)) for m in ("clean", "robust")}
            for lam in LAMS}


def train_runs(root: Path, work: Path, args) -> dict:
    """(b) and (c): single-process --augment crop and none, and 2-process torchrun --augment crop, per seed."""
    runs: dict[str, list[dict]] = {"crop": [], "none": [], "crop, torchrun 2 processes": []}
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for seed in args.seeds:
        for name in runs:
            out = work / f"{name.split(',')[0]}-{'ddp' if 'torchrun' in name else 'one'}-{seed}"
            start = time.perf_counter()
            if "torchrun" in name:
                argv = _train_argv(root, out, seed, "crop", args, args.batch_size // 2)
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       "-m", "floatify"] + argv
                code = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
            else:
                code = cli_main(_train_argv(root, out, seed, name, args, args.batch_size))
            if code != 0:
                raise SystemExit(f"floatify train failed for {name} --seed {seed}")
            seconds[name].append(time.perf_counter() - start)
            runs[name].append(_scores(json.loads((out / "report.json").read_text())))
    return {"per_seed": runs, "mean": {k: _mean(v) for k, v in runs.items()},
            "spread": {k: _spread(v) for k, v in runs.items()}, "seconds": seconds, "seeds": list(args.seeds),
            "attack": f"quick preset, {args.eval_steps} steps, {args.eot_draws} EOT draws, eps 0.1, "
                      f"{args.eval_limit} points"}


def _arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny model, data and epochs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/data_pipeline.json"))
    args = p.parse_args()
    # the training settings of `make demo` (resnet18 on digits, 16 px, batch 64); the quick preset on all 360 points
    args.model, args.image_size, args.batch_size, args.steps = "resnet18", 16, 64, 7
    args.eval_steps, args.eot_draws, args.eval_limit, args.seeds, args.repeats = 10, 2, 360, SEEDS, 3
    args.extra, args.limit = [], None
    if args.quick:
        args.model, args.steps, args.eval_steps, args.eot_draws, args.eval_limit = "resnet10t", 1, 2, 2, 16
        args.seeds, args.repeats, args.limit = (0,), 1, 4
        args.extra = ["--epochs", "1", "--batch-size", "16", "--steps", "1", "--eval-batch-size", "16"]
        args.batch_size = 16
    return args


def run() -> None:
    args = _arguments()
    with tempfile.TemporaryDirectory(prefix="floatify-data-pipeline-") as tmp:
        root = Path(tmp) / "digits-png"
        files = write_digits_folder(root, args.image_size, args.limit)
        print(f"wrote {files} PNG files under {root}")
        speed = time_pipelines(root, args)
        print(f"(a) one epoch: in-memory {speed['median_s']['memory']:.1f}s, PNG + 2 workers "
              f"{speed['median_s']['png_workers2']:.1f}s: ratio {speed['ratio_png_over_memory']:.2f} (target ≤ 1.15)")
        augmentation = train_runs(root, Path(tmp) / "runs", args)
    for augment, scores in augmentation["mean"].items():
        print(f"(b/c) {augment}: " + ", ".join(
            f"λ={lam[0]}: clean {s['clean']:.3f} robust {s['robust']:.3f}" for lam, s in scores.items()))
    result = {"quick": args.quick, "device": args.device, "model": args.model, "image_size": args.image_size,
              "files": files, "speed": speed, "augmentation": augmentation}
    atomic_write(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(run())
