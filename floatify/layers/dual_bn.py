"""Dual BatchNorm: a BatchNorm whose parameters and statistics depend on λ.

A converted BatchNorm keeps its clean ``weight``/``bias``/``running_*`` under their original keys and gets an
adversarial copy of each (``*_adv``, extra state_dict entries). The generated class
(:func:`floatify.layers.conditioned.conditioned_class`) reads them through :func:`bn_property`: the clean set
at λ = 0, the adversarial set at λ > 0, and with ``bn_mix="interpolate"`` (:func:`set_bn_mix`) the two lerped
for 0 < λ < 1 by the mixing weight ``λ ** bn_curve`` (in eval mode; training always updates the adversarial
statistics themselves). ``bn_curve < 1`` moves the BatchNorm towards its adversarial set early on the dial:
benchmarks/tradeoff.py chose it so that the once-for-all model at λ tracks a model trained only at λ.

Example:
    >>> import torch, floatify
    >>> from floatify.layers.dual_bn import bn_mix_weight, get_bn_curve, get_bn_mix
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
    >>> bn = model[1]
    >>> sorted(k for k in bn.state_dict() if k.endswith("_adv"))
    ['bias_adv', 'num_batches_tracked_adv', 'running_mean_adv', 'running_var_adv', 'weight_adv']
    >>> get_bn_mix(bn) in ("interpolate", "switch")
    True
    >>> round(float(bn_mix_weight(bn, torch.tensor(0.5))), 4) == round(0.5 ** get_bn_curve(bn), 4)  # at λ = 0.5
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from floatify.context import compiling_training, lam_state
from floatify.layers.masks import CACHE_ATTR
from floatify.layers.registry import is_fx_tracing

__all__ = [
    "ADV_SUFFIX",
    "BN_PARAMS",
    "BN_BUFFERS",
    "BN_MIXES",
    "bn_mix_weight",
    "bn_property",
    "dual_bn_entries",
    "get_bn_curve",
    "get_bn_mix",
    "mixed_bn_value",
    "reset_dual_running_stats",
    "set_bn_mix",
    "validate_bn_curve",
]

ADV_SUFFIX = "_adv"
BN_PARAMS = ("weight", "bias")
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
BN_MIXES = ("interpolate", "switch")
_BN_MIX_ATTR = "_floatify_bn_mix"
_BN_CURVE_ATTR = "_floatify_bn_curve"
_RESET_VALUE = {"running_mean": 0, "running_var": 1, "num_batches_tracked": 0}


def dual_bn_entries(module: nn.Module) -> Iterator[tuple[dict[str, Any], str, str]]:
    """``(store, clean name, adversarial name)`` for each BatchNorm parameter and buffer ``module`` has.

    ``store`` is the module's ``_parameters`` or ``_buffers`` dict; the adversarial entry may be absent
    (a BatchNorm not made dual yet). The one loop every dual-BatchNorm operation uses.
    """
    for store, names in ((module._parameters, BN_PARAMS), (module._buffers, BN_BUFFERS)):
        for name in names:
            if store.get(name) is not None:
                yield store, name, name + ADV_SUFFIX


def set_bn_mix(module: nn.Module, mix: str, curve: float | None = None) -> None:
    """How the dual BatchNorm ``module`` serves 0 < λ < 1: ``"interpolate"`` (mixing weight ``λ ** curve``)
    or ``"switch"``; ``curve`` None keeps the module's current curve."""
    if mix not in BN_MIXES:
        raise ValueError(f"bn_mix must be one of {', '.join(BN_MIXES)}, got {mix!r}")
    if curve is not None:  # reason: validated before anything is set, so a bad curve changes nothing
        module.__dict__[_BN_CURVE_ATTR] = validate_bn_curve(curve)
    module.__dict__[_BN_MIX_ATTR] = mix  # reason: instance state, so deepcopy and pickle carry it


def validate_bn_curve(curve: float) -> float:
    """``curve`` if it is a valid ``bn_curve`` (a number in (0, 4]), else a ValueError naming the fix."""
    if isinstance(curve, bool) or not isinstance(curve, (int, float)) or not 0 < curve <= 4:
        raise ValueError(f"bn_curve must be a number in (0, 4] (the BatchNorm mixing weight is λ ** bn_curve; "
                         f"1 is linear), got {curve!r}")
    return float(curve)


def get_bn_curve(module: nn.Module) -> float:
    """The exponent of the BatchNorm mixing weight ``λ ** curve`` (1.0, linear, for layers converted before it
    existed)."""
    return module.__dict__.get(_BN_CURVE_ATTR, 1.0)


def bn_mix_weight(module: nn.Module, lam: torch.Tensor) -> torch.Tensor:
    """The weight of the adversarial set in ``module``'s interpolated BatchNorm at λ (a tensor): λ ** curve."""
    curve = module.__dict__.get(_BN_CURVE_ATTR, 1.0)
    return lam if curve == 1.0 else lam ** curve


def mixed_bn_value(module: nn.Module, name: str, lam: float) -> torch.Tensor:
    """What BatchNorm entry ``name`` of the dual BatchNorm ``module`` reads as at λ in eval mode (for freeze)."""
    store = module._buffers if name in module._buffers else module._parameters
    clean, adv = store[name], store.get(name + ADV_SUFFIX)
    if clean is None:
        raise KeyError(f"{type(module).__name__} has no BatchNorm entry {name!r}")
    if lam == 0.0 or adv is None:
        return clean
    if get_bn_mix(module) != "interpolate" or name == "num_batches_tracked" or lam == 1.0:
        return adv
    return torch.lerp(clean, adv, lam ** get_bn_curve(module))  # reason: as the eager read, bit for bit


def get_bn_mix(module: nn.Module) -> str:
    """The dual-BatchNorm mix of ``module`` (``"switch"`` for layers converted before the option existed)."""
    return module.__dict__.get(_BN_MIX_ATTR, "switch")


_BN_CACHE = "bn-mix"


def clear_bn_mix_cache(module: nn.Module) -> None:
    """Forget ``module``'s cached inference mixes (called on every ``train()``/``eval()``)."""
    cache = module.__dict__.get(CACHE_ATTR)
    if cache:
        for key in [k for k in cache if k[0] == _BN_CACHE]:
            del cache[key]


def reset_dual_running_stats(module: nn.Module) -> None:
    """Reset the clean and the adversarial running statistics of the dual BatchNorm ``module``."""
    for store, name, adv in dual_bn_entries(module):
        if name in _RESET_VALUE:  # reason: clean and adversarial statistics, never an interpolated copy
            for key in (name, adv):
                if store.get(key) is not None:
                    store[key].fill_(_RESET_VALUE[name])


def bn_property(name: str, is_buffer: bool) -> property:
    """The λ-dependent attribute ``name`` (a BatchNorm parameter or buffer) of a generated BatchNorm class."""
    adv_key = name + ADV_SUFFIX
    interpolable = name != "num_batches_tracked"

    cache_key = (_BN_CACHE, name)

    def get(self):
        store = self._buffers if is_buffer else self._parameters
        state = lam_state()
        if state.active and adv_key in store and not is_fx_tracing():
            adv = store[adv_key]
            training = self.training
            attrs = self.__dict__
            if adv is None or not interpolable or attrs.get(_BN_MIX_ATTR) != "interpolate" or (is_buffer and training):
                # reason: in training the running statistics are updated in place, so they must be the
                # adversarial buffers themselves, not an interpolated copy
                return adv
            # lerp(clean, adv, λ ** curve): exactly the adversarial set at λ = 1 (torch.lerp's w ≥ 0.5 branch)
            if state.runtime or torch.compiler.is_compiling():  # reason: λ is a graph input; no guard on its value
                if compiling_training() and state.full and not state.runtime:
                    # reason: compiled training specialises on λ = 1 (the attack's and the adversarial loss's λ): the
                    # adversarial set as eager reads it, so the clean set gets no gradient (a zero one would let
                    # momentum move it) and no lerp runs; one graph more per mode, only where λ = 1 is trained.
                    # compiling_training() is asked first, so inference graphs never guard on λ = 1
                    return adv
                return torch.lerp(store[name], adv, bn_mix_weight(self, state.tensor.to(device=adv.device,
                                                                                         dtype=adv.dtype)))
            if state.value == 1.0:
                # reason: lerp(clean, adv, 1) is adv exactly, and its gradient for the clean set is zero; reading adv
                # gives the clean set no gradient instead (as bn_mix="switch" and separate BatchNorm modules do): a
                # step at λ = 1 leaves it alone (a zero gradient let momentum keep moving it), and the default paired
                # step (whose clean term trains it) is bit for bit the same. In training the lerps and their
                # backward cost a resnet18 step on an H200 about 8% of plain PGD-AT's time (measured when this changed).
                # A compiled model still mixes above (its graphs serve every λ > 0): a zero gradient there
                return adv
            clean = store[name]
            if training or torch.is_grad_enabled():  # reason: a Python-float weight: one op per read, not three
                return torch.lerp(clean, adv, state.value ** attrs.get(_BN_CURVE_ATTR, 1.0))
            # reason: inference: the mix is constant for a λ (a batch-1 mobilenet forward reads ~230 of these), so it
            # is computed once, keyed on λ, the curve, both tensors and their versions; train()/eval() clears it
            # (running statistics change in place without a new version)
            cache = attrs.get(CACHE_ATTR)
            hit = cache.get(cache_key) if cache else None
            curve = attrs.get(_BN_CURVE_ATTR, 1.0)
            if (hit is not None and hit[0] == state.value and hit[1] == curve and hit[2] is clean and hit[3] is adv
                    and hit[4] == clean._version and hit[5] == adv._version):
                return hit[6]
            value = torch.lerp(clean, adv, state.value ** curve)
            attrs.setdefault(CACHE_ATTR, {})[cache_key] = (state.value, curve, clean, adv, clean._version,
                                                           adv._version, value)
            return value
        try:
            return store[name]
        except KeyError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'") from None

    return property(get, doc=f"dual BatchNorm ``{name}``: clean at λ = 0, ``{adv_key}`` at λ > 0 "
                             f"(interpolated by λ ** bn_curve in between with bn_mix='interpolate').")
