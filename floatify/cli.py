"""Command line: ``floatify train`` and ``floatify eval``.

    floatify train --model resnet18 --dataset digits --epochs 4 --out runs/demo
    floatify eval --checkpoint runs/demo/model.safetensors

``train`` converts a timm or torchvision model by name, trains it with FLOAT, evaluates the trade-off
across λ and writes ``model.safetensors``, ``report.md``, ``metrics.json`` and ``tradeoff.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

RUN_FILES = ("model.safetensors", "metrics.json", "report.md", "tradeoff.png", "train_state.safetensors",
             "train_state.pt", "history.json", "adversarial.safetensors")
STATE_FILES = ("train_state.safetensors", "train_state.pt")
_STAGING_RE = re.compile(r"^\.floatify-staging-(\d+)-[0-9a-f]{16}$")


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def _lam_list(text: str) -> list[float]:
    from floatify.context import validate_lam

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lams must be comma-separated numbers in [0, 1], got '{text}'") from None
    try:
        return [validate_lam(v, "--lams value") for v in values]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _eps(text: str) -> float:
    """eps as a fraction (0.0314) or in pixel levels (8/255)."""
    try:
        value = float(text.split("/")[0]) / float(text.split("/")[1]) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"eps must be a number like 0.031 or 8/255, got '{text}'") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"eps must be in [0, 1] (pixel units), got {value}")
    return value


# Help texts of the options built from the config dataclasses. The defaults are NOT here: each option's default
# is the dataclass field's (TrainConfig, FloatConfig, EvalConfig), so a default exists once.
_TRAIN_HELP = {
    "epochs": "epochs",
    "lr": "peak learning rate (linear warm-up, then cosine decay)",
    "optimizer": "optimizer (sgd: momentum, nesterov)",
    "weight_decay": "weight decay, on Conv/Linear weights only",
    "momentum": "SGD momentum",
    "strategy": "λ sampling during training",
    "zero_share": "share of λ = 0 training steps for the oat and uniform strategies",
    "attack": "training attack",
    "eps": "L∞ budget in pixel units",
    "steps": "training attack iterations",
    "step_size": "training PGD step size, e.g. 2/255 (the OAT/FLOAT CIFAR recipe)",
    "noise_draw": "weight noise during training: one draw per training step (attack + loss) or a fresh one per forward "
                  "(reference code, slower)",
    "grad_clip": "clip the gradient norm to this value",
    "amp": "mixed precision (CUDA only)",
    "seed": "seed for init, data order and λ sampling",
    "warmup_epochs": "epochs of linear learning-rate warm-up",
    "fixed_lam": "the operating point of --strategy fixed (a model dedicated to one λ)",
    "adv_weight": "--strategy paired: weight of the adversarial (λ = 1) loss term; the clean term gets 1 - it",
    "keep_freed_heap": "on CPU, let glibc return freed heap to the system during training (slower: each step faults "
                       "its memory back in); by default it is kept for reuse, see floatify.heap",
}
_CONVERT_HELP = {
    "alpha_init": "initial noise scale α",
    "dual_bn": "share one BatchNorm across λ",
    "bn_mix": "how the dual BatchNorm serves 0 < λ < 1: interpolate clean and adversarial sets (adversarial share "
              "λ**bn_curve), or switch to the adversarial set at any λ > 0 (reference)",
    "bn_curve": "with --bn-mix interpolate, the adversarial share of the BatchNorm at λ is λ**bn_curve (1: linear)",
}
_EVAL_HELP = {
    "lams": "operating points to evaluate, comma-separated in [0, 1]",
    "attacks": "a preset — 'strong' (APGD-CE + APGD-DLR with EOT, transfer from the noise-off model, noise-off "
               "APGD; what to report) or 'quick' (FGSM, PGD, EOT-PGD, noise-off PGD; fast looks) — or a comma list "
               "of clean, fgsm, pgd, eot-pgd, apgd-ce, apgd-dlr, transfer, autoattack; suffix ':nonoise' attacks "
               "and scores with the weight noise off",
    "eps": "L∞ eps for evaluation",
    "steps": "attack iterations",
    "eot_draws": "noise draws averaged per attack iteration on a randomised model",
    "score_draws": "noise draws per point when scoring a randomised model",
    "limit": "evaluate only the first N test points",
    "batch_size": "evaluation batch size; large batches amortise the per-forward noise draw",
    "noise_source": "where the weight noise comes from: bank (windows of a pre-drawn Gaussian bank) or fresh "
                    "(torch.randn per forward); the report names it",
}
_EVAL_FLAGS = {"attacks": "--eval-attacks", "eps": "--eval-eps", "steps": "--eval-steps", "limit": "--eval-limit",
               "batch_size": "--eval-batch-size"}


def _add_config_options(group, config_cls: type, helps: dict[str, str], *, flags: dict[str, str] | None = None,
                        special: dict[str, dict] | None = None) -> None:
    """One option per field of dataclass ``config_cls``; its default (and type, unless ``special``) is the field's."""
    import dataclasses

    types = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}
    for f in dataclasses.fields(config_cls):
        flag = (flags or {}).get(f.name, "--" + f.name.replace("_", "-"))
        kwargs: dict = {"default": f.default, "dest": flag.lstrip("-").replace("-", "_"),
                        **(special or {}).get(f.name, {})}
        if f.type == "bool" and f.default is False:
            kwargs["action"] = "store_true"
        elif f.type == "bool":  # a feature on by default: the flag turns it off
            flag, kwargs["action"] = f"--no-{f.name.replace('_', '-')}", "store_false"
            kwargs["dest"] = f.name
        elif "type" not in kwargs:
            kwargs["type"] = types[str(f.type)]
        shown = kwargs.pop("default_text", None)
        if shown is None:
            shown = "off" if f.default is None else f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
        tail = "" if kwargs.get("action") else f" (default: {shown})"
        group.add_argument(flag, help=helps[f.name] + tail, **kwargs)


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    from floatify.attacks import QUICK_DRAWS, QUICK_STEPS, STRONG_DRAWS, STRONG_STEPS
    from floatify.evaluate import EvalConfig
    from floatify.layers.noise import DEFAULT_NOISE_SOURCE, NOISE_SOURCES

    g = p.add_argument_group("evaluation")
    _add_config_options(g, EvalConfig, _EVAL_HELP, flags=_EVAL_FLAGS, special={
        "lams": {"type": _lam_list, "default": list(EvalConfig.lams),
                 "default_text": ",".join(f"{v:g}" for v in EvalConfig.lams)},
        "eps": {"type": _eps, "default_text": "the training eps"},
        "steps": {"default_text": f"the preset's: quick {QUICK_STEPS}, strong {STRONG_STEPS}"},
        "eot_draws": {"default_text": f"the preset's: quick {QUICK_DRAWS}, strong {STRONG_DRAWS}"},
        "limit": {"default_text": "all"},
        "noise_source": {"choices": NOISE_SOURCES, "default_text": DEFAULT_NOISE_SOURCE},
    })
    g.add_argument("--save-adversarial", action="store_true", help="also write adversarial.safetensors")


def build_parser() -> argparse.ArgumentParser:
    from floatify.convert import FloatConfig
    from floatify.layers.dual_bn import BN_MIXES
    from floatify.train import NOISE_DRAWS, STRATEGIES, TrainConfig

    parser = argparse.ArgumentParser(
        prog="floatify",
        description="FLOAT once-for-all adversarial training for timm/torchvision models: one model, a dial λ "
                    "between clean accuracy (λ=0) and robustness (λ=1).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="convert a model, train it with FLOAT, evaluate the trade-off",
                       description="Convert a timm/torchvision model by name, train it with FLOAT on a dataset, "
                                   "evaluate clean and robust accuracy across λ and write the run to --out.")
    t.add_argument("--model", default="resnet18", help="timm or torchvision model name (default: resnet18)")
    t.add_argument("--dataset", default="digits",
                   help="digits (embedded, no download), cifar10, cifar100, svhn, mnist, fashionmnist, or "
                        "imagefolder:<path> (default: digits)")
    t.add_argument("--data-root", default="data", help="where torchvision datasets live (default: data)")
    t.add_argument("--download", action="store_true", help="download a torchvision dataset if missing")
    t.add_argument("--image-size", type=int, default=None,
                   help="input resolution (default: 16 for digits, whose images are 8x8; 32 otherwise)")
    t.add_argument("--train-limit", type=int, default=None, help="train on the first N training points only")
    t.add_argument("--out", required=True, type=Path, help="output directory of the run")
    t.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    w = t.add_argument_group("initial weights (default: random initialisation)")
    w.add_argument("--initial-checkpoint", type=Path, default=None, metavar="PATH",
                   help="start from these weights of the plain (unconverted) model: a safetensors file or a torch "
                        "checkpoint (a state_dict, or one under 'state_dict'/'model'/'model_state_dict'); every key "
                        "and shape must fit --model and the dataset's number of classes")
    w.add_argument("--pretrained", action="store_true",
                   help="start from timm's pretrained weights of --model (classifier adapted to the dataset); they "
                        "must be local (the Hugging Face cache or --pretrained-file): nothing is downloaded")
    w.add_argument("--pretrained-file", type=Path, default=None, metavar="PATH",
                   help="read timm's pretrained weights of --model from this file (implies --pretrained)")
    g = t.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    _add_config_options(g, TrainConfig, _TRAIN_HELP, special={
        "optimizer": {"choices": ("sgd", "adamw")},
        "strategy": {"choices": STRATEGIES},
        "attack": {"choices": ("pgd", "fgsm")},
        "noise_draw": {"choices": NOISE_DRAWS},
        "eps": {"type": _eps, "default": None,
                "default_text": "0.1 for digits, where 8/255 barely perturbs 8×8 digits and a standard model keeps "
                                "most of its accuracy; 8/255 otherwise"},
        "step_size": {"type": _eps, "default_text": "2.5·eps/steps"},
        "fixed_lam": {"type": float},
    })
    _add_config_options(g, FloatConfig, _CONVERT_HELP, special={"bn_mix": {"choices": BN_MIXES}})
    g.add_argument("--density", type=float, default=None,
                   help="FLOATS: prune once to this fraction of Conv/Linear weights kept, e.g. 0.1 (default: dense)")
    g.add_argument("--sparsity-criterion", choices=("magnitude", "random", "snip"), default="snip",
                   help="how the FLOATS mask is chosen (snip uses 4 training batches; the best criterion in "
                        "benchmarks/floats.py) (default: snip)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_eval_options(t)
    e = sub.add_parser("eval", help="re-run the evaluation of a trained checkpoint",
                       description="Rebuild the model from a floatify checkpoint and evaluate it across λ.")
    e.add_argument("--checkpoint", required=True, type=Path, help="model.safetensors written by 'floatify train'")
    e.add_argument("--out", type=Path, default=None, help="where to write the report (default: a fresh eval/ "
                                                           "folder next to the checkpoint)")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    e.add_argument("--data-root", default="data")
    e.add_argument("--download", action="store_true")
    e.add_argument("--device", default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-progress", action="store_true")
    _add_eval_options(e)
    return parser


def _check_out_dir(out: Path, overwrite: bool, resume: bool) -> None:
    if overwrite and resume:
        raise CliError("--overwrite and --resume exclude each other")
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a directory; choose another --out")
    existing = [f for f in RUN_FILES if (out / f).exists()] if out.is_dir() else []
    if resume and not any((out / f).exists() for f in STATE_FILES):
        raise CliError(f"--resume: no train_state.safetensors in {out} to resume from; drop --resume to start a run")
    if existing and not (overwrite or resume):
        raise CliError(f"{out} already holds a run ({', '.join(existing)}); pass --overwrite to replace it or "
                       f"--resume to continue it")


def _write_atomic(path: Path, text: str) -> None:
    from floatify.io import atomic_write

    atomic_write(path, text)


def _positive(args, *names: str) -> None:
    for name in names:
        value = getattr(args, name.lstrip("-").replace("-", "_"))
        if value is not None and value < 1:
            raise CliError(f"{name} must be at least 1, got {value}")


def _validate_eval_options(args) -> None:
    """Every evaluation option, checked before anything is trained or written."""
    if not args.lams:
        raise CliError("--lams is empty; give comma-separated values in [0, 1], e.g. --lams 0,0.5,1")
    _positive(args, "--score-draws", "--eval-limit", "--eval-batch-size", "--eval-steps", "--eot-draws")


def _validate_train_options(args) -> None:
    _positive(args, "--epochs", "--batch-size", "--train-limit", "--image-size", "--steps")
    if args.density is not None and not 0 < args.density <= 1:
        raise CliError(f"--density must be in (0, 1] (fraction of weights kept, e.g. 0.1), got {args.density}")
    if args.pretrained_file is not None:
        args.pretrained = True
    if args.initial_checkpoint is not None and args.pretrained:
        raise CliError("--initial-checkpoint and --pretrained/--pretrained-file exclude each other: choose the "
                       "weights to start from")
    if args.train_limit is not None and args.train_limit < args.batch_size:
        raise CliError(f"--train-limit {args.train_limit} is smaller than --batch-size {args.batch_size}: no full "
                       f"batch to train on; raise --train-limit or lower --batch-size")


def _remove_stale_staging(out: Path) -> None:
    from floatify.io import _alive

    if not out.is_dir():
        return
    for entry in out.iterdir():
        match = _STAGING_RE.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _remove_own_staging(out: Path) -> None:
    if out.is_dir() and not out.is_symlink():
        for entry in out.iterdir():
            match = _STAGING_RE.match(entry.name)
            if match and int(match.group(1)) == os.getpid() and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)


def _prepare_out(out: Path, stage: bool) -> Path:
    """Create --out (checked writable now, not after training); with ``stage`` a hidden staging folder in it.

    reason: --overwrite must leave the previous run intact until the new one is complete; the new run is
    written into the staging folder and moved into place by :func:`_promote`.
    """
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
        _remove_stale_staging(out)
        if not stage:
            return out
        staging = out / f".floatify-staging-{os.getpid()}-{secrets.token_hex(8)}"
        staging.mkdir()
        return staging
    except OSError as err:
        raise CliError(f"--out {out} is not writable ({err.strerror or err}); choose another --out or fix its "
                       f"permissions") from None


def _promote(staging: Path, out: Path) -> None:
    """Move a complete run from ``staging`` into ``out``; files of the replaced run not rewritten are removed."""
    from floatify.io import _fsync_dir

    new = [p.name for p in staging.iterdir() if p.is_file() and not p.is_symlink()]
    order = sorted(new, key=lambda n: n != "model.safetensors")  # reason: the checkpoint first
    for name in order:
        os.replace(staging / name, out / name)
    for name in RUN_FILES:
        if name not in new and ((out / name).is_file() or (out / name).is_symlink()):
            (out / name).unlink()
    _fsync_dir(out)
    shutil.rmtree(staging, ignore_errors=True)


def _device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CliError(f"unknown --device '{name}' ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda requested but CUDA is not available")
    return device


def _attacks(args):
    from floatify.attacks import PRESETS, parse_attacks

    eps = args.eval_eps if args.eval_eps is not None else args.eps
    try:
        specs = parse_attacks(args.eval_attacks, eps, args.eval_steps, args.eot_draws)
    except ValueError as err:
        raise CliError(f"--eval-attacks: {err}") from None
    return specs, args.eval_attacks.strip() if args.eval_attacks.strip() in PRESETS else "custom"


def _evaluate_and_write(model, data, args, out: Path, meta: dict, shown: Path | None = None) -> None:
    """Evaluate and write report.md, metrics.json and tradeoff.png into ``out`` (``shown``: the folder to name in
    the closing line, where ``out`` is a staging folder moved there afterwards)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from floatify.evaluate import evaluate

    test = data.test if args.eval_limit is None else Subset(data.test, range(min(args.eval_limit, len(data.test))))
    loader = DataLoader(test, batch_size=args.eval_batch_size, shuffle=False)
    torch.manual_seed(args.seed)
    specs, preset = _attacks(args)
    report = evaluate(model, loader, args.lams, specs, score_draws=args.score_draws,
                      num_classes=data.num_classes, progress=not args.no_progress,
                      save_adversarial=out / "adversarial.safetensors" if args.save_adversarial else None,
                      meta={"preset": preset, **meta}, noise_source=args.noise_source)
    _write_atomic(out / "report.md", f"# floatify run: {meta.get('title', '')}\n\n" + report.to_markdown())
    _write_atomic(out / "metrics.json", report.to_json())
    report.plot(out / "tradeoff.png")
    print(report.to_markdown())
    print(f"wrote {shown or out}/report.md, metrics.json, tradeoff.png")


def _size(dataset) -> int:
    """Number of points of a map-style dataset (every dataset floatify.data loads has a length)."""
    return len(dataset)


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """No Hugging Face Hub request inside the block (``HF_HUB_OFFLINE=1``, also for an already imported hub)."""
    import importlib

    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        hub: Any = importlib.import_module("huggingface_hub.constants")
    except ImportError:
        hub = None
    old_flag = getattr(hub, "HF_HUB_OFFLINE", False)
    if hub is not None:
        hub.HF_HUB_OFFLINE = True  # reason: read from the environment at import, checked before every request
    try:
        yield
    finally:
        if hub is not None:
            hub.HF_HUB_OFFLINE = old_flag
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _one_line(err: BaseException, limit: int = 400) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


_NOT_LOCAL_HINT = "pass --initial-checkpoint PATH (the weights of the plain model) or --pretrained-file PATH instead"


def _pretrained_is_local(model: str) -> tuple[bool, str]:
    """Whether timm finds the pretrained weights of ``model`` without the network, and where it would look."""
    import torch
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model)
    if cfg is None or not (cfg.hf_hub_id or isinstance(cfg.url, str)):
        raise CliError(f"--pretrained: timm has no pretrained weights for {model}; {_NOT_LOCAL_HINT}")
    if cfg.hf_hub_id:  # reason: timm prefers the Hub when huggingface_hub is installed (a timm dependency)
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        found = [try_to_load_from_cache(repo, name, revision=revision or None) for name in names]
        return any(isinstance(f, str) for f in found), cfg.hf_hub_id
    from urllib.parse import urlparse

    url = str(cfg.url)
    return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)).is_file(), url


def _plain_model(args, num_classes: int):
    """The unconverted model with its initial weights: random, --initial-checkpoint or --pretrained[-file].

    Raises before anything is written: a file that does not fit names the first keys/shapes that do not.
    """
    import timm

    from floatify.checkpoint import load_initial_checkpoint
    from floatify.models import create_model

    if not args.pretrained:
        model = create_model(args.model, num_classes)
        if args.initial_checkpoint is not None:
            load_initial_checkpoint(model, args.initial_checkpoint)
        return model
    if not timm.is_model(args.model):
        import torchvision

        if args.model in torchvision.models.list_models(module=torchvision.models):
            raise CliError(f"--pretrained: {args.model} is a torchvision model and floatify loads pretrained weights "
                           f"of timm models only; pass its weights file with --initial-checkpoint PATH instead")
        return create_model(args.model, num_classes)  # reason: says the name is unknown, with close matches
    kwargs: dict = {}
    source = "--pretrained"
    if args.pretrained_file is not None:
        source = f"--pretrained-file {args.pretrained_file}"
        if not args.pretrained_file.is_file():
            what = "is a directory" if args.pretrained_file.is_dir() else "does not exist"
            raise CliError(f"{source} {what}; pass the file holding timm's pretrained weights of {args.model}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(args.pretrained_file)}
    else:
        local, where = _pretrained_is_local(args.model)
        if not local:
            raise CliError(f"--pretrained: the pretrained weights of {args.model} ({where}) are not available "
                           f"locally and floatify does not download them; {_NOT_LOCAL_HINT}")
    from safetensors import SafetensorError

    with _hub_offline():
        try:
            return create_model(args.model, num_classes, pretrained=True, **kwargs)
        except (RuntimeError, OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
            hint = (f"check that it holds timm's weights of {args.model}, or pass the plain model's weights with "
                    f"--initial-checkpoint PATH" if args.pretrained_file is not None else _NOT_LOCAL_HINT)
            raise CliError(f"{source}: the weights do not fit {args.model} with {num_classes} classes or cannot be "
                           f"read ({_one_line(err)}); {hint}") from None


def _train(args) -> None:
    import torch
    from torch.utils.data import DataLoader, Subset

    import floatify
    from floatify.checkpoint import save_checkpoint
    from floatify.data import default_eps, load_dataset
    from floatify.train import TrainConfig

    if args.eps is None:
        args.eps = default_eps(args.dataset)
    _attacks(args)  # reason: validate everything before touching --out
    _validate_eval_options(args)
    _validate_train_options(args)
    device = _device(args.device)
    _check_out_dir(args.out, args.overwrite, args.resume)
    try:
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
        convert_cfg = floatify.FloatConfig(**{f.name: getattr(args, f.name) for f in fields(floatify.FloatConfig)})
    except (TypeError, ValueError) as err:
        raise CliError(str(err)) from None
    if args.image_size is None:
        args.image_size = 16 if args.dataset.lower() == "digits" else 32
    data = load_dataset(args.dataset, image_size=args.image_size, root=args.data_root, download=args.download,
                        seed=args.seed)
    torch.manual_seed(args.seed)
    # reason: the initial weights are loaded (and checked) before --out is created
    model = floatify.convert(_plain_model(args, data.num_classes), convert_cfg).to(device)
    if args.density is not None:
        snip_data = DataLoader(data.train, batch_size=args.batch_size, shuffle=False)
        floatify.sparsify(model, args.density, criterion=args.sparsity_criterion, data=snip_data, seed=args.seed)
    if args.train_limit is not None:
        data.train = Subset(data.train, range(min(args.train_limit, _size(data.train))))
    if _size(data.train) < args.batch_size:
        raise CliError(f"{_size(data.train)} training points is fewer than --batch-size {args.batch_size}: no full "
                       f"batch to train on; lower --batch-size")
    replacing = args.overwrite and args.out.is_dir() and any((args.out / f).exists() for f in RUN_FILES)
    run_dir = _prepare_out(args.out, stage=replacing)
    gen = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, generator=gen, drop_last=True)
    print(f"floatify: training {args.model} on {data.name} ({_size(data.train)} train / {_size(data.test)} test, "
          f"{data.image_size}px) for {cfg.epochs} epochs, strategy={cfg.strategy}, {cfg.attack} eps={cfg.eps:.4f}")
    tag = {"model": args.model, "dataset": data.name, "image_size": data.image_size, "train_limit": args.train_limit,
           "batch_size": args.batch_size, "alpha_init": args.alpha_init, "dual_bn": args.dual_bn,
           "density": args.density, "sparsity_criterion": args.sparsity_criterion if args.density else None}
    history = floatify.fit(model, loader, cfg, checkpoint_dir=run_dir, resume=args.resume, tag=tag,
                           progress=not args.no_progress,
                           on_epoch_end=lambda e, r: print(f"  epoch {e}: loss {r['loss']:.3f} ({r['seconds']:.0f}s)"))
    initial = (str(args.initial_checkpoint) if args.initial_checkpoint is not None else
               f"timm pretrained ({args.pretrained_file or 'cache'})" if args.pretrained else "random")
    meta = {"title": f"{args.model} on {data.name}", "model": args.model, "num_classes": data.num_classes,
            "initial_weights": initial,
            "image_size": data.image_size, "dataset": data.name, "train": asdict(cfg), "convert": asdict(convert_cfg),
            "epochs_trained": len(history)}
    extra = {}
    if args.density is not None:
        from floatify.sparsity import sparsity_report

        rep = sparsity_report(model)
        meta["density"] = args.density
        extra = {"density": f"{rep.density:.4f}", "criterion": args.sparsity_criterion,
                 "compressed_MB": f"{rep.compressed_bytes / 1e6:.2f}", "dense_MB": f"{rep.dense_bytes / 1e6:.2f}"}
    save_checkpoint(run_dir / "model.safetensors", model, meta)
    _evaluate_and_write(model, data, args, run_dir, {"title": meta["title"], "model": args.model,
                                                      "dataset": data.name, "train_eps": f"{cfg.eps:.5f}", **extra},
                        shown=args.out)
    if run_dir != args.out:
        _promote(run_dir, args.out)


def _eval(args) -> None:
    import torch

    import floatify
    from floatify.checkpoint import CheckpointError, load_checkpoint, load_into
    from floatify.data import load_dataset
    from floatify.models import create_model

    _validate_eval_options(args)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} exists and is not a directory; choose another --out")
    state, meta = load_checkpoint(args.checkpoint)
    for key in ("model", "num_classes", "image_size", "dataset", "convert"):
        if key not in meta:
            raise CheckpointError(f"{args.checkpoint} lacks '{key}' in its metadata: not written by 'floatify train'")
    _check_meta(args.checkpoint, meta)
    args.eps = meta.get("train", {}).get("eps", 8 / 255)
    _attacks(args)
    out = args.out if args.out is not None else args.checkpoint.parent / "eval"
    if out.exists() and not out.is_dir():
        raise CliError(f"{out} exists and is not a directory; pass --out with a folder for the evaluation")
    if out.is_dir() and any((out / f).exists() for f in ("report.md", "metrics.json")) and not args.overwrite:
        raise CliError(f"{out} already holds an evaluation; pass --overwrite or choose another --out")
    device = _device(args.device)
    data = load_dataset(meta["dataset"], image_size=meta["image_size"], root=args.data_root, download=args.download,
                        seed=meta.get("train", {}).get("seed", 0))
    try:
        convert_cfg = floatify.FloatConfig(**{"bn_mix": "switch", "bn_curve": 1.0, **meta["convert"]})
        # reason: runs saved before bn_mix / bn_curve existed used the switch / a linear mix
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{args.checkpoint} has an invalid 'convert' entry in its metadata ({err})") from None
    model = floatify.convert(create_model(meta["model"], meta["num_classes"]), convert_cfg)
    # reason: a FLOATS checkpoint carries its masks; loading restores them into the dense model
    load_into(model, state, str(args.checkpoint))
    model.to(device)
    out = _prepare_out(out, stage=False)
    torch.manual_seed(args.seed)
    _evaluate_and_write(model, data, args, out, {"title": f"{meta['model']} on {meta['dataset']}",
                                                 "checkpoint": str(args.checkpoint)})


def _check_meta(path: Path, meta: dict) -> None:
    """Reject crafted or damaged metadata with one line instead of a traceback deep inside."""
    from floatify.checkpoint import CheckpointError

    def bad(key: str, want: str):
        return CheckpointError(f"{path} has an invalid '{key}' in its metadata (want {want}, got "
                               f"{meta.get(key)!r}); was it written by 'floatify train'?")

    if not isinstance(meta["model"], str) or not isinstance(meta["dataset"], str):
        raise bad("model" if not isinstance(meta["model"], str) else "dataset", "a name")
    for key in ("num_classes", "image_size"):
        if isinstance(meta[key], bool) or not isinstance(meta[key], int) or meta[key] < 1:
            raise bad(key, "an int >= 1")
    if not isinstance(meta["convert"], dict):
        raise bad("convert", "an object")
    train = meta.get("train", {})
    if not isinstance(train, dict):
        raise bad("train", "an object")
    eps = train.get("eps", 8 / 255)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
        raise CheckpointError(f"{path} has an invalid train.eps in its metadata (want a number in [0, 1], got "
                              f"{eps!r})")
    if not isinstance(train.get("seed", 0), int):
        raise CheckpointError(f"{path} has an invalid train.seed in its metadata (want an int)")


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # reason: progress lines appear when piped to a log
    parser = build_parser()
    args = parser.parse_args(argv)
    from floatify.checkpoint import CheckpointError

    try:
        {"train": _train, "eval": _eval}[args.command](args)
    except (CliError, CheckpointError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
        print(f"floatify {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # unknown model/dataset, invalid settings
        print(f"floatify {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # permissions, a full disk, a path that cannot be created
        where = f" ({err.filename})" if err.filename else ""
        print(f"floatify {args.command}: error: {err.strerror or err}{where}; check the path and its permissions",
              file=sys.stderr)
        return 2
    finally:
        if args.command == "train":
            _remove_own_staging(args.out)  # reason: a failed or interrupted --overwrite leaves the old run as it was
    return 0


if __name__ == "__main__":
    sys.exit(main())
