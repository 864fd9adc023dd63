"""Command-line options built from the config dataclasses, their parsers and the checks every command shares.

The defaults are NOT written here: each option generated from :class:`floatify.TrainConfig`,
:class:`floatify.FloatConfig` or :class:`floatify.EvalConfig` takes the dataclass field's, so a default exists once.

Example:
    >>> from floatify.cli.options import parse_eps, parse_lams
    >>> parse_eps("8/255") == 8 / 255, parse_lams("0,0.5,1")
    (True, [0.0, 0.5, 1.0])
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

__all__ = ["CliError", "parse_eps", "parse_lams", "parse_numbers", "parse_path", "add_config_options",
           "add_eval_options", "validate_eval_options", "audit_config", "check_audit_points", "positive", "device_of",
           "attack_specs", "WORKERS_HELP"]


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def parse_lams(text: str) -> list[float]:
    """``--lams``: comma-separated operating points in [0, 1], each once, in the order given."""
    from floatify.context import validate_lam

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lams must be comma-separated numbers in [0, 1], got '{text}'") from None
    try:
        return [validate_lam(v, "--lams value") for v in values]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_eps(text: str) -> float:
    """eps as a fraction (0.0314) or in pixel levels (8/255)."""
    try:
        value = float(text.split("/")[0]) / float(text.split("/")[1]) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"eps must be a number like 0.031 or 8/255, got '{text}'") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"eps must be in [0, 1] (pixel units), got {value}")
    return value


def parse_path(text: str) -> Path:
    """A path option; an empty one is refused (``Path("")`` would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name a path")
    return Path(text)


def parse_numbers(text: str) -> list[float]:
    """``--mean``/``--std``: comma-separated numbers (their count and range are checked by the model)."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want 3 comma-separated numbers like 0.485,0.456,0.406, got '{text}'") \
            from None


WORKERS_HELP = ("data loading processes (default: min(8, CPUs - 1) for image files and torchvision sets, 0 for "
                "the in-memory digits)")
TRAIN_HELP = {
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
    "keep_freed_heap": "on CPU (glibc), keep freed heap for reuse while training instead of faulting it back in every "
                       "step (a few %% faster; the process holds its peak memory; see floatify.heap). Preloading "
                       "jemalloc or tcmalloc (LD_PRELOAD) keeps freed memory for reuse as well",
    "model_ema": "keep an exponential moving average of the weights (timm ModelEmaV3, with warm-up); the saved and "
                 "evaluated model is the EMA",
    "model_ema_decay": "--model-ema: the share of the average kept per step",
    "compile": "train compiled (torch.compile, inductor): the attack's and the loss's forwards and backwards run in "
               "graphs compiled once, with no recompilation per λ, attack step or epoch (see docs/performance.md)",
    "compile_mode": "--compile: torch.compile's mode: default, reduce-overhead (CUDA graphs, CUDA only), "
                    "max-autotune (CUDA only) or max-autotune-no-cudagraphs",
    "eval_every": "every K epochs a quick look at the first 256 test points: clean accuracy at λ = 0 and 1, robust at "
                  "λ = 1 (3-step PGD); 0: never",
}
CONVERT_HELP = {
    "alpha_init": "initial noise scale α",
    "dual_bn": "share one BatchNorm across λ",
    "bn_mix": "how the dual BatchNorm serves 0 < λ < 1: interpolate clean and adversarial sets (adversarial share "
              "λ**bn_curve), or switch to the adversarial set at any λ > 0 (reference)",
    "bn_curve": "with --bn-mix interpolate, the adversarial share of the BatchNorm at λ is λ**bn_curve (1: linear)",
}
EVAL_HELP = {
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
AUDIT_HELP = {
    "subset": "--audit: audit the first N test points",
    "multipliers": "--audit: the budget sweep's eps multipliers, comma-separated (eps × each must stay in [0, 1])",
    "lams": "--audit: the λ to audit, among --lams",
    "steps": "--audit: iterations of the audit's white-box attacks at budgets other than eps × 1 (at most; "
             "eps × 1 is the evaluation's own attacks)",
    "eot_draws": "--audit: noise draws per iteration of those attacks (at most; and at most half --eot-draws)",
    "unbounded_eps": "--audit: the unbounded attack's eps",
    "square_queries": "--audit: queries of the Square (black-box) attack",
    "square_draws": "--audit: noise draws averaged per Square query on a randomised model",
    "min_success": "--audit: the share of points the unbounded attack must fool",
    "tolerance": "--audit: the convergence check's allowance (a fraction; the CI when that is wider)",
    "max_stalled": "--audit: the share of points whose loss the attack may fail to increase (else: saturated loss)",
}
EVAL_FLAGS = {"attacks": "--eval-attacks", "eps": "--eval-eps", "steps": "--eval-steps", "limit": "--eval-limit",
              "batch_size": "--eval-batch-size"}
_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}


def _shown_default(value: object) -> str:
    return "off" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def add_config_options(group, config_cls: type, helps: dict[str, str], *, flags: dict[str, str] | None = None,
                       special: dict[str, dict] | None = None) -> None:
    """One option per field of dataclass ``config_cls``; its default (and type, unless ``special``) is the field's."""
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
            kwargs["type"] = _TYPES[str(f.type)]
        shown = kwargs.pop("default_text", None)
        tail = "" if kwargs.get("action") else f" (default: {shown or _shown_default(f.default)})"
        group.add_argument(flag, help=helps[f.name] + tail, **kwargs)


def add_eval_options(p: argparse.ArgumentParser) -> None:
    """The evaluation options of ``train`` and ``eval``, from :class:`floatify.EvalConfig`."""
    from floatify.attack_presets import QUICK_DRAWS, QUICK_STEPS, STRONG_DRAWS, STRONG_STEPS
    from floatify.evaluate import EvalConfig
    from floatify.layers.noise import DEFAULT_NOISE_SOURCE, NOISE_SOURCES

    g = p.add_argument_group("evaluation")
    add_config_options(g, EvalConfig, EVAL_HELP, flags=EVAL_FLAGS, special={
        "lams": {"type": parse_lams, "default": list(EvalConfig.lams),
                 "default_text": ",".join(f"{v:g}" for v in EvalConfig.lams)},
        "attacks": {"type": str},  # reason: the field also takes AttackSpecs; the command line names them
        "eps": {"type": parse_eps, "default_text": "the training eps"},
        "steps": {"default_text": f"the preset's: quick {QUICK_STEPS}, strong {STRONG_STEPS}"},
        "eot_draws": {"default_text": f"the preset's: quick {QUICK_DRAWS}, strong {STRONG_DRAWS}"},
        "limit": {"default_text": "all"},
        "noise_source": {"choices": NOISE_SOURCES, "default_text": DEFAULT_NOISE_SOURCE},
    })
    g.add_argument("--save-adversarial", action="store_true",
                   help="also write adversarial.safetensors: the kept adversarial inputs per λ and attack")
    g.add_argument("--workers", type=int, default=None, help=WORKERS_HELP)
    _add_audit_options(p)


def _add_audit_options(p: argparse.ArgumentParser) -> None:
    """``--audit`` and its settings, from :class:`floatify.AuditConfig`."""
    from floatify.audit import AuditConfig

    g = p.add_argument_group("audit (floatify.audit: the evaluation's sanity checks on a subset of the test points)")
    g.add_argument("--audit", action="store_true", help="also audit the evaluation: budget sweep, unbounded attack, "
                                                        "black-box vs white-box, convergence, randomness, loss "
                                                        "landscape; one verdict line and a report section")
    names = [f.name for f in dataclasses.fields(AuditConfig)]
    add_config_options(g, AuditConfig, AUDIT_HELP, flags={n: "--audit-" + n.replace("_", "-") for n in names},
                       special={"multipliers": {"type": parse_numbers, "default_text": ",".join(
                                    f"{m:g}" for m in AuditConfig.multipliers)},
                                "lams": {"type": parse_lams, "default_text": "the evaluated λ's ends and middle"}})


def audit_config(args):
    """The :class:`floatify.AuditConfig` of ``--audit``/``--audit-*`` (None without ``--audit``), checked."""
    from floatify.audit import AuditConfig, audit_lams

    if not args.audit:
        return None
    names = [f.name for f in dataclasses.fields(AuditConfig)]
    try:
        config = AuditConfig(**{n: getattr(args, "audit_" + n) for n in names})
        audit_lams(args.lams, config)
    except (TypeError, ValueError) as err:
        raise CliError(f"--audit: {err}") from None
    return config


def check_audit_points(args, test_points: int) -> None:
    """``--audit-subset`` against the test points evaluated (``--eval-limit`` or the whole test set)."""
    config = audit_config(args)
    if config is not None:
        try:
            config.check_points(min(test_points, args.eval_limit or test_points))
        except ValueError as err:
            raise CliError(f"--audit: {err}") from None


def positive(args, *names: str) -> None:
    for name in names:
        value = getattr(args, name.lstrip("-").replace("-", "_"))
        if value is not None and value < 1:
            raise CliError(f"{name} must be at least 1, got {value}")


def validate_eval_options(args) -> None:
    """Every evaluation option, checked before anything is trained or written."""
    if not args.lams:
        raise CliError("--lams is empty; give comma-separated values in [0, 1], e.g. --lams 0,0.5,1")
    if len(set(args.lams)) != len(args.lams):
        raise CliError(f"--lams names a λ twice ({','.join(f'{v:g}' for v in args.lams)}); give each once")
    positive(args, "--score-draws", "--eval-limit", "--eval-batch-size", "--eval-steps", "--eot-draws")
    audit_config(args)
    if args.workers is not None and args.workers < 0:
        raise CliError(f"--workers must be 0 or more (0: load data in the main process), got {args.workers}")


def device_of(name: str | None, launch=None):
    """The device of --device; under torchrun with several processes, one per process (cuda:LOCAL_RANK)."""
    import torch

    if launch is not None and launch.distributed:
        from floatify.distributed import local_device

        try:
            return local_device(launch, name)
        except ValueError as err:
            raise CliError(f"--device: {err}") from None
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CliError(f"unknown --device '{name}' ({err}); use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise CliError(f"--device {name}: floatify runs on cpu or cuda; use one of them")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda requested but CUDA is not available; use --device cpu")
    return device


def attack_specs(args, eps: float):
    """``(specs, preset name or "custom")`` of ``--eval-attacks`` at ``--eval-eps`` (else ``eps``)."""
    from floatify.attack_presets import PRESETS, parse_attacks

    eps = args.eval_eps if args.eval_eps is not None else eps
    try:
        specs = parse_attacks(args.eval_attacks, eps, args.eval_steps, args.eot_draws)
    except ValueError as err:
        raise CliError(f"--eval-attacks: {err}") from None
    labels = [spec.label for spec in specs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise CliError(f"--eval-attacks names {', '.join(twice)} more than once; list each attack once")
    audit = audit_config(args)
    if audit is not None:
        try:
            audit.check_sweep(eps)
        except ValueError as err:
            raise CliError(f"--audit: {err}") from None
    return specs, args.eval_attacks.strip() if args.eval_attacks.strip() in PRESETS else "custom"


def checked_out(out: Path, what: str = "--out") -> Path:
    if out.is_symlink() and not out.exists():
        raise CliError(f"{what} {out} is a dangling symlink; remove it or choose another {what}")
    if out.exists() and not out.is_dir():
        raise CliError(f"{what} {out} exists and is not a folder; choose another {what}")
    return out
