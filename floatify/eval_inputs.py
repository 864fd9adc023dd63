"""What :func:`floatify.evaluate` accepts, checked per batch before any attack runs on it, and the notes an
evaluation gets when its data or model says little (a note in the report and a ``FloatifyWarning``).

Every refusal is one line naming the problem and the fix.

Example:
    >>> import torch
    >>> from floatify.eval_inputs import check_batch
    >>> check_batch(torch.rand(2, 3, 4, 4), torch.tensor([0, 1]))  # fine: nothing to say
    >>> check_batch(torch.full((2, 3), float("nan")), torch.tensor([0, 1]))
    Traceback (most recent call last):
    ...
    ValueError: inputs hold 6 NaN or infinite values; they must be finite images in [0, 1]: clean or drop those points
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from floatify.context import lam as at_lam
from floatify.layers.conditioned import is_conditioned

__all__ = ["check_batch", "label_bound", "check_classes", "output_classes", "notes_on"]


def check_batch(x: object, y: object) -> None:
    """One clear line for a batch the attacks cannot use: not tensors, not batch first, labels that do not match,
    non-float, NaN/inf or out-of-[0, 1] inputs, labels that are not integer class indices."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"the loader must yield (inputs, labels) tensor pairs, got ({type(x).__name__}, "
                        f"{type(y).__name__})")
    if x.dim() < 2:
        raise ValueError(f"inputs must be a batch of points, batch first (e.g. (N, C, H, W)), got shape "
                         f"{tuple(x.shape)}; add the batch dimension (x.unsqueeze(0) for one point)")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"labels must be one class index per input, shape ({len(x)},), got shape {tuple(y.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"inputs must be float images in [0, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        return  # reason: an empty batch is skipped
    if not torch.isfinite(x).all():
        raise ValueError(f"inputs hold {int((~torch.isfinite(x)).sum())} NaN or infinite values; they must be "
                         "finite images in [0, 1]: clean or drop those points")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"inputs must be images in [0, 1] (eps is in pixel units), got values in [{lo:.3g}, {hi:.3g}]"
                         "; put normalisation inside the model (floatify.models.Normalized)")
    if torch.is_floating_point(y) or torch.is_complex(y) or y.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}; pass y.long()")


def label_bound(num_classes: int | None, outputs: int) -> tuple[int, str]:
    """The number of classes labels must stay below, and where it comes from (a label past the logits is an
    obscure torch error later, a label past ``num_classes`` a wrong claim).

    Example:
        >>> from floatify.eval_inputs import label_bound
        >>> label_bound(None, 10), label_bound(100, 10)
        ((10, 'the model outputs 10 classes'), (10, 'the model outputs 10 classes, num_classes=100'))
    """
    if num_classes is None or num_classes == outputs:
        return outputs, f"the model outputs {outputs} classes"
    if num_classes < outputs:
        return num_classes, f"num_classes={num_classes}"
    return outputs, f"the model outputs {outputs} classes, num_classes={num_classes}"


def check_classes(y: torch.Tensor, classes: int, source: str) -> None:
    """A ValueError naming the bound (and ``source``, where it comes from) when a label is outside [0, classes)."""
    lo, hi = y.min().item(), y.max().item()
    if lo < 0 or hi >= classes:
        raise ValueError(f"labels must lie in [0, {classes - 1}] ({source}), got [{lo}, {hi}]; evaluate on data of "
                         f"the model's classes, labelled 0..{classes - 1}")


def output_classes(model: nn.Module, x: torch.Tensor) -> int:
    """The number of classes, read off the model's output for one point (a ValueError if it is not logits)."""
    with torch.no_grad(), at_lam(0.0):  # reason: deterministic, draws no noise
        out = model(x[:1])
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return (batch, classes) logits, got {shape}; evaluate a classifier")
    return out.shape[1]


def notes_on(model: nn.Module, lams: Iterable[float], labels: set[int]) -> list[str]:
    """What a reader of the report must know about the evaluation as a whole: a model without conditioned
    layers evaluated at λ > 0 (λ does nothing), test points of one class (``labels``: those seen, two suffice).

    Example:
        >>> import torch
        >>> from floatify.eval_inputs import notes_on
        >>> notes_on(torch.nn.Linear(4, 2), [0.0], {0, 1})  # a plain model at λ = 0 is a fine baseline
        []
    """
    notes = []
    if any(v > 0 for v in lams) and not any(is_conditioned(m) for m in model.modules()):
        notes.append("the model has no conditioned layers: λ has no effect, every λ row measures the same plain "
                     "model; convert it with floatify.convert (and train it) to get a dial")
    if len(labels) == 1:
        notes.append(f"every test point has label {next(iter(labels))}: the accuracies measure one class only "
                     "(a model that always answers it scores 100%); evaluate on data with several classes")
    return notes
