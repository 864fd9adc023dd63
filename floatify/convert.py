"""The conversion walker: ``convert(model)`` turns any Conv/Linear/BatchNorm model into FLOAT.

One pass over ``named_children`` plans every change and validates everything first; only then is
the model (a deep copy unless ``inplace=True``) modified, so a failed conversion never leaves a
half-converted model behind.

Example:
    >>> import torch.nn as nn, floatify
    >>> lazy = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(10))
    >>> floatify.convert(lazy)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: layer '2' (LazyLinear) is lazy and not initialised yet: run one forward pass ...
    >>> model = floatify.convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
    >>> [row.fqn for row in floatify.summary(model).conditioned]
    ['0.weight']
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from floatify.config import check_bool, check_choice, check_real, resolve
from floatify.layers.conditioned import ALPHA_SUFFIX, conditioned_class, is_conditioned
from floatify.layers.dual_bn import (
    ADV_SUFFIX,
    BN_MIXES,
    dual_bn_entries,
    get_bn_curve,
    get_bn_mix,
    set_bn_mix,
    validate_bn_curve,
)
from floatify.layers.masks import MASK_SUFFIX
from floatify.layers.registry import conditioned_weight_names, is_batchnorm
from floatify.walk import FilterFn, iter_modules

__all__ = [
    "FloatConfig",
    "FloatifyWarning",
    "convert",
    "load_original_state_dict",
    "convert_sync_batchnorm",
    "SKIPPED_ATTR",
]

# Chosen by benchmarks/tradeoff.py: the once-for-all model's gap to models trained at one λ (RESULTS.md).
DEFAULT_BN_CURVE = 0.7
SKIPPED_ATTR = "_floatify_skipped"
ALPHA_INIT_ATTR = "_floatify_alpha_init"  # reason: load_original_state_dict re-initialises α (meta-device workflow)
_QUANTIZED_PREFIXES = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized",
                       "torch.nn.intrinsic.quantized")
_FILTERED = "excluded by filter_fn"


def _is_quantized(module: nn.Module) -> bool:
    """A quantized layer (dynamic or static int8 Linear/Conv, ...): packed weights floatify cannot condition."""
    return type(module).__module__.startswith(_QUANTIZED_PREFIXES) and callable(getattr(module, "weight", None))


class FloatifyWarning(UserWarning):
    """A layer floatify could not condition (also listed by :func:`floatify.summary`)."""


@dataclass(frozen=True)
class FloatConfig:
    """How :func:`convert` conditions a model (every field can also be given to ``convert`` as a keyword).

    Attributes:
        alpha_init: initial value of every learnable noise scale α (0.25 in the FLOAT reference).
        dual_bn: give every BatchNorm a clean (λ = 0) and an adversarial (λ > 0) copy.
        bn_mix: how a dual BatchNorm serves 0 < λ < 1. ``"interpolate"``: affine parameters and running
            statistics are ``lerp(clean, adversarial, λ)``, so the BatchNorm moves with the dial as the noise
            does; ``"switch"``: the adversarial copy at every λ > 0 (the FLOAT/OAT reference), which makes
            λ = 0 → 0.1 carry most of the change. Chosen by benchmarks/tradeoff.py (RESULTS.md).
        bn_curve: with ``"interpolate"``, the adversarial share of the BatchNorm at λ is ``λ ** bn_curve``
            (1: linear). Below 1 the BatchNorm reaches its robust setting earlier on the dial, so that the
            once-for-all model at λ tracks a model trained only at λ (benchmarks/tradeoff.py, RESULTS.md).

    Example:
        >>> import floatify
        >>> floatify.FloatConfig(bn_mix="switch").dual_bn
        True
    """

    alpha_init: float = 0.25
    dual_bn: bool = True
    bn_mix: str = "interpolate"
    bn_curve: float = DEFAULT_BN_CURVE

    def __post_init__(self) -> None:
        check_real("alpha_init", self.alpha_init, low=0.0, meaning="the initial noise scale α")
        check_bool("dual_bn", self.dual_bn)
        check_choice("bn_mix", self.bn_mix, BN_MIXES)
        validate_bn_curve(self.bn_curve)


@dataclass
class _Plan:
    """What :func:`convert` will change, gathered (and validated) before anything is changed."""

    weights: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # module fqn, weight names
    batchnorms: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # site, reason
    candidates: int = 0  # layers with a weight floatify conditions (converted already or not)
    quantized: list[str] = field(default_factory=list)


def _check_wrapped(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"floatify.convert expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise TypeError(
            f"the model is wrapped in {type(model).__name__}: convert the bare model first, then wrap it "
            f"(model = floatify.convert(model); model = {type(model).__name__}(model, ...))"
        )
    if type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
        raise TypeError(
            "the model was compiled with torch.compile: convert the original model first, then compile "
            "(model = torch.compile(floatify.convert(model)))"
        )


def _plan(model: nn.Module, filter_fn: FilterFn | None, dual_bn: bool) -> _Plan:
    """Decide, for every module of ``model``, what conversion does to it, and check the result is usable.

    Each module is one of: a quantized layer (skipped, with the reason), a layer without conditionable weights
    (ignored), a layer converted already (kept as it is), a layer ``filter_fn`` excludes (skipped), a BatchNorm
    (gets a dual when ``dual_bn``) or a Conv/Linear-like layer whose usable weights are conditioned (those that
    are not registered float Parameters are skipped, with the reason). Raises a ValueError/TypeError for a lazy
    or DDP-wrapped submodule and when nothing at all would be conditioned.
    """
    plan = _Plan()
    for fqn, module in iter_modules(model):
        _plan_module(plan, fqn, module, filter_fn, dual_bn)
    _check_plan(model, plan, filter_fn)
    return plan


def _plan_module(plan: _Plan, fqn: str, module: nn.Module, filter_fn: FilterFn | None, dual_bn: bool) -> None:
    """Add one module's share of the conversion to ``plan``."""
    if _is_quantized(module):
        plan.quantized.append(fqn)
        plan.skipped.append((fqn, f"quantized layer ({type(module).__module__}.{type(module).__name__}): not "
                                  f"conditioned; convert the float model first, then quantize"))
        return
    names = conditioned_weight_names(module)
    bn = dual_bn and is_batchnorm(module)
    if not names and not bn:
        return
    _check_submodule(fqn, module)
    if names:
        plan.candidates += 1
    if _converted_already(module, names, bn):
        return  # reason: converting twice is idempotent; existing α are kept
    if filter_fn is not None and not filter_fn(module, fqn):
        plan.skipped.append((fqn, _FILTERED))
    elif bn:
        plan.batchnorms.append(fqn)
    else:
        selected = _select_weights(plan, fqn, module, names)
        if selected:
            plan.weights.append((fqn, selected))


def _check_submodule(fqn: str, module: nn.Module) -> None:
    """Refuse a layer that cannot be converted as it stands: lazy and uninitialised, or wrapped in DDP."""
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError(
            f"layer '{fqn}' ({type(module).__name__}) is lazy and not initialised yet: run one forward "
            f"pass (or materialise it) before floatify.convert"
        )
    if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise TypeError(f"submodule '{fqn}' is wrapped in {type(module).__name__}: convert before wrapping")


def _converted_already(module: nn.Module, names: tuple[str, ...], bn: bool) -> bool:
    """A conditioned BatchNorm, or a conditioned layer whose every present weight has its α."""
    if not is_conditioned(module):
        return False
    return bn or is_batchnorm(module) or all(
        n + ALPHA_SUFFIX in module._parameters or module._parameters.get(n) is None for n in names)


def _select_weights(plan: _Plan, fqn: str, module: nn.Module, names: tuple[str, ...]) -> tuple[str, ...]:
    """The weights of ``module`` to condition; the ones that cannot be are added to ``plan.skipped``."""
    selected = []
    for name in names:
        if name + ALPHA_SUFFIX in module._parameters:
            continue  # reason: already conditioned (a partly converted layer, e.g. pruned first)
        site = f"{fqn}.{name}" if fqn else name
        tensor = module._parameters.get(name, getattr(module, name, None))
        if name in module._parameters and tensor is None:
            continue  # reason: an optional weight that is absent (e.g. MHA's q_proj_weight)
        if not isinstance(tensor, nn.Parameter) or name not in module._parameters:
            plan.skipped.append((site, "not a registered Parameter (weight_norm/spectral_norm/parametrize or a "
                                       "computed weight): not conditioned"))
        elif not tensor.is_floating_point():
            plan.skipped.append((site, f"dtype {tensor.dtype} is not floating point (quantized?): not conditioned"))
        else:
            selected.append(name)
    return tuple(selected)


def _check_plan(model: nn.Module, plan: _Plan, filter_fn: FilterFn | None) -> None:
    """Raise when the conversion would condition nothing, naming what stopped it and the fix."""
    name = type(model).__name__
    if plan.candidates == 0 and plan.quantized:
        raise ValueError(
            f"{name} has no float Conv/Linear layer: its {len(plan.quantized)} quantized layers (e.g. "
            f"'{plan.quantized[0]}') cannot be conditioned; convert the float model first, then quantize"
        )
    if plan.candidates == 0:
        raise ValueError(
            f"{name} has no Conv/Linear layer floatify can condition; register custom layer "
            f"types with floatify.layers.register_conditioned_weights(cls, 'weight')"
        )
    if plan.weights or any(is_conditioned(m) and not is_batchnorm(m) for _, m in iter_modules(model)):
        return
    reasons = [f"{site}: {why}" for site, why in plan.skipped if why != _FILTERED]
    if filter_fn is None or reasons:  # reason: blame what stopped the layers, not a filter_fn never given
        raise ValueError(
            f"no weight of {name} can be conditioned ({'; '.join(reasons[:3])}); e.g. remove "
            f"the old-style weight_norm (or use torch.nn.utils.parametrizations.weight_norm after converting)"
        )
    raise ValueError(
        f"filter_fn excluded all {plan.candidates} convertible Conv/Linear layers of {name}; "
        f"it must return True for the layers to condition (signature: filter_fn(module, fqn) -> bool)"
    )


def _condition_weights(module: nn.Module, names: tuple[str, ...], alpha_init: float, shared: dict) -> None:
    module.__class__ = conditioned_class(type(module))
    for name in names:
        weight = module._parameters[name]
        assert weight is not None  # reason: _plan selects present Parameters only
        alpha = shared.get(id(weight))
        if alpha is None:  # reason: a weight tied between two layers gets one α, not two
            alpha = nn.Parameter(torch.full((), alpha_init, dtype=weight.dtype, device=weight.device))
            shared[id(weight)] = alpha
        module.register_parameter(name + ALPHA_SUFFIX, alpha)
    module.__dict__[ALPHA_INIT_ATTR] = float(alpha_init)


def _make_dual_bn(module: nn.Module, adv: Mapping[str, torch.Tensor] | None = None,
                  bn_mix: str | None = None, bn_curve: float | None = None) -> None:
    for store, name, adv_name in list(dual_bn_entries(module)):
        tensor = store[name]
        source = (adv[name] if adv else tensor).detach().clone()
        if store is module._parameters:
            module.register_parameter(adv_name, nn.Parameter(source, tensor.requires_grad))
        else:
            module.register_buffer(adv_name, source)
    if bn_mix is not None:
        set_bn_mix(module, bn_mix, bn_curve)
    module.__class__ = conditioned_class(type(module))


def convert(
    model: nn.Module,
    config: FloatConfig | None = None,
    *,
    filter_fn: FilterFn | None = None,
    inplace: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Condition every Conv/Linear weight of ``model`` on λ and give every BatchNorm a dual.

    Args:
        model: any ``nn.Module`` (timm, torchvision or your own), not yet wrapped by DDP or
            ``torch.compile``.
        config: a :class:`FloatConfig` (default: α init 0.25, dual BatchNorm on).
        filter_fn: ``filter_fn(module, fqn) -> bool``; layers for which it returns False are left
            alone (and listed by :func:`floatify.summary`). E.g. keep the classifier noise-free with
            ``filter_fn=lambda m, fqn: fqn != "fc"``.
        inplace: modify ``model`` itself instead of a deep copy (for large models).
        **overrides: :class:`FloatConfig` fields replacing the config's (``alpha_init=0.5``), validated as
            the config's; an unknown name is a TypeError listing the valid ones.

    Returns:
        The converted model: the same class, the original parameters under their original
        state_dict keys, plus one α per conditioned weight and the adversarial BatchNorm copies.
        Converting an already converted model is safe: converted layers are kept as they are
        (their α untouched), layers added since are converted.

    Example:
        >>> import torch, timm, floatify
        >>> model = floatify.convert(timm.create_model("resnet18", num_classes=10), bn_mix="switch")
        >>> with floatify.lam(0.3):
        ...     y = model(torch.rand(2, 3, 32, 32))
    """
    _check_wrapped(model)
    config = resolve(config, FloatConfig, overrides, "convert")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError("filter_fn must be a callable filter_fn(module, fqn) -> bool")
    plan = _plan(model, filter_fn, config.dual_bn)  # reason: validate everything before changing anything
    model = model if inplace else _copy_for_conversion(model)
    shared = _existing_alphas(model)
    for fqn, names in plan.weights:
        _condition_weights(model.get_submodule(fqn), names, config.alpha_init, shared)
    for fqn in plan.batchnorms:
        _make_dual_bn(model.get_submodule(fqn), bn_mix=config.bn_mix, bn_curve=config.bn_curve)
    previous = [s for s in model.__dict__.get(SKIPPED_ATTR, []) if s not in plan.skipped]
    model.__dict__[SKIPPED_ATTR] = [s for s in previous if not _now_conditioned(model, s[0])] + plan.skipped
    problems = [f"{site}: {reason}" for site, reason in plan.skipped if reason != _FILTERED]
    if problems:
        warnings.warn(
            "floatify left these weights unconditioned:\n  " + "\n  ".join(problems), FloatifyWarning, stacklevel=2
        )
    return model


def _copy_for_conversion(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, or a ValueError naming ``inplace=True`` where the model refuses to be copied."""
    try:
        return copy.deepcopy(model)
    except RuntimeError as err:  # reason: old-style torch.nn.utils.weight_norm tensors refuse deepcopy
        raise ValueError(
            f"cannot copy {type(model).__name__} for conversion ({str(err).split('.')[0]}); pass inplace=True "
            f"to convert the model itself"
        ) from None


def _existing_alphas(model: nn.Module) -> dict[int, nn.Parameter]:
    """The α of every weight conditioned already, by the weight's id (a tied weight reuses it)."""
    shared: dict[int, nn.Parameter] = {}
    for _, module in iter_modules(model):
        if is_conditioned(module):
            for name in getattr(type(module), "_floatify_weights", ()):
                alpha = module._parameters.get(name + ALPHA_SUFFIX)
                if alpha is not None:
                    shared[id(module._parameters[name])] = alpha
    return shared


def _now_conditioned(model: nn.Module, site: str) -> bool:
    """Whether a site recorded as skipped (a module fqn or ``module.weight``) is conditioned now."""
    try:
        return is_conditioned(model.get_submodule(site))
    except AttributeError:
        pass
    module_path, _, name = site.rpartition(".")
    try:
        module = model.get_submodule(module_path)
    except AttributeError:
        return False
    return is_conditioned(module) and name + ALPHA_SUFFIX in module._parameters


def load_original_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a checkpoint of the *unconverted* model into a converted one.

    Every original key must be present; floatify's own entries (α, adversarial BatchNorm) are
    initialised from it: α is set to the ``alpha_init`` it was converted with (so a model converted on the
    meta device and materialised with ``to_empty`` gets real α values), each adversarial BatchNorm copies
    the clean one. (Equivalently: load the checkpoint into the plain model first, then convert.)
    A checkpoint of a *converted* model (with α or adversarial BatchNorm entries) is refused: load that
    with ``model.load_state_dict``.

    Example:
        >>> import torch, floatify
        >>> plain = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        >>> model = floatify.convert(plain)
        >>> from floatify.convert import load_original_state_dict
        >>> load_original_state_dict(model, plain.state_dict())
    """
    converted_keys = sorted(set(state_dict) & _floatify_keys(model))
    if converted_keys:
        raise ValueError(
            f"this is a checkpoint of a converted floatify model (it holds floatify's own entries, e.g. "
            f"'{converted_keys[0]}'); load it with model.load_state_dict(state_dict) instead of "
            f"load_original_state_dict, which would overwrite them"
        )
    result = model.load_state_dict(state_dict, strict=False)
    ours = (ALPHA_SUFFIX, ADV_SUFFIX, MASK_SUFFIX)
    missing = [k for k in result.missing_keys if not any(k.rsplit(".", 1)[-1].endswith(s) for s in ours)]
    if missing or result.unexpected_keys:
        raise KeyError(
            f"checkpoint does not match the model: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]} (is it a checkpoint of a different architecture?)"
        )
    with torch.no_grad():
        for _, module in iter_modules(model):
            init = module.__dict__.get(ALPHA_INIT_ATTR)
            if is_conditioned(module) and not is_batchnorm(module) and init is not None:
                for name in getattr(type(module), "_floatify_weights", ()):
                    alpha = module._parameters.get(name + ALPHA_SUFFIX)
                    if alpha is not None:
                        alpha.fill_(init)
            if is_conditioned(module) and is_batchnorm(module):
                for store, name, adv_name in dual_bn_entries(module):
                    if store.get(adv_name) is not None:
                        store[adv_name].copy_(store[name])


def _floatify_keys(model: nn.Module) -> set[str]:
    """state_dict keys of the entries floatify added (α, adversarial BatchNorm; masks excluded)."""
    keys = set()
    for fqn, module in model.named_modules(remove_duplicate=False):
        if not is_conditioned(module):
            continue
        prefix = f"{fqn}." if fqn else ""
        for name in list(module._parameters) + list(module._buffers):
            if name.endswith(ALPHA_SUFFIX) or (is_batchnorm(module) and name.endswith(ADV_SUFFIX)):
                keys.add(prefix + name)
    return keys


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` that keeps floatify's dual BatchNorm dual.

    torch's converter copies only the clean statistics; this restores the adversarial ones.
    """
    adversarial: dict[str, dict[str, torch.Tensor]] = {}
    mixes: dict[str, tuple[str, float]] = {}
    for fqn, module in iter_modules(model):
        if is_conditioned(module) and is_batchnorm(module):
            adversarial[fqn] = {name: store[adv_name] for store, name, adv_name in dual_bn_entries(module)
                                if store.get(adv_name) is not None}
            mixes[fqn] = (get_bn_mix(module), get_bn_curve(module))
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    for fqn, adv in adversarial.items():
        module = converted.get_submodule(fqn)
        if not is_conditioned(module):
            _make_dual_bn(module, adv, bn_mix=mixes[fqn][0], bn_curve=mixes[fqn][1])
    return converted
