"""FLOAT training: the once-for-all loss, λ sampling strategies and a batteries-included ``fit``.

Per step, for a batch (x, y) and a sampled λ::

    x_adv = PGD(model at λ, x, y)        # torchattacks, BatchNorm in eval, weight noise ON
    loss  = (1 - λ)·CE(model_λ(x), y) + λ·CE(model_λ(x_adv), y)

Inputs are images in [0, 1]: normalisation belongs inside the model (:class:`floatify.models.Normalized`),
so eps is in pixel units.

"Step" names four different things here; each name says which:

* a **training step** is one batch and one optimizer update. ``global_step`` counts them from 0 across
  epochs (the argument of :class:`LamSampler`, which picks the step's λ); ``steps_per_epoch`` is the
  number of batches in an epoch;
* ``steps`` (:func:`float_loss`, :class:`TrainConfig`, ``--steps``) is the number of **PGD iterations** of
  the training attack inside one training step;
* ``step_size`` is the **PGD step size** of one such iteration, L∞ in pixel units (None: 2.5·eps/steps;
  :attr:`floatify.attacks.AttackSpec.pgd_step` on the evaluation side). It is unrelated to α, the per-layer
  noise scale;
* ``noise_draw="step"`` is a **noise-draw mode**: one weight-noise draw held for the whole training step
  (the attack's iterations and the loss), as opposed to ``"forward"``, a fresh draw per forward pass.

The public keyword names (``steps``, ``step_size``, ``noise_draw="step"``) are stored in checkpoints and
the CLI, so they keep their spelling.

Example (your own loop):
    >>> import torch, floatify
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> from floatify.summary import param_groups
    >>> from floatify.train import LamSampler, float_step_loss
    >>> opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.1)
    >>> sampler = LamSampler("binary", seed=0)
    >>> x, y = torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))
    >>> loss = float_step_loss(model, x, y, sampler(global_step=0), eps=8 / 255, steps=2)
    >>> loss.backward(); opt.step()
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from floatify.attacks import make_attack
from floatify.context import constant_weights, hold_noise, operating_point, recompute_saved, validate_lam
from floatify.convert import iter_modules
from floatify.heap import keep_freed_heap
from floatify.layers.conditioned import ALPHA_SUFFIX, is_conditioned
from floatify.summary import param_groups

__all__ = ["LamSampler", "float_loss", "float_step_loss", "float_paired_loss", "fit", "TrainConfig", "STRATEGIES",
           "DEFAULT_STRATEGY", "DEFAULT_ADV_WEIGHT", "make_scheduler", "train_one_epoch"]

STRATEGIES = ("paired", "binary", "oat", "uniform", "fixed")
NOISE_DRAWS = ("step", "forward")
# Chosen by benchmarks/tradeoff.py (the smallest gap to models trained at one λ, 3 seeds; RESULTS.md).
DEFAULT_STRATEGY = "paired"
DEFAULT_ADV_WEIGHT = 0.75
OAT_VALUES = (0.0, 0.1, 0.2, 0.3, 0.4, 1.0)
RESUMABLE_CHANGES = ("keep_freed_heap",)  # TrainConfig fields a resumed run may change (speed only)


class LamSampler:
    """Which λ a training step uses, reproducibly and identically on every DDP rank.

    Strategies:
        ``"paired"``: every example is used twice per step: clean at λ = 0 and adversarially (PGD, noise at
            λ = 1) — the binary strategy's two ends on the whole batch rather than half of it each, with the
            adversarial term weighted ``adv_weight`` (:func:`float_paired_loss`). The PGD cost per step is plain
            PGD-AT's.
        ``"binary"``: the FLOAT reference code: each batch is split in two halves, one clean (λ = 0) and
            one adversarial with the noise at λ = 1; the loss is the mean of the two.
        ``"oat"``: OAT's discrete set {0, .1, .2, .3, .4, 1} with a fixed share ``zero_share`` of λ = 0
            (the rest uniform over the other values), one λ per batch.
        ``"uniform"``: λ = 0 with probability ``zero_share``, else λ ~ U(0, 1], one per batch. (reason: the
            clean BatchNorm only trains at exactly λ = 0; a pure U[0, 1] never hits it and λ = 0 stayed at
            chance accuracy in benchmarks/tradeoff.py.)

        ``"fixed"``: always ``values[0]``: a model dedicated to one operating point (the anchor a once-for-all
            model is compared with).

    ``sampler(global_step)`` returns the list of λ for that training step (one per equal batch chunk;
    ``global_step`` counts optimizer updates from 0 across epochs). It depends only on ``(seed, global_step)``,
    never on global RNG state, so every rank of a DDP job draws the same λ. (The keyword ``step=`` still
    works, with a DeprecationWarning, for one release.)
    """

    def __init__(self, strategy: str = DEFAULT_STRATEGY, *, seed: int = 0, zero_share: float = 0.25,
                 values: Sequence[float] = OAT_VALUES):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown λ-sampling strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
        if not 0.0 <= zero_share <= 1.0:
            raise ValueError(f"zero_share must be in [0, 1], got {zero_share!r}")
        self.strategy, self.seed, self.zero_share = strategy, int(seed), float(zero_share)
        self.values = [validate_lam(v, "values") for v in values]
        self._nonzero = [v for v in self.values if v > 0]

    def __call__(self, global_step: int | None = None, *, step: int | None = None) -> list[float]:
        if step is not None:  # reason: the argument was called `step` until it was renamed; one release
            if global_step is not None:
                raise TypeError("pass global_step only (step is its deprecated name)")
            warnings.warn("LamSampler(step=...) is deprecated; use global_step=...", DeprecationWarning,
                          stacklevel=2)
            global_step = step
        if global_step is None:
            raise TypeError("LamSampler() missing the argument global_step (the training step, counted from 0)")
        if self.strategy in ("binary", "paired"):
            return [0.0, 1.0]
        if self.strategy == "fixed":
            return [self.values[0]]
        rng = random.Random(self.seed * 1_000_003 + int(global_step))
        if self.strategy == "uniform":
            return [0.0] if rng.random() < self.zero_share else [1.0 - rng.random()]  # U(0, 1]
        if rng.random() < self.zero_share or not self._nonzero:
            return [0.0]
        return [rng.choice(self._nonzero)]

    def __repr__(self) -> str:
        return f"LamSampler({self.strategy!r}, seed={self.seed}, zero_share={self.zero_share})"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def float_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    *,
    attack: str | Callable | None = "pgd",
    eps: float = 8 / 255,
    steps: int = 7,
    step_size: float | None = None,
    noise_draw: str = "step",
) -> torch.Tensor:
    """``(1 - λ)·CE(model_λ(x), y) + λ·CE(model_λ(x_adv), y)``, with x_adv from torchattacks at the same λ.

    ``attack`` is ``"pgd"`` (default), ``"fgsm"`` (fast), a ready torchattacks object, or any callable
    ``attack(x, y) -> x_adv``. The attack runs on the model at λ with the weight noise ON and BatchNorm
    in eval mode (torchattacks switches the model to eval and back); it uses ``torch.autograd.grad`` on
    the input only, so parameter gradients are untouched. No attack runs at λ = 0, and at λ = 1 the clean
    term (weight 0) is not computed.

    ``noise_draw``: ``"step"`` (default) draws the weight noise once for the call — the attack iterations
    and the loss see the same draw (:func:`floatify.context.hold_noise`); ``"forward"`` draws it afresh on every
    forward, like the FLOAT/PNI reference code, at about 1.4× the step time on CPU (benchmarks/RESULTS.md
    compares the two).
    """
    lam = validate_lam(lam)
    if noise_draw not in NOISE_DRAWS:
        raise ValueError(f"noise_draw must be one of {', '.join(NOISE_DRAWS)}, got {noise_draw!r}")
    hold = hold_noise(recompute=False) if noise_draw == "step" and lam > 0.0 else contextlib.nullcontext()
    with operating_point(lam), hold:
        with recompute_saved():
            loss = F.cross_entropy(model(x), y) if lam < 1.0 else None
        if loss is not None and lam == 0.0:
            return _touch_unused(model, loss)
        if isinstance(attack, str):
            run_attack = make_attack(model, attack, eps, steps, step_size if attack != "fgsm" else None)
        elif attack is None:
            raise ValueError("attack is None but λ > 0: pass 'pgd', 'fgsm' or a torchattacks attack")
        else:
            run_attack = attack
        # reason: the attack needs input gradients only, so its noisy weights are constants, held as one set; where
        # the previous step's gradients are still alive the layers recompute them per read instead, and the hooks
        # keep the ones the attack saves for backward as recipes
        attack_recompute = recompute_saved if _gradients_alive(model) else contextlib.nullcontext
        with constant_weights(), attack_recompute():
            x_adv = run_attack(x, y).detach()
        with recompute_saved():
            adv_loss = F.cross_entropy(model(x_adv), y)
    total = adv_loss if loss is None else (1.0 - lam) * loss + lam * adv_loss
    return _touch_unused(model, total)


def float_step_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lams: Sequence[float], **kwargs
) -> torch.Tensor:
    """Mean :func:`float_loss` over equal batch chunks, one per λ in ``lams`` (a :class:`LamSampler` output)."""
    if len(lams) == 1:
        return float_loss(model, x, y, lams[0], **kwargs)
    chunks = list(zip(torch.tensor_split(x, len(lams)), torch.tensor_split(y, len(lams))))
    losses = [float_loss(model, cx, cy, v, **kwargs) for (cx, cy), v in zip(chunks, lams) if len(cy)]
    return torch.stack(losses).mean()


def float_paired_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv_weight: float = DEFAULT_ADV_WEIGHT, **kwargs
) -> torch.Tensor:
    """Strategy ``"paired"``: ``(1 - w)·CE(model_0(x), y) + w·CE(model_1(x_adv), y)`` on the whole batch.

    The clean term runs at λ = 0 (clean BatchNorm, no noise), the adversarial one at λ = 1 (adversarial
    BatchNorm, noise on, PGD at λ = 1); ``kwargs`` go to :func:`float_loss`. Intermediate λ are served by the
    interpolated BatchNorm and the noise scale (``bn_mix``, ``bn_curve`` in :class:`floatify.FloatConfig`).
    """
    if not 0.0 <= adv_weight <= 1.0:
        raise ValueError(f"adv_weight must be in [0, 1], got {adv_weight!r}")
    clean = float_loss(model, x, y, 0.0, **kwargs)
    adversarial = float_loss(model, x, y, 1.0, **kwargs)
    return (1.0 - adv_weight) * clean + adv_weight * adversarial


def _gradients_alive(model: nn.Module) -> bool:
    """True when a conditioned weight still has a gradient (``zero_grad`` runs after the forwards in this loop)."""
    params = dict(model.named_parameters(remove_duplicate=False))  # reason: a tied weight under each of its names
    weights = (params.get(name[: -len(ALPHA_SUFFIX)]) for name in params if name.endswith(ALPHA_SUFFIX))
    return any(w is not None and w.grad is not None for w in weights)


def _touch_unused(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """Under DDP, make every parameter part of the graph (with zero weight).

    reason: at λ = 0 no α and no adversarial BatchNorm is used (and at λ > 0 no clean BatchNorm);
    DDP without find_unused_parameters would fail waiting for their gradients.
    """
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        return loss
    zero = sum(p.sum() for p in model.parameters() if p.requires_grad)
    return loss + 0.0 * zero


@dataclass
class TrainConfig:
    """Settings of :func:`fit` (also written next to every checkpoint)."""

    epochs: int = 6
    lr: float = 0.1
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, nesterov) or "adamw"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    strategy: str = DEFAULT_STRATEGY
    zero_share: float = 0.25
    attack: str = "pgd"
    eps: float = 8 / 255
    steps: int = 7
    step_size: float | None = None  # None: 2.5·eps/steps (Madry et al.), the rule the evaluation attacks use too
    noise_draw: str = "step"  # "step": one weight-noise draw per training step; "forward": one per forward
    grad_clip: float | None = None
    amp: bool = False  # bf16/fp16 autocast on CUDA only
    seed: int = 0
    warmup_epochs: float = 0.0
    fixed_lam: float = 1.0  # the operating point of strategy "fixed" (a dedicated model)
    adv_weight: float = DEFAULT_ADV_WEIGHT  # strategy "paired": weight of the adversarial (λ = 1) term
    keep_freed_heap: bool = True  # CPU: glibc keeps freed heap during fit (floatify.heap); speed, not weights

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {self.epochs!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown λ-sampling strategy '{self.strategy}'; choose one of {', '.join(STRATEGIES)}")
        validate_lam(self.fixed_lam, "fixed_lam")
        if isinstance(self.adv_weight, bool) or not isinstance(self.adv_weight, (int, float)) \
                or not 0.0 <= self.adv_weight <= 1.0:
            raise ValueError(f"adv_weight must be a number in [0, 1], got {self.adv_weight!r}")
        if self.attack not in ("pgd", "fgsm"):
            raise ValueError(f"training attack must be 'pgd' or 'fgsm', got {self.attack!r}")
        if self.noise_draw not in NOISE_DRAWS:
            raise ValueError(f"noise_draw must be one of {', '.join(NOISE_DRAWS)}, got {self.noise_draw!r}")
        if not 0 <= self.eps <= 1:
            raise ValueError(f"eps must be in [0, 1] (pixel units), got {self.eps!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps (training attack iterations) must be an int >= 1, got {self.steps!r}")
        if self.step_size is not None and not (isinstance(self.step_size, (int, float)) and 0 < self.step_size <= 1):
            raise ValueError(f"step_size must be in (0, 1] (pixel units), got {self.step_size!r}")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0
                                               and math.isfinite(self.grad_clip)):
            raise ValueError(f"grad_clip must be a finite number > 0 (the max gradient norm) or None for no "
                             f"clipping, got {self.grad_clip!r}")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not 0.0 <= self.zero_share <= 1.0:
            raise ValueError(f"zero_share must be in [0, 1], got {self.zero_share!r}")
        if not isinstance(self.keep_freed_heap, bool):
            raise ValueError(f"keep_freed_heap must be True or False, got {self.keep_freed_heap!r}")
        if not (isinstance(self.warmup_epochs, (int, float)) and 0 <= self.warmup_epochs <= self.epochs):
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs!r}")


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(_unwrap(model), cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


STATE_FILE = "train_state.safetensors"
LEGACY_STATE_FILE = "train_state.pt"  # reason: pickle-free resume; older runs are read with weights_only=True


def _loader_generators(loader) -> list[torch.Generator]:
    """The generators that decide a DataLoader's order (its own and its sampler's), each once."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and gen.device.type == "cpu" and all(gen is not g for g in found):
            found.append(gen)
    return found


def _rng_state(loader) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "loader": [g.get_state() for g in _loader_generators(loader)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, loader) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    gens = _loader_generators(loader)
    saved = state.get("loader", [])
    if len(saved) == len(gens):
        for g, s in zip(gens, saved):
            g.set_state(s)
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _data_signature(loader, steps_per_epoch: int) -> dict:
    dataset = getattr(loader, "dataset", None)
    try:
        size = len(dataset) if dataset is not None else None
    except TypeError:
        size = None
    return {"steps_per_epoch": steps_per_epoch, "dataset_size": size,
            "batch_size": getattr(loader, "batch_size", None)}


def _read_state(checkpoint_dir: Path) -> tuple[dict, Path]:
    from floatify.checkpoint import CheckpointError, load_state

    path = checkpoint_dir / STATE_FILE
    if path.exists() or path.is_symlink():
        state = load_state(path, "training state")
    elif (checkpoint_dir / LEGACY_STATE_FILE).exists():
        path = checkpoint_dir / LEGACY_STATE_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # weights_only refuses any pickled object that is not tensors/containers
            raise CheckpointError(
                f"refusing to load training state {path}: it is not a plain tensor checkpoint (it may hold code; "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); delete it to start afresh"
            ) from None
    else:
        raise FileNotFoundError(f"resume=True but there is no {checkpoint_dir / STATE_FILE}")
    need = ("model", "optimizer", "scheduler", "epoch", "history", "rng", "config")
    if not isinstance(state, dict) or any(k not in state for k in need):
        raise CheckpointError(f"training state {path} is incomplete (needs {', '.join(need)}); delete it to start "
                              f"afresh")
    return state, path


def read_state_tag(checkpoint_dir: str | Path):
    """The ``tag`` stored by :func:`fit` in ``checkpoint_dir``'s training state (None if absent)."""
    return _read_state(Path(checkpoint_dir))[0].get("tag")


def fit(
    model: nn.Module,
    train_loader,
    config: TrainConfig | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    tag: dict | None = None,
    **overrides,
) -> list[dict]:
    """Train a converted model once-for-all with FLOAT.

    SGD (or AdamW) on :func:`floatify.summary.param_groups` (no weight decay on α or norms), cosine schedule
    (optional linear warm-up), optional gradient clipping, optional AMP on CUDA, a checkpoint every epoch
    (``checkpoint_dir/train_state.safetensors``: tensors in safetensors, everything else JSON, no pickle) and
    ``resume=True`` to continue from it. Reproducible on CPU for a fixed ``seed`` (also the λ sampling), and a
    resumed run ends with the same weights as an uninterrupted one (the RNGs and the DataLoader's generator
    are saved; resuming with other settings, other data or another model is an error). ``tag``: any
    JSON-serialisable dict stored with the state; resuming refuses a state with a different tag. Works on a
    DDP-wrapped model (convert first, then wrap; shard the data with a ``DistributedSampler``). On CPU
    (glibc) freed heap is kept for reuse while it trains (:mod:`floatify.heap`; ``keep_freed_heap=False`` turns this
    off): the process then holds its peak memory between steps, and keeps glibc's thresholds changed afterwards.

    Returns one dict per epoch: mean loss, λ histogram, seconds.

    Example:
        >>> import torch, floatify
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
        >>> data = DataLoader(TensorDataset(torch.rand(16, 3, 2, 2), torch.randint(0, 3, (16,))), batch_size=8)
        >>> history = floatify.fit(model, data, epochs=1, steps=2, progress=False)
    """
    cfg = config if config is not None else TrainConfig()
    if overrides:
        cfg = TrainConfig(**{**asdict(cfg), **overrides})
    run = _set_up(model, train_loader, cfg, checkpoint_dir, tag)
    if resume:
        _resume_run(run)
    tune = cfg.keep_freed_heap and run.device.type == "cpu" and run.start_epoch < cfg.epochs
    heap = keep_freed_heap() if tune else contextlib.nullcontext()
    with heap:
        for epoch in range(run.start_epoch, cfg.epochs):
            record = train_one_epoch(run, epoch, progress=progress)
            run.history.append(record)
            if run.checkpoint_dir is not None and _is_main_process():
                _save_checkpoint(run, epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
    return run.history


@dataclass
class _Run:
    """What one :func:`fit` run carries from epoch to epoch."""

    model: nn.Module  # as given (possibly DDP-wrapped)
    inner: nn.Module  # the converted model itself
    loader: Any
    cfg: TrainConfig
    sampler: LamSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    use_amp: bool
    steps_per_epoch: int
    checkpoint_dir: Path | None
    signature: dict
    tag: dict | None
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: ``warmup_epochs`` of linear warm-up ((s+1)/warm-up steps), then cosine decay to 0."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    if warmup == 0:
        return cosine
    # reason: total_iters = warmup - 1 makes LinearLR's factor exactly (s + 1) / warmup, reaching 1 at the last
    # warm-up step; the cosine starts at the full learning rate at step `warmup`
    linear = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
    return SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def _set_up(model: nn.Module, train_loader, cfg: TrainConfig, checkpoint_dir: str | Path | None,
            tag: dict | None) -> _Run:
    """Check the model and data, seed, and build the λ sampler, optimizer, schedule and gradient scaler."""
    inner = _unwrap(model)
    if not any(is_conditioned(m) for _, m in iter_modules(inner)):
        raise ValueError("fit() expects a model converted with floatify.convert(model)")
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("the training data gives no batches (fewer points than batch_size with drop_last=True?): "
                         "nothing would be trained")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    sampler = LamSampler(cfg.strategy, seed=cfg.seed, zero_share=cfg.zero_share,
                         **({"values": (cfg.fixed_lam,)} if cfg.strategy == "fixed" else {}))
    optimizer = _make_optimizer(model, cfg)
    device = next(inner.parameters()).device
    use_amp = cfg.amp and device.type == "cuda"
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None and _is_main_process():
        from floatify.io import remove_stale_temporaries

        remove_stale_temporaries(ckpt_dir)  # reason: temporaries of a killed earlier run
    return _Run(model, inner, train_loader, cfg, sampler, optimizer, make_scheduler(optimizer, cfg, steps_per_epoch),
                torch.amp.GradScaler("cuda", enabled=use_amp), device, use_amp, steps_per_epoch, ckpt_dir,
                _data_signature(train_loader, steps_per_epoch), tag)


def _resume_run(run: _Run) -> None:
    if run.checkpoint_dir is None:
        raise FileNotFoundError("resume=True needs checkpoint_dir (where train_state.safetensors is)")
    state, path = _read_state(run.checkpoint_dir)
    _resume(run.inner, run.optimizer, run.scheduler, run.scaler, run.loader, run.cfg, run.signature, run.tag, state,
            path)
    run.history, run.start_epoch = list(state["history"]), int(state["epoch"]) + 1


def train_one_epoch(run: _Run, epoch: int, *, progress: bool = True) -> dict:
    """One pass over the training data (``epoch`` counts from 0); returns the epoch's record."""
    from tqdm.auto import tqdm

    cfg, loader, device = run.cfg, run.loader, run.device
    run.model.train()
    if hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)
    t0, total_loss, n = time.perf_counter(), 0.0, 0
    lam_counts: dict[str, int] = {}
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        global_step = epoch * run.steps_per_epoch + i
        lams = run.sampler(global_step)
        for v in lams:
            key = f"{v:.2f}"
            lam_counts[key] = lam_counts.get(key, 0) + 1
        attack = dict(attack=cfg.attack, eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size,
                      noise_draw=cfg.noise_draw)
        # reason: gradients freed before the step's forwards, not after: the previous step's gradients (one
        # weight-sized set) would otherwise stay alive through the attack iterations
        run.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=run.use_amp):
            if cfg.strategy == "paired":
                loss = float_paired_loss(run.model, x, y, cfg.adv_weight, **attack)
            else:
                loss = float_step_loss(run.model, x, y, lams, **attack)
        run.scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        total_loss += loss.item() * len(y)
        n += len(y)
        bar.set_postfix(loss=f"{total_loss / n:.3f}", lam=",".join(f"{v:.2f}" for v in lams))
    if n == 0:
        raise ValueError(f"epoch {epoch + 1} got no batches from the training data: nothing was trained")
    return {"epoch": epoch + 1, "loss": total_loss / n, "lam_counts": lam_counts,
            "seconds": time.perf_counter() - t0, "lr": run.scheduler.get_last_lr()[0]}


def _save_checkpoint(run: _Run, epoch: int) -> None:
    """``train_state.safetensors`` (everything to resume exactly) and ``history.json``, both atomic."""
    from floatify.checkpoint import save_state
    from floatify.io import atomic_write

    assert run.checkpoint_dir is not None
    run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    save_state(run.checkpoint_dir / STATE_FILE, {
        "model": run.inner.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "epoch": epoch,
        "history": run.history, "rng": _rng_state(run.loader), "config": asdict(run.cfg), "data": run.signature,
        "tag": run.tag})
    (run.checkpoint_dir / LEGACY_STATE_FILE).unlink(missing_ok=True)  # reason: superseded; never read again
    atomic_write(run.checkpoint_dir / "history.json", json.dumps(run.history, indent=2))


def _resume(inner, optimizer, scheduler, scaler, loader, cfg: TrainConfig, signature: dict, tag, state: dict,
            path: Path) -> None:
    from floatify.checkpoint import CheckpointError

    saved = {**asdict(TrainConfig()), **state.get("config", {})}  # reason: settings added since keep defaults
    now = asdict(cfg)
    for speed_only in RESUMABLE_CHANGES:  # reason: no effect on the weights, so a resumed run may change them
        saved.pop(speed_only, None)
        now.pop(speed_only, None)
    if saved != now:
        changed = {k for k in now if saved.get(k) != now[k]}
        raise ValueError(f"cannot resume: training settings changed since the checkpoint ({sorted(changed)}); "
                         f"use the original settings or start a fresh run")
    old = state.get("data")
    if old is not None:
        diff = sorted(k for k in signature if old.get(k) != signature[k])
        if diff:
            raise ValueError("cannot resume: the training data changed since the checkpoint ("
                             + ", ".join(f"{k} {old.get(k)} -> {signature[k]}" for k in diff)
                             + "); use the original batch size and data (e.g. --train-limit)")
    if "tag" in state and state["tag"] != tag:  # reason: states written before tags existed have none
        old_tag, new_tag = state.get("tag") or {}, tag or {}
        diff = sorted(k for k in set(old_tag) | set(new_tag) if old_tag.get(k) != new_tag.get(k))
        raise ValueError(f"cannot resume: the run's settings changed since the checkpoint ({', '.join(diff)}); "
                         f"use the original settings or start a fresh run")
    own, stored = inner.state_dict(), state["model"]
    if not isinstance(stored, dict) or set(stored) != set(own) or any(
            not isinstance(stored[k], torch.Tensor) or stored[k].shape != own[k].shape for k in own):
        extra = sorted(set(stored) - set(own))[:3] if isinstance(stored, dict) else []
        missing = sorted(set(own) - set(stored))[:3] if isinstance(stored, dict) else []
        raise CheckpointError(f"training state {path} does not fit this model (another model, dual BatchNorm or "
                              f"density setting?): missing {missing}, unexpected {extra}")
    try:
        inner.load_state_dict(stored)
        _load_scheduler(scheduler, state["scheduler"])  # reason: first; a replayed old schedule moves the lr
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], loader)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise CheckpointError(f"training state {path} is corrupted or from another run ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); delete it to start afresh") from None


def _load_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict) -> None:
    """Load a schedule's state; a state of the hand-written LambdaLR schedule of earlier versions is replayed.

    reason: runs checkpointed before the schedule was built from torch's LinearLR/CosineAnnealingLR stored a
    LambdaLR state; both compute the same learning rates, so stepping the new schedule to the stored step
    restores it. Runs before the optimizer's state is loaded, which then sets the stored learning rate.
    """
    if "lr_lambdas" not in state:
        scheduler.load_state_dict(state)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reason: "scheduler.step() before optimizer.step()" does not apply here
        for _ in range(int(state["last_epoch"])):
            scheduler.step()


def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0
