"""The noisy weight's arithmetic: std(W), and its fast paths for inference, eager and compiled.

:func:`held_std` is std(W) once per held draw (training); :func:`inference_noisy_weight` is the CPU no-grad eager
path (one ``torch.add`` with a cached std); :func:`noisy_weight_op` (``torch.ops.floatify.noisy_weight``) is the
same path as one opaque operator for compiled CPU inference, which :func:`compiled_inference_weight` chooses.

Example:
    >>> import torch
    >>> from floatify.layers.noisy_weight import weight_std
    >>> round(float(weight_std(torch.tensor([1.0, 2.0, 3.0]), None)), 4)
    1.0
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from floatify.layers.masks import CACHE_ATTR
from floatify.layers.noise import get_noise_source, in_graph_capture, standard_normal

__all__ = ["held_std", "weight_std", "cpu_std", "inference_noisy_weight", "noisy_weight_op",
           "compiled_inference_weight"]


def held_std(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """std(W) over the kept entries, once per held draw: the CPU fast formula where it applies."""
    w = weight.detach()
    fast = cpu_std(w if mask is None else w[mask]) if w.device.type == "cpu" else None
    return weight_std(weight, mask) if fast is None else torch.tensor(fast, dtype=torch.float32, device=w.device)


def weight_std(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    w = weight.detach()
    if mask is not None and in_graph_capture():
        # reason: w[mask] has a data-dependent shape, which a compiled graph breaks on; the same std from masked sums
        keep = mask.to(torch.float32)
        n = keep.sum()
        mean = (w.float() * keep).sum() / n.clamp_min(1)
        return (((w.float() - mean) * keep).square().sum() / (n - 1).clamp_min(1)).sqrt()
    if mask is not None:
        w = w[mask]
    if w.numel() < 2:
        return w.new_zeros((), dtype=torch.float32)
    return w.float().std()


def cpu_std(w: torch.Tensor) -> float | None:
    """std of a detached CPU float32 tensor as a float, from Σw and Σw² (two BLAS-speed passes); else None.

    reason: twice as fast as ``Tensor.std`` with a third of the small ops per layer; the formula cancels when the
    mean dominates, so then (never seen for a trained conv/linear weight) it answers None and the caller uses
    ``Tensor.std``. Not on other devices: reading the sums back would synchronise them.
    """
    if w.device.type != "cpu" or w.dtype != torch.float32 or w.numel() < 2 or in_graph_capture():
        return None  # reason: captured graphs compute std in-graph (no data-dependent branch)
    flat = w.reshape(-1)
    n = flat.numel()
    total, sq = float(flat.sum()), float(torch.dot(flat, flat))
    mean_sq = total * total / n
    if mean_sq > 0.5 * sq:
        return None
    return math.sqrt(max(sq - mean_sq, 0.0) / (n - 1))


def inference_noisy_weight(module: nn.Module, name: str, weight: torch.Tensor, alpha: torch.Tensor,
                           lam: float) -> torch.Tensor | None:
    """``W + λ·α·std(W)·η`` in one ``torch.add`` with a Python scale: the CPU no-grad path (None elsewhere).

    reason: at batch 1 a layer's noisy weight is a handful of tiny ops whose fixed cost (µs each, ×60 layers in
    a mobilenet) and std's pass over W rival the forward. Without autograd the scalar work is done in Python
    floats and std(W) is cached per weight, keyed on its version, storage and a probe of 64 strided entries —
    the probe catches writes through ``weight.data`` (which leave the version unchanged) that touch the whole
    tensor (``.data.copy_``, ``.data.mul_``, re-initialisation). A ``.data`` write to a few entries only, in
    this no-grad path, keeps the old std until the weight's version or those entries change.
    """
    cache = module.__dict__.get(CACHE_ATTR)
    if cache is None:
        cache = module.__dict__[CACHE_ATTR] = {}
    std = _cached_std(cache, ("std", name), weight)
    return None if std is None else torch.add(weight, standard_normal(weight), alpha=lam * float(alpha) * std)


def _cached_std(cache: dict, slot: object, weight: torch.Tensor) -> float | None:
    """std(W) of a CPU float32 weight as a float, kept in ``cache[slot]`` while W's version, storage and a probe of
    64 strided entries stay the same; None where the fast formula does not apply."""
    w = weight.detach()
    if w.device.type != "cpu" or w.dtype != torch.float32 or w.numel() < 2:
        return None
    flat = w.reshape(-1)
    key = (weight._version, w.data_ptr(), float(flat[:: max(1, flat.numel() // 64)].sum()))
    hit = cache.get(slot)
    if hit is None or hit[0] != key:
        std = cpu_std(w)
        if std is None:
            return None
        hit = cache[slot] = (key, std)
    return hit[1]


_OP_STDS: dict[tuple[int, int], tuple[tuple, float]] = {}
_OP_STDS_LIMIT = 4096  # reason: one entry per weight the op has seen; a process that builds model after model
# would otherwise keep every dead weight's entry


@torch.library.custom_op("floatify::noisy_weight", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def noisy_weight_op(weight: torch.Tensor, alpha: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``W + λ·α·std(W)·η`` with η a bank window at a fresh offset: a compiled CPU forward's noisy weight, no grad.

    reason: a graph cannot hold the eager path's Python offset, so in-graph the window is an indexed read
    (``bank[arange + offset]``) that the CPU kernels do element by element, and std(W) a reduction per forward: a
    compiled resnet18 at λ = 1, batch 1, took 2.75x the compiled original against the eager path's 1.24x. This op
    is opaque to the compiler (one call per weight) and runs the eager path: a contiguous bank view, the cached
    std, one ``torch.add``. Tagged nondeterministic, so no compiler pass folds or merges two calls. CPU and no
    autograd only (:func:`compiled_inference_weight` decides): a CUDA graph would replay one offset forever.

    Example:
        >>> import torch
        >>> w = torch.randn(8, 8)
        >>> a = torch.ops.floatify.noisy_weight(w, torch.tensor(0.1), torch.tensor(1.0))
        >>> b = torch.ops.floatify.noisy_weight(w, torch.tensor(0.1), torch.tensor(1.0))
        >>> a.shape, bool((a != b).any())
        (torch.Size([8, 8]), True)
    """
    if len(_OP_STDS) > _OP_STDS_LIMIT:
        _OP_STDS.clear()
    std = _cached_std(_OP_STDS, (weight.data_ptr(), weight.numel()), weight)
    if std is None:
        std = float(weight_std(weight, None))
    return torch.add(weight, standard_normal(weight), alpha=float(lam) * float(alpha) * std)


@noisy_weight_op.register_fake
def _noisy_weight_shape(weight: torch.Tensor, alpha: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(weight)


def compiled_inference_weight(weight: torch.Tensor, alpha: torch.Tensor, lam: torch.Tensor,
                              masked: bool) -> torch.Tensor | None:
    """Under ``torch.compile``: the noisy weight as one :func:`noisy_weight_op` call where that is the fast and
    safe path (CPU float32, no autograd, no sparsity mask, the bank, not an export); else None (the in-graph draw).

    Example:
        >>> import torch
        >>> compiled_inference_weight(torch.ones(2), torch.tensor(0.1), torch.tensor(1.0), masked=False) is None
        True
    """
    # reason: outside a graph capture the eager paths serve; an export must draw in its program (no bank)
    if not torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.is_grad_enabled() or masked:
        return None
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or get_noise_source() != "bank":
        return None
    return noisy_weight_op(weight, alpha, lam)
