"""``freeze(model, lam)``: back to a plain model at one operating point (like peft's merge_and_unload).

Every conditioned layer gets its original class back, one noise draw ``λ·α·η`` is baked into its
weight (none at λ = 0; a weight tied between layers gets one draw and stays shared), each dual
BatchNorm keeps the set λ selects, and floatify's extra parameters and buffers are removed. The
result has the original state_dict keys, no overhead and works with ``torch.export``; it is
deterministic, so it is no longer a randomised defence.

Example:
    >>> import torch, floatify
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)))
    >>> plain = floatify.freeze(model, lam=0.3, seed=0)
    >>> type(plain[0]) is torch.nn.Linear, sorted(plain.state_dict())[:2]
    (True, ['0.bias', '0.weight'])
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn

from floatify.config import check_int
from floatify.context import validate_lam
from floatify.convert import SKIPPED_ATTR
from floatify.layers.conditioned import ALPHA_SUFFIX, is_conditioned, is_floatify_layer, original_class
from floatify.layers.dual_bn import dual_bn_entries, mixed_bn_value
from floatify.layers.masks import bake_mask, clear_cache
from floatify.layers.registry import is_batchnorm
from floatify.walk import iter_modules

__all__ = ["freeze", "FROZEN_ATTR"]

FROZEN_ATTR = "_floatify_frozen"  # reason: floatify.save records the operating point a frozen model was fixed at


def freeze(model: nn.Module, lam: float, seed: int | None = None, *, inplace: bool = False) -> nn.Module:
    """Return a plain copy of ``model`` fixed at operating point ``lam``.

    Args:
        model: a model returned by :func:`floatify.convert`.
        lam: the operating point in [0, 1] to bake in.
        seed: seed of the single noise draw (None: the global torch RNG).
        inplace: modify ``model`` itself instead of a deep copy.
    """
    lam = validate_lam(lam)
    check_int("seed", seed, minimum=0, optional=True, meaning="of the noise draw")
    if seed is not None and seed >= 2**64:  # reason: the largest seed a torch.Generator takes
        raise ValueError(f"seed (of the noise draw) must be an int below 2**64, got {seed!r}")
    if not any(is_conditioned(m) for _, m in iter_modules(model)):
        raise ValueError(f"{type(model).__name__} has no floatify layers: freeze() expects a converted model")
    if not inplace:
        model = copy.deepcopy(model)
    generators: dict[torch.device, torch.Generator] = {}

    def generator(device: torch.device) -> torch.Generator | None:
        if seed is None:
            return None
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(seed)
        return generators[device]

    drawn: set[int] = set()  # reason: a weight tied between layers is one Parameter: one draw, still shared
    with torch.no_grad():
        for _, module in iter_modules(model):
            if not is_floatify_layer(module):
                continue
            if is_batchnorm(module):
                _freeze_batchnorm(module, lam)
            else:
                _freeze_weights(module, lam, generator, drawn)
            clear_cache(module)
            module.__class__ = original_class(module)
    model.__dict__.pop(SKIPPED_ATTR, None)
    model.__dict__[FROZEN_ATTR] = {"lam": lam, "seed": seed}
    return model


def _freeze_weights(module: nn.Module, lam: float, generator: Callable[[torch.device], torch.Generator | None],
                    drawn: set[int]) -> None:
    for name in type(module)._floatify_weights:  # type: ignore[attr-defined]
        weight = module._parameters[name]
        if lam > 0 and name + ALPHA_SUFFIX in module._parameters and weight is not None and id(weight) not in drawn:
            drawn.add(id(weight))
            weight.copy_(module.floatify_noisy_weight(name, lam, generator=generator(weight.device)))  # type: ignore[operator]
        module._parameters.pop(name + ALPHA_SUFFIX, None)
        bake_mask(module, name)  # reason: pruned weights stay exactly zero (the noisy weight is masked already)


def _freeze_batchnorm(module: nn.Module, lam: float) -> None:
    # reason: the value the model reads at λ in eval mode: with bn_mix="interpolate" the mixed set, not the
    # adversarial one (freeze(model, 0.3) once baked the λ = 1 BatchNorm in)
    values = {name: mixed_bn_value(module, name, lam).clone() for _, name, _ in dual_bn_entries(module)}
    for store, name, adv_name in list(dual_bn_entries(module)):
        store.pop(adv_name, None)
        store[name].copy_(values[name])
