"""``floatify train``: convert a model by name, train it with FLOAT, evaluate the dial, write the run folder.

The run folder is the layout :func:`floatify.save` writes (``model.safetensors``, ``config.json``, ``report.json``,
``tradeoff.png``, ``README.md``), so ``floatify.load(run_folder)`` works on every run, plus ``report.md`` and what a
resume needs (``train_state.safetensors``, ``history.json``, ``summary.csv``). Every option is checked before the
folder is touched; ``--overwrite`` builds the new run beside the old one and swaps the folders in one step.

Example:
    >>> from floatify.cli.training import is_run_file
    >>> is_run_file("model.safetensors"), is_run_file("notes.txt")
    (True, False)
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import asdict, fields
from pathlib import Path

from floatify.artifact import CARD_FILE, CONFIG_FILE, LEGACY_REPORT_FILE, PLOT_FILE, REPORT_FILE, WEIGHTS_FILE
from floatify.cli.options import (
    CONVERT_HELP,
    TRAIN_HELP,
    CliError,
    add_config_options,
    add_eval_options,
    attack_specs,
    check_audit_points,
    checked_out,
    device_of,
    parse_eps,
    parse_numbers,
    parse_path,
    positive,
    validate_eval_options,
)
from floatify.run_state import HISTORY_FILE, OLD_STATE_FILE, STATE_FILE, SUMMARY_FILE

__all__ = ["add_train_parser", "run_train", "RUN_FILES", "is_run_file"]

RUN_FILES = (WEIGHTS_FILE, CONFIG_FILE, REPORT_FILE, PLOT_FILE, "report.md", LEGACY_REPORT_FILE, STATE_FILE,
             OLD_STATE_FILE, HISTORY_FILE, SUMMARY_FILE, "adversarial.safetensors", "eval")
"""The names that make a folder hold a run (its model card, README.md, alone does not)."""


def is_run_file(name: str) -> bool:
    """Whether ``name`` in a run folder is floatify's (a file or the ``eval`` folder of ``floatify eval``)."""
    from floatify.io import STAGING_SUFFIX, TMP_SUFFIX

    return name in RUN_FILES or name == CARD_FILE or name.endswith((TMP_SUFFIX, STAGING_SUFFIX))


def add_train_parser(sub) -> None:
    t = sub.add_parser("train", help="convert a model, train it with FLOAT, evaluate the trade-off",
                       description="Convert a timm/torchvision model by name, train it with FLOAT on a dataset, "
                                   "evaluate clean and robust accuracy across λ and write the run to --out. "
                                   "On several GPUs or CPU processes: torchrun --nproc-per-node N -m floatify train "
                                   "... (the data is sharded; rank 0 writes --out and evaluates).")
    t.add_argument("--model", default="resnet18", help="timm or torchvision model name (default: resnet18)")
    t.add_argument("--out", required=True, type=parse_path, help="output folder of the run")
    t.add_argument("--overwrite", action="store_true", help="replace a previous run in --out (it stays until the "
                                                            "new one is complete)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    _add_data_options(t)
    _add_weight_options(t)
    g = t.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=64,
                   help="batch size per process: under torchrun each of N processes takes this many, N times as "
                        "many per step (default: 64)")
    _add_training_options(g)
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_eval_options(t)


def _add_data_options(t: argparse.ArgumentParser) -> None:
    from floatify.data import AUGMENTS, DEFAULT_VAL_SPLIT

    d = t.add_argument_group("data")
    d.add_argument("--dataset", default="digits",
                   help="digits (embedded, no download), cifar10, cifar100, svhn, mnist, fashionmnist, or "
                        "imagefolder:<path> (train/ + val/ class folders, or one folder of class folders) "
                        "(default: digits)")
    d.add_argument("--data-root", default="data", help="where torchvision datasets live (default: data)")
    d.add_argument("--download", action="store_true", help="download a torchvision dataset if missing")
    d.add_argument("--image-size", type=int, default=None,
                   help="input resolution (default: 16 for digits, whose images are 8x8; for imagefolder the model's "
                        "input size from its data config; 32 otherwise)")
    d.add_argument("--train-limit", type=int, default=None, help="train on the first N training points only")
    d.add_argument("--augment", choices=AUGMENTS, default="auto",
                   help="training augmentation: auto (random crop + flip for CIFAR; random crop, no flip, for SVHN, "
                        "MNIST, FashionMNIST; timm's random-resized crop + flip with the model's data config for "
                        "imagefolder; none for the embedded digits, where the crop costs accuracy, measured), or a "
                        "rule by name: crop, crop-flip, timm (image folders), none; the test split is never augmented "
                        "(default: auto)")
    d.add_argument("--val-split", type=float, default=None,
                   help=f"imagefolder:<dir> as ONE folder of class folders: the share of each class held out for "
                        f"evaluation, in (0, 1) (stratified, seeded with --seed) (default: {DEFAULT_VAL_SPLIT:g})")
    d.add_argument("--mean", type=parse_numbers, default=None, metavar="R,G,B",
                   help="input normalisation mean, inside the model (default: the model's data config)")
    d.add_argument("--std", type=parse_numbers, default=None, metavar="R,G,B",
                   help="input normalisation std, > 0, inside the model (default: the model's data config)")


def _add_weight_options(t: argparse.ArgumentParser) -> None:
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


def _add_training_options(g) -> None:
    from floatify.convert import FloatConfig
    from floatify.layers.dual_bn import BN_MIXES
    from floatify.losses import NOISE_DRAWS, STRATEGIES
    from floatify.train import TrainConfig

    add_config_options(g, TrainConfig, TRAIN_HELP, special={
        "optimizer": {"choices": ("sgd", "adamw")},
        "strategy": {"choices": STRATEGIES},
        "attack": {"choices": ("pgd", "fgsm")},
        "noise_draw": {"choices": NOISE_DRAWS},
        "eps": {"type": parse_eps, "default": None,
                "default_text": "0.1 for digits, where 8/255 barely perturbs 8×8 digits and a standard model keeps "
                                "most of its accuracy; 8/255 otherwise"},
        "step_size": {"type": parse_eps, "default_text": "2.5·eps/steps"},
        "fixed_lam": {"type": float},
        "compile_mode": {"default_text": "default"},
    })
    add_config_options(g, FloatConfig, CONVERT_HELP, special={"bn_mix": {"choices": BN_MIXES}})
    g.add_argument("--density", type=float, default=None,
                   help="FLOATS: prune once to this fraction of Conv/Linear weights kept, e.g. 0.1 (default: dense)")
    g.add_argument("--sparsity-criterion", choices=("magnitude", "random", "snip"), default="snip",
                   help="how the FLOATS mask is chosen (snip uses 4 training batches; the best criterion in "
                        "benchmarks/floats.py) (default: snip)")


# ------------------------------------------------------------------------------------------------- checks
MAX_IMAGE_SIZE = 4096  # reason: no classifier takes more; one 3×4096² float image is already 200 MB


def _validate_train_options(args) -> None:
    positive(args, "--epochs", "--batch-size", "--train-limit", "--image-size", "--steps")
    if args.image_size is not None and args.image_size > MAX_IMAGE_SIZE:
        raise CliError(f"--image-size {args.image_size} is larger than {MAX_IMAGE_SIZE} pixels (the side of the square "
                       f"input); pass the model's input size, e.g. 224")
    if args.density is not None and not 0 < args.density <= 1:
        raise CliError(f"--density must be in (0, 1] (fraction of weights kept, e.g. 0.1), got {args.density}")
    if args.pretrained_file is not None:
        args.pretrained = True
    if args.initial_checkpoint is not None and args.pretrained:
        raise CliError("--initial-checkpoint and --pretrained/--pretrained-file exclude each other: choose the "
                       "weights to start from")
    if args.resume and (args.initial_checkpoint is not None or args.pretrained):
        raise CliError("--resume continues from the weights saved in --out; --initial-checkpoint and --pretrained "
                       "choose where a new run starts: drop them (the run keeps what it started from)")
    if args.train_limit is not None and args.train_limit < args.batch_size:
        raise CliError(f"--train-limit {args.train_limit} is smaller than --batch-size {args.batch_size}: no full "
                       f"batch to train on; raise --train-limit or lower --batch-size")
    if args.val_split is not None and not 0 < args.val_split < 1:
        raise CliError(f"--val-split must be in (0, 1) (the share of each class held out for evaluation, e.g. 0.1), "
                       f"got {args.val_split}")
    if args.val_split is not None and not args.dataset.lower().startswith("imagefolder:"):
        raise CliError(f"--val-split splits a single imagefolder:<dir>; {args.dataset} has its own test split: drop "
                       f"--val-split")
    from floatify.models import IMAGENET_MEAN, IMAGENET_STD, check_mean_std

    try:
        check_mean_std(args.mean or IMAGENET_MEAN, args.std or IMAGENET_STD)
    except ValueError as err:
        raise CliError(f"--{err}") from None


def _check_out(out: Path, overwrite: bool, resume: bool) -> None:
    """What --out holds against --overwrite/--resume, checked before anything is trained or written."""
    if overwrite and resume:
        raise CliError("--overwrite and --resume exclude each other")
    checked_out(out)
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    ours = [n for n in names if n in RUN_FILES]
    if resume and STATE_FILE not in names:
        hint = (f" (only the pickle {OLD_STATE_FILE} of an older floatify: start afresh with --overwrite)"
                if OLD_STATE_FILE in names else "")
        raise CliError(f"--resume: no {STATE_FILE} in {out} to resume from{hint}; drop --resume to start a run")
    if ours and not (overwrite or resume):
        raise CliError(f"{out} already holds a run ({', '.join(ours)}); pass --overwrite to replace it or "
                       f"--resume to continue it")
    if CARD_FILE in names and not _is_model_card(out / CARD_FILE):
        raise CliError(f"--out {out} holds a {CARD_FILE} that is not a floatify model card, which the run would "
                       f"replace; choose another --out")
    foreign = [n for n in names if not is_run_file(n)]
    if overwrite and ours and foreign:
        raise CliError(f"--overwrite replaces {out} as a whole, and it also holds {', '.join(foreign[:3])}: move "
                       f"those out or choose another --out")


def _is_model_card(path: Path) -> bool:
    try:
        return "library_name: floatify" in path.read_text(encoding="utf-8", errors="replace")[:200]
    except OSError:
        return False


def _settings(args):
    """Every option checked (nothing written yet): the configs, the launch and the device."""
    import floatify
    from floatify import distributed
    from floatify.data import default_eps
    from floatify.train import TrainConfig

    if args.eps is None:
        args.eps = default_eps(args.dataset)
    attack_specs(args, args.eps)
    validate_eval_options(args)
    _validate_train_options(args)
    launch = distributed.launch_from_environment()  # reason: a broken torchrun environment is one more bad option
    device = device_of(args.device, launch)
    _check_out(args.out, args.overwrite, args.resume)
    try:
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
        convert_cfg = floatify.FloatConfig(**{f.name: getattr(args, f.name) for f in fields(floatify.FloatConfig)})
    except (TypeError, ValueError) as err:
        raise CliError(_as_option(str(err), {f.name for cls in (TrainConfig, floatify.FloatConfig)
                                             for f in fields(cls)})) from None
    if cfg.amp and device.type != "cuda":  # reason: fit ignores amp off CUDA; the run must not record it as used
        raise CliError(f"--amp (mixed precision) runs on CUDA only and the device is {device}; drop --amp")
    if cfg.compile:
        _check_compiler(cfg.compile_mode, device)
    args.initial_weights = _initial_weights(args)
    return cfg, convert_cfg, launch, device


def _check_compiler(mode: str | None, device) -> None:
    """--compile: a mode the device cannot serve, or a torch that cannot compile here, is a bad option (no silent
    eager run, as floatify.fit falls back to with a warning)."""
    from floatify.compile import check_compile_device, compiler_problem

    try:
        check_compile_device(mode, device)
    except ValueError as err:
        raise CliError(f"--compile-mode: {err}") from None
    problem = compiler_problem(device)
    if problem is not None:
        raise CliError(f"--compile: {problem}; drop --compile to train eagerly")


def _as_option(message: str, names: set[str]) -> str:
    """A config's message with the field it starts with named as the option (``seed must`` -> ``--seed must``)."""
    head, sep, rest = message.partition(" ")
    return f"--{head.replace('_', '-')}{sep}{rest}" if sep and head in names else message


def _initial_weights(args) -> str:
    """What the run starts from, as config.json records it; a resumed run's from its state (recorded at its start)."""
    if args.resume:
        from floatify.run_state import read_state_tag

        stored = (read_state_tag(args.out) or {}).get("initial_weights")
        return stored if isinstance(stored, str) else "not recorded (the run was started by an older floatify)"
    if args.initial_checkpoint is not None:
        return str(args.initial_checkpoint)
    return f"timm pretrained ({args.pretrained_file or 'cache'})" if args.pretrained else "random"


def _data(args):
    from floatify.data import load_dataset
    from floatify.imagefolder import check_images
    from floatify.models import model_data_config

    folder = args.dataset.lower().startswith("imagefolder:")
    if args.image_size is None and not folder:  # reason: imagefolder's default is the model's input size
        args.image_size = 16 if args.dataset.lower() == "digits" else 32
    data = load_dataset(args.dataset, image_size=args.image_size, root=args.data_root, download=args.download,
                        seed=args.seed, augment=args.augment, val_split=args.val_split,
                        data_config=model_data_config(args.model) if folder else None)
    # reason: a damaged image file stops the run here, named, before --out is touched
    checked = check_images(data.train, workers=args.workers) + check_images(data.test, workers=args.workers,
                                                                            limit=args.eval_limit)
    if checked:
        print(f"floatify: decoded {checked} image files, all readable")
    return data


def _model(args, data, convert_cfg, device):
    """The converted (and, with --density, pruned) model with its initial weights; checked before --out is made."""
    import torch
    from torch.utils.data import DataLoader

    import floatify
    from floatify.cli.weights import plain_model
    from floatify.models import set_normalization

    torch.manual_seed(args.seed)
    plain = set_normalization(plain_model(args, data.num_classes), args.mean, args.std)
    model = floatify.convert(plain, convert_cfg).to(device)
    _check_runs_at_size(model, args.model, data, device)
    if args.density is not None:
        snip_data = DataLoader(data.train, batch_size=args.batch_size, shuffle=False)
        floatify.sparsify(model, args.density, criterion=args.sparsity_criterion, data=snip_data, seed=args.seed)
    return model


def _check_runs_at_size(model, name: str, data, device) -> None:
    """One evaluation-mode forward of one blank input shaped as the data's (global RNGs and the model's mode kept):
    a model that cannot run at --image-size is refused before --out is made, not in the first training step."""
    import torch

    from floatify.cli.weights import one_line
    from floatify.run_state import preserved_rng

    shape = tuple(data.test[0][0].shape)
    was_training = model.training
    try:
        with preserved_rng(), torch.no_grad():
            model.eval()
            model(torch.zeros((1, *shape), device=device))
    except (RuntimeError, AssertionError, ValueError, IndexError) as err:  # reason: what timm/torch raise for sizes
        raise CliError(f"--model {name} cannot run on inputs of shape {shape} ({one_line(err, 160)}); pass an "
                       f"--image-size it takes (e.g. its input size, 224 for most ImageNet models)") from None
    finally:
        model.train(was_training)


def _remove_if_empty(folder: Path) -> None:
    """reason: a run that failed before writing anything leaves no empty --out behind"""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _limit_data(args, data, launch) -> None:
    from torch.utils.data import Subset

    if args.train_limit is not None:
        data.train = Subset(data.train, range(min(args.train_limit, len(data.train))))
    if len(data.train) < args.batch_size:
        raise CliError(f"{len(data.train)} training points is fewer than --batch-size {args.batch_size}: no full "
                       f"batch to train on; lower --batch-size")
    share = len(data.train) // launch.world_size  # reason: what a DistributedSampler(drop_last=True) gives each
    if share < args.batch_size:
        raise CliError(f"{len(data.train)} training points shared by {launch.world_size} processes is {share} per "
                       f"process, fewer than --batch-size {args.batch_size} (per process): no full batch to train on; "
                       f"lower --batch-size or start fewer processes")


# ---------------------------------------------------------------------------------------------- the run
def _open_run_folder(args, stack: contextlib.ExitStack) -> Path:
    """The folder the run is written into: --out itself, or with --overwrite of a run a staging folder beside it that
    replaces --out in one step when the run is complete (``stack`` holds that swap)."""
    import tempfile

    from floatify.io import remove_stale_temporaries, replace_folder

    out = args.out
    replacing = args.overwrite and out.is_dir() and any(p.name in RUN_FILES for p in out.iterdir())
    try:
        if replacing:
            return stack.enter_context(replace_folder(out))
        if not out.exists():
            stack.callback(_remove_if_empty, out)
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
        remove_stale_temporaries(out)
        return out
    except OSError as err:
        raise CliError(f"--out {out} is not writable ({err.strerror or err}); choose another --out or fix its "
                       f"permissions") from None


# The options a resumed run may give other values than its start: every other option of `floatify train` is in the
# resume tag (derived: a new option is compared unless it is named here), beside the TrainConfig fields fit compares.
RESUMABLE_OPTIONS = frozenset({
    "command", "out", "overwrite", "resume",  # what is run and where it is written
    "no_progress", "device", "workers",  # how it is shown and on what hardware it runs (not the weights)
    "data_root", "download",  # where the data is found (its name, size and split are compared)
    # reason: refused with --resume; the tag holds the resolved "initial_weights" instead
    "initial_checkpoint", "pretrained", "pretrained_file",
    "augment", "eps",  # reason: compared resolved: "augmentation" below, eps as a TrainConfig field
})


def _eval_options() -> frozenset[str]:
    """The evaluation options (run after training; they never change the weights), read off the parser."""
    from floatify.cli.options import add_eval_options

    parser = argparse.ArgumentParser(add_help=False)
    add_eval_options(parser)
    return frozenset(a.dest for a in parser._actions)


def _tag(args, data, launch) -> dict:
    """What must not change between a run and its resume, beyond the training settings fit compares itself: every
    option but :data:`RESUMABLE_OPTIONS`, the evaluation options and the TrainConfig fields, with the data settings
    as resolved (a default and its explicit value are the same run)."""
    from floatify.train import TrainConfig

    skip = RESUMABLE_OPTIONS | _eval_options() | {f.name for f in fields(TrainConfig)}
    tag = {k: str(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items()) if k not in skip}
    tag.update(dataset=data.name, image_size=data.image_size, augmentation=data.augmentation,
               val_split=data.val_split, sparsity_criterion=args.sparsity_criterion if args.density else None)
    if launch.distributed:
        tag["processes"] = launch.world_size  # reason: another count is another data order; resume refuses it
    return tag


def _fit(args, model, data, cfg, launch, device, run_dir: Path | None) -> list[dict]:
    import floatify
    from floatify import distributed
    from floatify.data import make_loader
    from floatify.quick_look import describe_epoch, quick_look_loader

    loader = make_loader(data.train, args.batch_size, shuffle=True, drop_last=True, workers=args.workers,
                         device=device, seed=args.seed, distributed=launch.distributed)
    processes = f", {launch.world_size} processes" if launch.distributed else ""
    print(f"floatify: training {args.model} on {data.name} ({len(data.train)} train / {len(data.test)} test, "
          f"{data.image_size}px, augmentation: {data.augmentation}) for {cfg.epochs} epochs{processes}, "
          f"strategy={cfg.strategy}, {cfg.attack} eps={cfg.eps:.4f}")
    return floatify.fit(distributed.wrap(model, device), loader, cfg, resume=args.resume, tag=_tag(args, data, launch),
                        # reason: the other ranks only read the state they resume from, never write
                        checkpoint_dir=run_dir if launch.is_main else args.out if args.resume else None,
                        progress=not args.no_progress and launch.is_main,
                        eval_loader=quick_look_loader(data.test, cfg.eval_every),
                        on_epoch_end=lambda e, r: print(f"  epoch {e}: {describe_epoch(r)}"))


def _training_facts(args, data, model, cfg, history: list[dict]) -> dict:
    """What config.json records about the training (floatify eval reads the data settings back)."""
    from floatify.models import model_data_config

    initial = args.initial_weights
    return {"dataset": data.name, "image_size": data.image_size, "eps": cfg.eps, "seed": cfg.seed,
            "augmentation": data.augmentation, "val_split": data.val_split, "data_config": model_data_config(model),
            "epochs_trained": len(history), "initial_weights": initial, "batch_size": args.batch_size,
            "train_limit": args.train_limit, "sparsity_criterion": args.sparsity_criterion if args.density else None,
            "train_config": asdict(cfg)}


def _finish(args, model, data, cfg, history: list[dict], run_dir: Path) -> None:
    """Rank 0 after training: evaluate once and write the artifact files and the report into the run folder."""
    from floatify.artifact import write_artifact
    from floatify.cli.evaluation import evaluate_model, write_markdown

    extra = {}
    if args.density is not None:
        from floatify.sparsity import sparsity_report

        rep = sparsity_report(model)
        extra = {"density": f"{rep.density:.4f}", "criterion": args.sparsity_criterion,
                 "compressed_MB": f"{rep.compressed_bytes / 1e6:.2f}", "dense_MB": f"{rep.dense_bytes / 1e6:.2f}"}
    title = f"{args.model} on {data.name}"
    meta = {"title": title, "model": args.model, "dataset": data.name, "train_eps": f"{cfg.eps:.5f}",
            "augmentation": data.augmentation, **extra}
    report = evaluate_model(model, data.test, data.num_classes, args, cfg.eps, meta, run_dir)
    write_artifact(run_dir, model, report, training=_training_facts(args, data, model, cfg, history))
    write_markdown(run_dir, report, f"floatify run: {title}")
    print(report.to_markdown())
    print(f"wrote {args.out}: {WEIGHTS_FILE}, {CONFIG_FILE}, {REPORT_FILE}, report.md, {PLOT_FILE}, {CARD_FILE} "
          f"(load it with floatify.load('{args.out}'))")


def run_train(args) -> None:
    from floatify import distributed

    cfg, convert_cfg, launch, device = _settings(args)
    data = _data(args)
    model = _model(args, data, convert_cfg, device)  # reason: the initial weights are checked before --out is made
    _limit_data(args, data, launch)
    check_audit_points(args, len(data.test))  # reason: before any training step
    with contextlib.ExitStack() as stack:  # reason: holds the --overwrite swap: done only when the run is complete
        with distributed.process_group(launch, device):  # reason: no group in one process; destroyed also on error
            with distributed.together("preparing --out"):  # reason: rank 0 alone writes --out; its refusal stops all
                run_dir = _open_run_folder(args, stack) if launch.is_main else None
            history = _fit(args, model, data, cfg, launch, device, run_dir)
            distributed.barrier()
        if launch.is_main:  # reason: rank 0 alone saves, evaluates (once) and writes the run folder
            assert run_dir is not None
            _finish(args, model, data, cfg, history, run_dir)
