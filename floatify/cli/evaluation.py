"""``floatify eval SOURCE``: evaluate a saved dial (a run folder, a :func:`floatify.save` folder or
``hf-hub:owner/name``) across λ, and with ``--max-clean-drop``/``--min-robust`` say which λ meets the constraint.

The data, image size, split and eps come from the model's ``config.json`` (what it was trained on); ``--dataset`` and
``--image-size`` evaluate it elsewhere. The report (``report.md``, ``report.json``, ``tradeoff.png``) goes to
``SOURCE/eval`` for a local folder, or ``--out``; ``--overwrite`` replaces an earlier one in one step.

Example:
    >>> from floatify.cli.evaluation import describe_choice
    >>> from floatify.report import LamChoice
    >>> describe_choice(LamChoice(0.4, 95.0, 45.0, False, "most robust within 5 points"), "--max-clean-drop 5")
    '--max-clean-drop 5: λ = 0.400 (clean 95.0%, robust 45.0%, interpolated between measured λ)'
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from floatify.artifact import HUB_PREFIX, PLOT_FILE, REPORT_FILE
from floatify.cli.options import (
    CliError,
    add_eval_options,
    attack_specs,
    audit_config,
    check_audit_points,
    checked_out,
    device_of,
    parse_path,
    validate_eval_options,
)

__all__ = ["add_eval_parser", "run_eval", "evaluate_model", "write_markdown", "describe_choice"]

REPORT_FILES = (REPORT_FILE, "report.md", PLOT_FILE, "adversarial.safetensors", "metrics.json")


def add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a saved dial across λ; choose λ from a constraint",
                       description="Load a saved dial (a 'floatify train' run folder, a floatify.save folder or "
                                   "hf-hub:owner/name), evaluate clean and robust accuracy across λ on the data it was "
                                   "trained on (or --dataset) and write report.md, report.json and tradeoff.png.")
    e.add_argument("source", help="a run folder, a floatify.save folder (or its model.safetensors), or "
                                  "hf-hub:owner/name[@revision]")
    e.add_argument("--out", type=parse_path, default=None,
                   help="where to write the report (default: SOURCE/eval for a folder, eval-<name> for a Hub id)")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    e.add_argument("--dataset", default=None, help="evaluate on this dataset instead of the one the model was "
                                                   "trained on (same names as floatify train --dataset)")
    e.add_argument("--image-size", type=int, default=None, help="input resolution (default: the training one)")
    e.add_argument("--data-root", default="data", help="where torchvision datasets live (default: data)")
    e.add_argument("--download", action="store_true", help="download a torchvision dataset if missing")
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    e.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts and noise draws "
                                                       "(default: 0)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    c = e.add_argument_group("choosing λ (percentage points, as the report prints them)")
    c.add_argument("--max-clean-drop", type=float, default=None, metavar="POINTS",
                   help="print the most robust λ whose clean accuracy stays within POINTS of λ = 0's")
    c.add_argument("--min-robust", type=float, default=None, metavar="PERCENT",
                   help="print the least λ whose headline robust accuracy reaches PERCENT")
    add_eval_options(e)


def _validate_choice(args) -> None:
    for flag, value in (("--max-clean-drop", args.max_clean_drop), ("--min-robust", args.min_robust)):
        if value is not None and not 0 <= value <= 100:
            raise CliError(f"{flag} must be in [0, 100] (percentage points, as the report prints them), got {value}")
    if args.max_clean_drop is not None and 0.0 not in args.lams:
        raise CliError("--max-clean-drop measures the drop from λ = 0: include 0 in --lams")


def _default_out(source: str) -> Path:
    if source.startswith(HUB_PREFIX):
        return Path("eval-" + source[len(HUB_PREFIX):].replace("/", "-").replace("@", "-"))
    path = Path(source)
    return (path.parent if path.is_file() else path) / "eval"


def _check_out(out: Path, overwrite: bool, source: str) -> None:
    """--out may be new, empty, or an earlier evaluation (replaced with --overwrite); never the model's own folder or
    a folder holding it, never a folder with other files (it is replaced as a whole)."""
    checked_out(out)
    if out.is_symlink():
        raise CliError(f"--out {out} is a symlink; name the folder itself")
    if not source.startswith(HUB_PREFIX):
        model = Path(source).resolve()
        model = model.parent if model.is_file() else model
        if out.resolve() == model or out.resolve() in model.parents:
            raise CliError(f"--out {out} is the model's folder or holds it; choose a folder for the evaluation, e.g. "
                           f"the default {model / 'eval'}")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    held = [n for n in names if n in REPORT_FILES]
    foreign = [n for n in names if n not in REPORT_FILES]
    if foreign:
        raise CliError(f"--out {out} holds other files ({', '.join(foreign[:3])}); choose an empty or new folder")
    if held and not overwrite:
        raise CliError(f"{out} already holds an evaluation ({', '.join(held)}); pass --overwrite or choose another "
                       f"--out")


def _data_of(args, config: dict):
    """The test data of the evaluation: the model's training data (its split and size) unless overridden."""
    from floatify.data import load_dataset
    from floatify.imagefolder import check_images

    training = config.get("training") or {}
    dataset = args.dataset or training.get("dataset")
    if not isinstance(dataset, str):
        raise CliError(f"{args.source} does not record the data it was trained on; pass --dataset")
    if args.dataset is None and dataset.lower().startswith("imagefolder:") and args.source.startswith(HUB_PREFIX):
        raise CliError(f"{args.source} was trained on image files ({dataset}) of its author's machine; pass --dataset "
                       f"with your copy of that data")
    size = config["preprocessing"].get("input_size")
    image_size = args.image_size or training.get("image_size") or (size[-1] if size else None)
    same = args.dataset is None
    data = load_dataset(dataset, image_size=image_size, root=args.data_root, download=args.download,
                        seed=training.get("seed", 0) if same else 0, augment="none",
                        val_split=training.get("val_split") if same else None,
                        data_config=training.get("data_config") if same else None)
    # reason: a damaged image file stops here, named, before --out is touched
    check_images(data.test, workers=args.workers, limit=args.eval_limit)
    return data


def evaluate_model(model, test, num_classes: int, args, eps: float, meta: dict, folder: Path):
    """The report of ``model`` on ``test`` with the evaluation options of ``args`` (adversarial inputs saved into
    ``folder`` with --save-adversarial)."""
    import torch
    from torch.utils.data import Subset

    from floatify.data import make_loader
    from floatify.evaluate import evaluate

    specs, preset = attack_specs(args, eps)
    if args.eval_limit is not None:
        test = Subset(test, range(min(args.eval_limit, len(test))))
    loader = make_loader(test, args.eval_batch_size, shuffle=False, drop_last=False, workers=args.workers,
                         device=next(model.parameters()).device, seed=args.seed)
    torch.manual_seed(args.seed)
    return evaluate(model, loader, lams=args.lams, attacks=specs, score_draws=args.score_draws,
                    num_classes=num_classes, progress=not args.no_progress,
                    save_adversarial=folder / "adversarial.safetensors" if args.save_adversarial else None,
                    meta={"preset": preset, **meta}, noise_source=args.noise_source, audit=audit_config(args) or False)


def write_markdown(folder: Path, report, title: str) -> None:
    from floatify.io import atomic_write

    atomic_write(folder / "report.md", f"# {title}\n\n" + report.to_markdown())


def describe_choice(choice, asked: str) -> str:
    """One line for a :class:`floatify.report.LamChoice`."""
    how = "measured" if choice.measured else "interpolated between measured λ"
    return f"{asked}: λ = {choice.lam:.3f} (clean {choice.clean:.1f}%, robust {choice.robust:.1f}%, {how})"


def _print_choice(report, args) -> None:
    asked = " ".join(f"{flag} {value:g}" for flag, value in (("--max-clean-drop", args.max_clean_drop),
                                                             ("--min-robust", args.min_robust)) if value is not None)
    if not asked:
        return
    try:
        choice = report.choose_lam(max_clean_drop=args.max_clean_drop, min_robust=args.min_robust)
    except ValueError as err:
        print(f"{asked}: {err}")
        return
    print(describe_choice(choice, asked))


def _frozen_lams(args, config: dict) -> None:
    """reason: a frozen model is a plain, deterministic model at one λ: evaluated once (as λ = 0, where nothing is
    randomised), and there is no λ to choose."""
    if config.get("frozen") is None:
        return
    if args.max_clean_drop is not None or args.min_robust is not None:
        raise CliError(f"{args.source} is frozen at λ = {config['frozen']['lam']:g}: it has one operating point, "
                       f"nothing to choose; drop --max-clean-drop/--min-robust")
    args.lams = [0.0]


def run_eval(args) -> None:
    import floatify
    from floatify.artifact import read_config, resolve_source
    from floatify.distributed import launch_from_environment
    from floatify.io import replace_folder

    validate_eval_options(args)
    _validate_choice(args)
    if launch_from_environment().distributed:
        raise CliError("floatify eval runs in one process: start it with python -m floatify eval, without torchrun")
    if args.image_size is not None and args.image_size < 8:
        raise CliError(f"--image-size must be at least 8, got {args.image_size}")
    out = args.out if args.out is not None else _default_out(args.source)
    _check_out(out, args.overwrite, args.source)
    folder = resolve_source(args.source)  # reason: once: a Hub branch could move between two downloads
    config = read_config(folder)
    _frozen_lams(args, config)
    eps = (config.get("training") or {}).get("eps")
    eps = 8 / 255 if eps is None else eps
    attack_specs(args, eps)  # reason: every option checked before the data is read or --out touched
    device = device_of(args.device)
    data = _data_of(args, config)
    check_audit_points(args, len(data.test))
    model = floatify.load(folder, device=device)
    title = f"{(config.get('architecture') or {}).get('name', 'model')} on {data.name}"
    with contextlib.ExitStack() as stack:  # reason: an earlier evaluation stays until the new one is complete
        folder = stack.enter_context(replace_folder(out))
        report = evaluate_model(model, data.test, data.num_classes, args, eps,
                                {"title": title, "source": str(args.source)}, folder)
        report.to_json(folder / REPORT_FILE)
        report.plot(folder / PLOT_FILE)
        write_markdown(folder, report, f"floatify eval: {title}")
    print(report.to_markdown())
    print(f"wrote {out}: report.md, {REPORT_FILE}, {PLOT_FILE}")
    _print_choice(report, args)
