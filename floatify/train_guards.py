"""What :func:`floatify.fit` checks while it trains: each batch's inputs and labels, and that the training has not
diverged (a non-finite loss or non-finite weights), each with one line saying where and why.

A diverged run stops at once with :class:`DivergedError` (a ``ValueError``): nothing non-finite is ever written to
the checkpoint folder, so the last epoch saved there stays the last good one.

Example:
    >>> import torch
    >>> from floatify.train_guards import check_batch
    >>> try:
    ...     check_batch(torch.rand(4, 3, 8, 8), torch.tensor([0.0, 1.0, 2.0, 1.0]), num_classes=3)
    ... except TypeError as err:
    ...     print(str(err).split(";")[0])
    fit() needs integer class labels (torch.long), got a batch of torch.float32 labels
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from floatify.io import first_non_finite

__all__ = ["DivergedError", "check_batch", "check_loss", "check_weights", "count_classes"]


class DivergedError(ValueError):
    """Training produced a non-finite loss or non-finite weights."""


def check_batch(x: object, y: object, num_classes: int | None = None) -> None:
    """One clear TypeError/ValueError unless ``(x, y)`` is an image batch with integer labels in
    ``[0, num_classes)`` (the range is checked where ``y`` is on the CPU: no device synchronisation)."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"fit() needs (inputs, labels) tensor batches from the loader, got ({type(x).__name__}, "
                        f"{type(y).__name__})")
    if not x.is_floating_point():
        raise TypeError(f"fit() needs floating-point inputs in [0, 1], got a batch of {x.dtype}; convert the images "
                        f"(e.g. torchvision's ToTensor, or x.float() / 255)")
    if y.dim() != 1 or x.dim() < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"fit() needs a batch of N inputs (N, C, H, W) and N labels (N,), got inputs "
                         f"{tuple(x.shape)} and labels {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"fit() needs integer class labels (torch.long), got a batch of {y.dtype} labels; pass the "
                        f"class indices, not one-hot or probability targets")
    if num_classes is not None and y.device.type == "cpu" and y.numel():
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"fit(): a label {low if low < 0 else high} is outside the model's {num_classes} "
                             f"classes [0, {num_classes - 1}]; build the model with as many classes as the data has")


def count_classes(model: nn.Module, loader: Any) -> int | None:
    """The number of classes ``model`` scores, from one evaluation-mode forward of the first input of ``loader``'s
    dataset (read by index: the loader's order, the global RNGs and the model's mode stay as they were); None where
    the dataset cannot be indexed or the output is not (N, classes) logits. Called before training (and before any
    compiled forward)."""
    from floatify.run_state import preserved_rng

    dataset = getattr(loader, "dataset", None)
    was_training = model.training
    try:
        with preserved_rng(), torch.no_grad():  # reason: reading an augmented item draws from the global RNG
            item = dataset[0] if dataset is not None and hasattr(dataset, "__getitem__") and len(dataset) else None
            x = item[0] if isinstance(item, (tuple, list)) and item else None
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                return None  # reason: check_batch names a bad input itself, at the first batch
            model.eval()
            out = model(x.unsqueeze(0).to(next(model.parameters()).device))
    except (TypeError, NotImplementedError, RuntimeError, ValueError, IndexError, AssertionError):
        return None  # reason: a dataset without indexing or length, or an input the model cannot take: the first
        # batch's check_batch (or the step itself) says what is wrong
    finally:
        model.train(was_training)
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def _saved_note(checkpoint_dir: Path | None, epochs_saved: int) -> str:
    if checkpoint_dir is None:
        return "nothing was saved"
    if epochs_saved == 0:
        return f"nothing was saved to {checkpoint_dir}"
    return f"the last good state (epoch {epochs_saved}) is kept in {checkpoint_dir}"


def check_loss(loss: float, epoch: int, step: int, lr: float, *, checkpoint_dir: Path | None,
               epochs_saved: int) -> None:
    """A :class:`DivergedError` (one line: where, the likely cause, what was kept) unless ``loss`` is finite.

    ``epoch`` and ``step`` count from 1.

    Example:
        >>> from floatify.train_guards import check_loss
        >>> try:
        ...     check_loss(float("nan"), 1, 2, 1e30, checkpoint_dir=None, epochs_saved=0)
        ... except ValueError as err:
        ...     print(str(err).split(";")[0])
        training diverged: the loss is nan at epoch 1, step 2 (lr 1e+30)
    """
    if math.isfinite(loss):
        return
    first = "the inputs, labels or initial weights hold NaN or inf" if step == 1 and epoch == 1 else \
        "a learning rate too large"
    raise DivergedError(f"training diverged: the loss is {loss} at epoch {epoch}, step {step} (lr {lr:g}); likely "
                        f"causes: {first}, non-finite or huge initial weights (an initial checkpoint), or a huge "
                        f"alpha_init; training stopped and {_saved_note(checkpoint_dir, epochs_saved)}")


def check_weights(model: nn.Module, epoch: int, *, checkpoint_dir: Path | None, epochs_saved: int) -> None:
    """A :class:`DivergedError` naming the first parameter or buffer of ``model`` holding NaN or inf (checked after
    each epoch, before it is saved)."""
    bad = first_non_finite(dict(model.state_dict()))
    if bad is not None:
        raise DivergedError(f"training diverged: '{bad}' holds NaN or inf after epoch {epoch}; likely causes: a "
                            f"learning rate too large, or a huge alpha_init; training stopped and "
                            f"{_saved_note(checkpoint_dir, epochs_saved)}")
