"""Sparsity masks: every piece of mask handling lives here (as ``torch.nn.utils.prune`` keeps its own).

A pruned weight ``w`` of a layer has a bit-packed keep-mask buffer ``w_mask`` (one bit per weight, so it
travels in the state_dict). The conditioned layers read the mask through :func:`get_mask` (unpacked once
and cached until the buffer changes), :func:`floatify.sparsify` writes it with :func:`set_mask`,
:func:`floatify.freeze` bakes it into the weight with :func:`bake_mask`, and loading a sparse state_dict
into a dense layer creates the buffers first (:func:`add_mask_buffers`).

Example:
    >>> import torch
    >>> from floatify.layers.masks import pack_mask, unpack_mask
    >>> mask = torch.tensor([[True, False, True], [False, True, True]])
    >>> pack_mask(mask)
    tensor([172], dtype=torch.uint8)
    >>> torch.equal(unpack_mask(pack_mask(mask), mask.shape), mask)
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

__all__ = ["MASK_SUFFIX", "pack_mask", "unpack_mask", "get_mask", "has_mask", "set_mask", "bake_mask",
           "clear_cache", "add_mask_buffers", "CACHE_ATTR"]

MASK_SUFFIX = "_mask"
CACHE_ATTR = "_floatify_cached"  # reason: instance state keyed on the buffer's storage; never pickled


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bit-pack a boolean mask into a flat uint8 tensor (8 weights per byte, most significant bit first)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: a boolean tensor of ``shape``."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(-1)[: math.prod(shape)].reshape(shape).bool()


def has_mask(module: nn.Module, name: str) -> bool:
    """Whether weight ``name`` of ``module`` is pruned (has a mask buffer)."""
    return name + MASK_SUFFIX in module._buffers


def get_mask(module: nn.Module, name: str) -> torch.Tensor | None:
    """The boolean keep-mask of weight ``name`` (None when dense), unpacked once per buffer version."""
    packed = module._buffers.get(name + MASK_SUFFIX)
    if packed is None:
        return None
    weight = module._parameters[name]
    assert weight is not None
    if torch.compiler.is_compiling():
        return unpack_mask(packed, weight.shape)
    key = (packed._version, packed.data_ptr(), weight.shape)
    cache = module.__dict__.get(CACHE_ATTR)
    if cache is None:
        cache = module.__dict__[CACHE_ATTR] = {}
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, unpack_mask(packed, weight.shape))
    return hit[1]


def set_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Store ``mask`` (boolean, the weight's shape) as weight ``name``'s mask and zero the pruned weights.

    The caller makes sure the layer's class applies masks (:func:`floatify.layers.conditioned_class`).
    """
    weight = module._parameters[name]
    assert weight is not None
    mask = mask.view(weight.shape).to(weight.device)
    packed = pack_mask(mask)
    if has_mask(module, name):
        module._buffers[name + MASK_SUFFIX] = packed
    else:
        module.register_buffer(name + MASK_SUFFIX, packed)
    with torch.no_grad():
        weight.mul_(mask.to(weight.dtype))


def bake_mask(module: nn.Module, name: str) -> None:
    """Zero the pruned entries of weight ``name`` in place and drop its mask (a plain layer again)."""
    mask = get_mask(module, name)
    if mask is not None:
        with torch.no_grad():
            module._parameters[name].mul_(mask)  # type: ignore[union-attr]
    module._buffers.pop(name + MASK_SUFFIX, None)


def clear_cache(module: nn.Module) -> None:
    """Forget the unpacked masks of ``module`` (before its class is swapped back)."""
    module.__dict__.pop(CACHE_ATTR, None)


def add_mask_buffers(module: nn.Module, names: Iterable[str], state_dict: Mapping[str, torch.Tensor],
                     prefix: str) -> None:
    """Before ``load_state_dict``: create the mask buffers a sparse ``state_dict`` brings for a dense layer."""
    for name in names:
        key = prefix + name + MASK_SUFFIX
        if key in state_dict and not has_mask(module, name):
            module.register_buffer(name + MASK_SUFFIX, torch.empty_like(state_dict[key]))
