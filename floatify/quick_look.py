"""The quick look of ``fit(eval_every=K, eval_loader=...)``: a cheap accuracy check between epochs.

Every K epochs :func:`floatify.fit` scores the model (the EMA with ``model_ema``) on the first
:data:`QUICK_LOOK_BATCHES` batches of ``eval_loader``: clean accuracy at λ = 0 and λ = 1 and robust accuracy at
λ = 1 under the quick preset's PGD with :data:`QUICK_LOOK_STEPS` steps (:func:`floatify.evaluate`, one noise draw
per point). It is a trend to watch, not a number to report (use ``floatify eval`` for those). It uses the global
RNGs and puts them back, so training continues exactly as without it.

Example:
    >>> import torch, floatify
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from floatify.quick_look import quick_look
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> data = DataLoader(TensorDataset(torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))), batch_size=4)
    >>> sorted(quick_look(model, data, eps=8 / 255))
    ['eval_clean_lam0', 'eval_clean_lam1', 'eval_robust_lam1']
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn

from floatify.run_state import preserved_rng

__all__ = ["quick_look", "quick_look_loader", "describe_epoch", "QUICK_LOOK_POINTS", "QUICK_LOOK_STEPS",
           "QUICK_LOOK_BATCHES", "QUICK_LOOK_DRAWS",
           "QUICK_LOOK_KEYS"]

QUICK_LOOK_STEPS = 3  # PGD iterations (the quick preset's PGD, fewer steps)
QUICK_LOOK_BATCHES = 4  # batches of the loader it reads
QUICK_LOOK_POINTS = 256  # test points of the loader quick_look_loader builds
QUICK_LOOK_DRAWS = 1  # noise draws per point when it scores at λ = 1
QUICK_LOOK_KEYS = ("eval_clean_lam0", "eval_clean_lam1", "eval_robust_lam1")
"""What it adds to an epoch's record (history.json, summary.csv): accuracies as fractions."""


def quick_look(model: nn.Module, loader: Iterable, eps: float) -> dict[str, float]:
    """Clean accuracy at λ = 0 and 1 and robust accuracy at λ = 1 (PGD at ``eps``) on the first batches of
    ``loader``; the global RNGs are left where they were."""
    from floatify.attack_presets import quick
    from floatify.evaluate import evaluate

    specs = [s for s in quick(eps, steps=QUICK_LOOK_STEPS) if s.kind in ("clean", "pgd") and s.noise]
    with preserved_rng():  # reason: a training RNG stream goes on as if nothing had been drawn
        report = evaluate(model, loader, lams=(0.0, 1.0), attacks=specs, score_draws=QUICK_LOOK_DRAWS,
                          max_batches=QUICK_LOOK_BATCHES, progress=False)
    clean, robust = specs[0].label, report.headline or specs[1].label

    def accuracy(lam: float, label: str) -> float:
        score = report.score(lam, label)
        return float("nan") if score is None else score.mean

    return dict(zip(QUICK_LOOK_KEYS, (accuracy(0.0, clean), accuracy(1.0, clean), accuracy(1.0, robust))))


def quick_look_loader(test, eval_every: int):
    """A loader over the first :data:`QUICK_LOOK_POINTS` points of ``test`` in :data:`QUICK_LOOK_BATCHES` batches,
    for ``fit(eval_loader=...)``; None when ``eval_every`` is 0 (no quick look).

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> loader = quick_look_loader(TensorDataset(torch.rand(300, 3, 2, 2), torch.zeros(300)), eval_every=1)
    >>> len(loader.dataset), len(loader), quick_look_loader([], eval_every=0)
    (256, 4, None)
    """
    from torch.utils.data import DataLoader, Subset

    if eval_every == 0:
        return None
    points = min(QUICK_LOOK_POINTS, len(test))
    return DataLoader(Subset(test, range(points)), batch_size=-(-points // QUICK_LOOK_BATCHES), shuffle=False)


def describe_epoch(record: dict) -> str:
    """One log line for an epoch's record: its loss and time, and the quick look where it ran.

    Example:
        >>> from floatify.quick_look import describe_epoch
        >>> describe_epoch({"loss": 1.23456, "seconds": 7.4})
        'loss 1.235 (7s)'
        >>> describe_epoch({"loss": 1.2, "seconds": 7.4, "eval_clean_lam0": 0.9, "eval_clean_lam1": 0.8,
        ...                 "eval_robust_lam1": 0.45})
        'loss 1.200 (7s); quick look: clean 90.0% (λ=0), 80.0% (λ=1), robust 45.0% (λ=1)'
    """
    text = f"loss {record['loss']:.3f} ({record['seconds']:.0f}s)"
    if all(key in record for key in QUICK_LOOK_KEYS):
        clean0, clean1, robust1 = (100 * record[key] for key in QUICK_LOOK_KEYS)
        text += f"; quick look: clean {clean0:.1f}% (λ=0), {clean1:.1f}% (λ=1), robust {robust1:.1f}% (λ=1)"
    return text
