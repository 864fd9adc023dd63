"""FLOAT training, batteries included: :class:`TrainConfig` and :func:`fit`.

The loss and the λ sampling live in :mod:`floatify.losses` (for a training loop of your own); the run state that
``fit(checkpoint_dir=..., resume=True)`` writes and reads lives in :mod:`floatify.run_state`.

Example:
    >>> import torch, floatify
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> data = DataLoader(TensorDataset(torch.rand(16, 3, 2, 2), torch.randint(0, 3, (16,))), batch_size=8)
    >>> config = floatify.TrainConfig(epochs=2, steps=2)
    >>> history = floatify.fit(model, data, config, lr=0.05, progress=False)  # keywords override the config
    >>> [record["epoch"] for record in history], history[0]["lam_counts"]
    ([1, 2], {'0.00': 2, '1.00': 2})
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from floatify.compile import CUDA_GRAPH_MODES, check_compile_device, check_compile_options, compiled_training
from floatify.config import check_bool, check_choice, check_int, check_real, resolve
from floatify.context import validate_lam
from floatify.distributed import together
from floatify.heap import keep_freed_heap
from floatify.layers.conditioned import is_conditioned
from floatify.losses import (
    DEFAULT_ADV_WEIGHT,
    DEFAULT_STRATEGY,
    NOISE_DRAWS,
    STRATEGIES,
    LamSampler,
    float_paired_loss,
    float_step_loss,
)
from floatify.quick_look import quick_look
from floatify.run_state import (
    STATE_FILE,
    check_same_run,
    conversion_settings,
    data_signature,
    ema_state,
    load_ema_state,
    load_model_state,
    read_run_state,
    rng_state,
    save_run_state,
    set_rng_state,
    write_history,
)
from floatify.summary import param_groups
from floatify.train_guards import check_batch, check_loss, check_weights, count_classes
from floatify.walk import iter_modules

__all__ = ["TrainConfig", "fit", "train_one_epoch", "make_scheduler", "training_settings", "STATE_FILE",
           "WEIGHTS_UNAFFECTED"]

WEIGHTS_UNAFFECTED = "weights_unaffected"
"""Metadata key of the :class:`TrainConfig` fields that never change the trained weights (speed, monitoring): the
only ones a resumed run may change. Every other field is compared on resume."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`fit` (stored with every checkpoint); frozen: ``dataclasses.replace`` or fit's keywords.

    Attributes:
        epochs, lr, warmup_epochs: the schedule: ``warmup_epochs`` of linear warm-up, then cosine decay to 0.
        optimizer: ``"sgd"`` (``momentum``, nesterov) or ``"adamw"``; ``weight_decay`` on Conv/Linear weights only.
        strategy, zero_share, fixed_lam, adv_weight: the λ sampling (:class:`floatify.losses.LamSampler`).
        attack, eps, steps, step_size, noise_draw: the training attack (:func:`floatify.losses.float_loss`);
            ``step_size`` None is 2.5·eps/steps (Madry et al.), the rule the evaluation attacks use too.
        grad_clip: the maximum gradient norm (None: no clipping). amp: bf16/fp16 autocast, on CUDA only.
        seed: initialisation, data order and λ sampling (an int in [0, 2**32)).
        keep_freed_heap: on CPU (glibc), keep freed heap for reuse while training (:mod:`floatify.heap`); speed only.
        model_ema, model_ema_decay: keep an exponential moving average of the weights (timm's ``ModelEmaV3``, with
            warm-up) and return it; see :func:`fit`.
        eval_every: every K epochs a quick look at held-out data (:func:`fit`'s ``eval_loader``); 0: never.
        compile, compile_mode: train compiled (:mod:`floatify.compile`): every forward and backward of a step runs
            in graphs compiled once (``compile_mode``: ``torch.compile``'s mode, None for ``"default"``;
            ``"reduce-overhead"`` captures CUDA graphs, on CUDA only).
    """

    epochs: int = 6
    lr: float = 0.1
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    strategy: str = DEFAULT_STRATEGY
    zero_share: float = 0.25
    attack: str = "pgd"
    eps: float = 8 / 255
    steps: int = 7
    step_size: float | None = None
    noise_draw: str = "step"  # "step": one weight-noise draw per training step; "forward": one per forward
    grad_clip: float | None = None
    amp: bool = False
    seed: int = 0
    warmup_epochs: float = 0.0
    fixed_lam: float = 1.0  # the operating point of strategy "fixed" (a dedicated model)
    adv_weight: float = DEFAULT_ADV_WEIGHT  # strategy "paired": weight of the adversarial (λ = 1) term
    keep_freed_heap: bool = field(default=False, metadata={WEIGHTS_UNAFFECTED: True})
    model_ema: bool = False
    model_ema_decay: float = 0.999
    eval_every: int = field(default=0, metadata={WEIGHTS_UNAFFECTED: True})
    compile: bool = False  # compiled training (floatify.compile); compared on resume: compiled rounding differs
    compile_mode: str | None = None  # torch.compile's mode (None: "default"); with compile only

    def __post_init__(self) -> None:
        for check in (self._check_schedule, self._check_optimizer, self._check_sampling, self._check_attack,
                      self._check_switches):
            check()

    def _check_schedule(self) -> None:
        check_int("epochs", self.epochs)
        check_real("lr", self.lr, low=0.0)
        _require(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        check_real("warmup_epochs", self.warmup_epochs, low=0.0, high=self.epochs)

    def _check_optimizer(self) -> None:
        check_choice("optimizer", self.optimizer, ("sgd", "adamw"))
        check_real("weight_decay", self.weight_decay, low=0.0)
        check_real("momentum", self.momentum, low=0.0, high=1.0)
        _require(self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        # reason: the message the CLI's --grad-clip shows, with the fix (None) spelled out
        _require(self.grad_clip is None or (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0
                                            and math.isfinite(self.grad_clip)),
                 f"grad_clip must be a finite number > 0 (the max gradient norm) or None for no clipping, got "
                 f"{self.grad_clip!r}")

    def _check_sampling(self) -> None:
        check_choice("strategy", self.strategy, STRATEGIES)
        validate_lam(self.fixed_lam, "fixed_lam")
        check_real("adv_weight", self.adv_weight, low=0.0, high=1.0)
        check_real("zero_share", self.zero_share, low=0.0, high=1.0)

    def _check_attack(self) -> None:
        check_choice("attack", self.attack, ("pgd", "fgsm"))
        check_choice("noise_draw", self.noise_draw, NOISE_DRAWS)
        check_real("eps", self.eps, low=0.0, high=1.0, meaning="pixel units")
        check_int("steps", self.steps, meaning="training attack iterations")
        check_real("step_size", self.step_size, low=0.0, high=1.0, optional=True, meaning="pixel units")
        _require(self.step_size != 0, "step_size must be > 0 (pixel units), or None for 2.5·eps/steps")

    def _check_switches(self) -> None:
        for name in ("amp", "keep_freed_heap", "model_ema"):
            check_bool(name, getattr(self, name))
        check_real("model_ema_decay", self.model_ema_decay, low=0.0, high=1.0)
        _require(self.model_ema_decay < 1, f"model_ema_decay must be in [0, 1) (e.g. 0.999; the EMA keeps this "
                                           f"share per step), got {self.model_ema_decay!r}")
        check_int("eval_every", self.eval_every, minimum=0, meaning="a quick look every K epochs; 0: never")
        check_int("seed", self.seed, minimum=0)
        # reason: the data split (numpy) and DataLoader generators take seeds below 2**32
        _require(self.seed < 2**32, f"seed must be an int in [0, {2**32 - 1}], got {self.seed!r}")
        check_compile_options(self.compile, self.compile_mode)


def training_settings(cfg: TrainConfig) -> dict:
    """The settings of ``cfg`` that change the trained weights: every field not marked :data:`WEIGHTS_UNAFFECTED`.

    Example:
        >>> import floatify
        >>> from floatify.train import training_settings
        >>> settings = training_settings(floatify.TrainConfig())
        >>> "lr" in settings and "keep_freed_heap" not in settings and "eval_every" not in settings
        True
    """
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if not f.metadata.get(WEIGHTS_UNAFFECTED)}


def _check_eval_loader(cfg: TrainConfig, eval_loader: Iterable | None) -> None:
    if cfg.eval_every > 0 and eval_loader is None:
        raise ValueError(f"eval_every={cfg.eval_every} needs eval_loader (held-out (x, y) batches for the quick "
                         f"look); pass eval_loader=... or set eval_every=0")
    if cfg.eval_every == 0 and eval_loader is not None:
        raise ValueError("eval_loader is given but eval_every is 0 (never looked at); set eval_every=K for a quick "
                         "look every K epochs, or drop eval_loader")


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
    eval_loader: Iterable | None = None,
    **overrides,
) -> list[dict]:
    """Train a converted model once-for-all with FLOAT; returns one record per epoch.

    ``overrides``: :class:`TrainConfig` fields, replacing those of ``config``. SGD (or AdamW) on
    :func:`floatify.summary.param_groups` (no weight decay on α or norms), warm-up then cosine schedule, optional
    gradient clipping and AMP (CUDA). Reproducible for a fixed ``seed`` (on CPU bit for bit); works on a
    DDP-wrapped model (convert first, then wrap; shard the data with a ``DistributedSampler``).

    ``checkpoint_dir``: after every epoch the run state, ``history.json`` and ``summary.csv`` (rank 0,
    :mod:`floatify.run_state`); ``resume=True`` continues from it and ends with the weights of an uninterrupted run.
    Resuming with other settings, data, conversion, model or ``tag`` (any JSON dict of yours) is an error.
    Each batch must be float inputs and integer labels within the model's classes (one clear error otherwise,
    :mod:`floatify.train_guards`); a non-finite loss, or weights holding NaN or inf after an epoch, stop the run
    at once with a :class:`floatify.train_guards.DivergedError` (a ValueError) and nothing non-finite is saved.

    With ``model_ema`` the returned model holds the EMA weights (α, both BatchNorm sets and every buffer averaged,
    updated after each optimizer step). ``eval_every=K`` with ``eval_loader``: every K epochs a quick look (clean
    accuracy at λ = 0 and 1, robust accuracy at λ = 1 under a 3-step PGD, the first batches only; of the EMA where
    there is one) adds ``eval_clean_lam0``, ``eval_clean_lam1``, ``eval_robust_lam1`` to the epoch's record; it
    draws from the global RNGs and then restores them, so training goes on as without it.

    ``keep_freed_heap`` (CPU, glibc): while it trains glibc keeps freed heap for reuse instead of returning it and
    faulting it back in every step (benchmarks/RESULTS.md: a FLOAT step 1.038x (resnet18) / 1.039x (resnet34) a
    plain one with it, 1.067x / 1.060x with glibc's default); the price is that the process holds its peak memory,
    and glibc's thresholds stay changed afterwards (:mod:`floatify.heap`). Off by default: a library leaves its
    host's allocator alone. Instead, jemalloc or tcmalloc can be preloaded (``LD_PRELOAD=libjemalloc.so.2``), an
    allocator that keeps freed memory for reuse in the whole process.

    Example:
        >>> import torch, floatify
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
        >>> data = DataLoader(TensorDataset(torch.rand(16, 3, 2, 2), torch.randint(0, 3, (16,))), batch_size=8)
        >>> history = floatify.fit(model, data, epochs=1, steps=2, model_ema=True, progress=False)
        >>> sorted(history[0])
        ['epoch', 'lam_counts', 'loss', 'lr', 'seconds']
    """
    cfg = resolve(config, TrainConfig, overrides, "fit")
    _check_eval_loader(cfg, eval_loader)
    with together("setting up the training"):  # reason: under DDP a rank that cannot start stops every rank
        run = _set_up(model, train_loader, cfg, checkpoint_dir, tag, eval_loader)
        if resume:
            _resume_run(run)
    tune = cfg.keep_freed_heap and run.device.type == "cpu" and run.start_epoch < cfg.epochs
    compiled = compiled_training(run.inner, cfg.compile_mode) if cfg.compile and run.start_epoch < cfg.epochs \
        else contextlib.nullcontext(False)
    with keep_freed_heap() if tune else contextlib.nullcontext(), compiled:
        for epoch in range(run.start_epoch, cfg.epochs):
            _run_epoch(run, epoch, progress, on_epoch_end)
    if run.ema is not None:
        run.inner.load_state_dict(run.ema.module.state_dict())
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
    conversion: dict
    tag: dict | None
    ema: Any = None  # timm.utils.ModelEmaV3 with model_ema
    eval_loader: Iterable | None = None
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    num_classes: int | None = None  # what the labels are checked against (train_guards.count_classes)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(_unwrap(model), cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: ``warmup_epochs`` of linear warm-up ((s+1)/warm-up steps), then cosine decay to 0.

    Example:
        >>> import torch, floatify
        >>> from floatify.train import make_scheduler
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> sched = make_scheduler(opt, floatify.TrainConfig(epochs=2, warmup_epochs=1), steps_per_epoch=2)
        >>> lrs = []
        >>> for _ in range(4):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 3)); opt.step(); sched.step()
        >>> lrs  # the learning rate of each of the 4 steps
        [0.05, 0.1, 0.1, 0.05]
    """
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


def _make_ema(inner: nn.Module, cfg: TrainConfig):
    """timm's ModelEmaV3 of the converted model (every state_dict entry), with warm-up so short runs average."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(inner, decay=cfg.model_ema_decay, use_warmup=True) if cfg.model_ema else None


def _set_up(model: nn.Module, train_loader, cfg: TrainConfig, checkpoint_dir: str | Path | None,
            tag: dict | None, eval_loader: Iterable | None) -> _Run:
    """Check the model and data, seed, and build the λ sampler, optimizer, schedule, gradient scaler and EMA."""
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
    if cfg.compile:
        check_compile_device(cfg.compile_mode, device)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None and _is_main_process():
        from floatify.io import remove_stale_temporaries

        remove_stale_temporaries(ckpt_dir)  # reason: temporaries of a killed earlier run
    return _Run(model=model, inner=inner, loader=train_loader, cfg=cfg, sampler=sampler, optimizer=optimizer,
                scheduler=make_scheduler(optimizer, cfg, steps_per_epoch),
                scaler=torch.amp.GradScaler("cuda", enabled=use_amp), device=device, use_amp=use_amp,
                steps_per_epoch=steps_per_epoch, checkpoint_dir=ckpt_dir,
                signature=data_signature(train_loader, steps_per_epoch), conversion=conversion_settings(inner),
                tag=tag, ema=_make_ema(inner, cfg), eval_loader=eval_loader,
                num_classes=count_classes(inner, train_loader))


def _resume_run(run: _Run) -> None:
    """Continue from ``run.checkpoint_dir``'s run state, after checking it is the same run."""
    from floatify.checkpoint import CheckpointError

    if run.checkpoint_dir is None:
        raise FileNotFoundError("resume=True needs checkpoint_dir (where train_state.safetensors is)")
    state, path = read_run_state(run.checkpoint_dir)
    check_same_run(state, path, run.inner, settings=training_settings(run.cfg), signature=run.signature, tag=run.tag)
    load_model_state(run.inner, state["model"], path)
    try:
        run.scheduler.load_state_dict(state["scheduler"])
        run.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            run.scaler.load_state_dict(state["scaler"])
        if run.ema is not None:
            load_ema_state(run.ema, state["ema"], path)
        set_rng_state(state["rng"], run.loader)
        run.history, run.start_epoch = list(state["history"]), int(state["epoch"]) + 1
        if _is_main_process():  # reason: history.json is rewritten from the checked state, never kept as found
            write_history(run.checkpoint_dir, run.history)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise CheckpointError(f"training state {path} is corrupted or from another run ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); delete it to start afresh") from None


def _run_epoch(run: _Run, epoch: int, progress: bool, on_epoch_end: Callable[[int, dict], None] | None) -> None:
    """Train one epoch, take the quick look where due, record and checkpoint it, and report it."""
    record = train_one_epoch(run, epoch, progress=progress)
    if run.eval_loader is not None and (epoch + 1) % run.cfg.eval_every == 0 and _is_main_process():
        record.update(quick_look(run.ema.module if run.ema is not None else run.inner, run.eval_loader, run.cfg.eps))
    check_weights(run.inner, epoch + 1, checkpoint_dir=run.checkpoint_dir,  # reason: never save a diverged model
                  epochs_saved=len(run.history) if run.checkpoint_dir is not None else 0)
    run.history.append(record)
    if run.checkpoint_dir is not None and _is_main_process():
        _save_checkpoint(run, epoch)
    if on_epoch_end is not None:
        on_epoch_end(epoch + 1, record)


def train_one_epoch(run: _Run, epoch: int, *, progress: bool = True) -> dict:
    """One pass over the training data (``epoch`` counts from 0); returns the epoch's record."""
    from tqdm.auto import tqdm

    run.model.train()
    if hasattr(getattr(run.loader, "sampler", None), "set_epoch"):
        run.loader.sampler.set_epoch(epoch)
    t0, total_loss, n = time.perf_counter(), 0.0, 0
    lam_counts: dict[str, int] = {}
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{run.cfg.epochs}", disable=not progress, leave=False)
    saved = len(run.history) if run.checkpoint_dir is not None else 0  # reason: what a divergence leaves behind
    for i, (x, y) in enumerate(bar):
        global_step = epoch * run.steps_per_epoch + i
        check_batch(x, y, run.num_classes)  # reason: a raw torch error (or a CUDA assert) becomes one line
        lams = run.sampler(global_step)
        for v in lams:
            lam_counts[f"{v:.2f}"] = lam_counts.get(f"{v:.2f}", 0) + 1
        loss = _train_step(run, x, y, lams, global_step)
        check_loss(loss, epoch + 1, i + 1, run.cfg.lr, checkpoint_dir=run.checkpoint_dir,
                   epochs_saved=saved)
        total_loss += loss * len(y)
        n += len(y)
        bar.set_postfix(loss=f"{total_loss / n:.3f}", lam=",".join(f"{v:.2f}" for v in lams))
    if n == 0:
        raise ValueError(f"epoch {epoch + 1} got no batches from the training data: nothing was trained")
    return {"epoch": epoch + 1, "loss": total_loss / n, "lr": run.scheduler.get_last_lr()[0],
            "seconds": time.perf_counter() - t0, "lam_counts": lam_counts}


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor, lams: list[float], global_step: int) -> float:
    """One optimizer update on the batch (x, y) at the sampled ``lams``; returns the batch's loss."""
    cfg, device = run.cfg, run.device
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    attack = dict(attack=cfg.attack, eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size, noise_draw=cfg.noise_draw)
    # reason: gradients freed before the step's forwards, not after: the previous step's gradients (one
    # weight-sized set) would otherwise stay alive through the attack iterations
    run.optimizer.zero_grad(set_to_none=True)
    if cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES:
        torch.compiler.cudagraph_mark_step_begin()  # reason: a new step: the previous step's graph outputs are dead
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
    if run.ema is not None:
        run.ema.update(run.inner, step=global_step + 1)  # reason: timm counts updates from 1 (warm-up's first: a copy)
    return loss.item()


def _save_checkpoint(run: _Run, epoch: int) -> None:
    """The run state (everything to resume exactly), ``history.json`` and ``summary.csv``, each atomic."""
    assert run.checkpoint_dir is not None
    save_run_state(run.checkpoint_dir, {
        "model": run.inner.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "ema": ema_state(run.ema),
        "epoch": epoch, "history": run.history, "rng": rng_state(run.loader), "config": asdict(run.cfg),
        "data": run.signature, "conversion": run.conversion, "tag": run.tag})
    write_history(run.checkpoint_dir, run.history)


def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0
