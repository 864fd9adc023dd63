"""λ-conditioned layers: the same class, the same parameters, a weight that depends on λ.

A converted layer keeps its original class as a base (``isinstance`` still holds) and its
original parameters under their original state_dict keys. Its class is swapped for a generated
subclass in which the conditioned attributes are properties:

* a Conv/Linear ``weight`` reads as ``W`` at λ = 0 (the very Parameter, so outputs are bitwise
  the original's) and as ``W + λ·α·η`` with ``η ~ N(0, std(W)²)`` at λ > 0, a fresh draw per read.
  Because the noise lives on the attribute, every reader sees it: the layer's own ``forward``
  (timm ``StdConv2d`` standardises the noisy weight, ``Conv2dSame`` pads as before) and code that
  uses the weight functionally (``F.linear(x, self.qkv.weight)`` in beit/eva/swin-v2,
  ``nn.MultiheadAttention``'s ``in_proj_weight``).
* a BatchNorm's ``weight``/``bias``/``running_*`` read as the clean set at λ = 0 and as the
  adversarial set (``*_adv``, extra entries in the state_dict) at λ > 0: dual BatchNorm.

Extra state per conditioned weight ``w``: the learnable scalar ``w_alpha`` and, for sparse models,
a bit-packed ``w_mask`` buffer (all mask handling is in :mod:`floatify.layers.masks`). The dual-BatchNorm
attributes live in :mod:`floatify.layers.dual_bn`, the FX leaf registration in :mod:`floatify.layers.registry`.

Example:
    >>> import torch, floatify
    >>> conv = floatify.convert(torch.nn.Conv2d(3, 8, 3))
    >>> isinstance(conv, torch.nn.Conv2d), sorted(conv.state_dict())
    (True, ['bias', 'weight', 'weight_alpha'])
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn as nn

from floatify.context import held_draws, lam_state

# reason: the dual-BatchNorm names are re-exported here, where the package and users imported them from
from floatify.layers.dual_bn import (
    ADV_SUFFIX,
    BN_BUFFERS,
    BN_MIXES,
    BN_PARAMS,
    bn_property,
    dual_bn_entries,
    get_bn_mix,
    reset_dual_running_stats,
    set_bn_mix,
)
from floatify.layers.masks import CACHE_ATTR, MASK_SUFFIX, add_mask_buffers, get_mask
from floatify.layers.registry import (
    conditioned_weight_names_for_class,
    is_batchnorm,
    is_fx_tracing,
    register_fx_leaf,
)

__all__ = [
    "conditioned_class",
    "generated_classes",
    "is_conditioned",
    "is_floatify_layer",
    "original_class",
    "dual_bn_entries",
    "ALPHA_SUFFIX",
    "ADV_SUFFIX",
    "BN_PARAMS",
    "BN_BUFFERS",
    "BN_MIXES",
    "get_bn_mix",
    "set_bn_mix",
]

ALPHA_SUFFIX = "_alpha"
_CLASSES: dict[type, type] = {}


def is_floatify_layer(module: nn.Module) -> bool:
    """True when ``module``'s class was swapped for a generated one: conditioned, pruned, or both."""
    return "_floatify_base" in type(module).__dict__


def is_conditioned(module: nn.Module) -> bool:
    """True for a layer :func:`floatify.convert` has conditioned: a weight with an α, or a dual BatchNorm.

    A layer that :func:`floatify.sparsify` pruned but that was never converted is not conditioned.
    """
    if "_floatify_base" not in type(module).__dict__:
        return False
    if is_batchnorm(module):
        return any(store.get(adv) is not None for store, _, adv in dual_bn_entries(module))
    return any(name + ALPHA_SUFFIX in module._parameters for name in getattr(type(module), "_floatify_weights", ()))


def generated_classes() -> list[type]:
    """Every conditioned class generated so far (for :mod:`floatify.fx`'s leaf-module list)."""
    return list(_CLASSES.values())


def original_class(module: nn.Module) -> type:
    """The class ``module`` had before conversion."""
    return type(module).__dict__.get("_floatify_base", type(module))


# ----------------------------------------------------------------------------- the mixin
class _ConditionedMixin:
    """Behaviour shared by every generated conditioned class (first in the MRO)."""

    _floatify_base: type
    _floatify_weights: tuple[str, ...] = ()
    _parameters: dict[str, Any]  # reason: declared for the type checker; nn.Module provides them
    _buffers: dict[str, Any]

    def _get_name(self) -> str:  # reason: readable print(model), not the generated class name
        return "Float" + self._floatify_base.__name__

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop(CACHE_ATTR, None)  # reason: caches are keyed on storage and must not travel
        return state

    # -- weight noise ------------------------------------------------------------------
    def floatify_mask(self, name: str) -> torch.Tensor | None:
        """The boolean keep-mask of weight ``name`` (None when dense); see :mod:`floatify.layers.masks`."""
        return get_mask(self, name)  # type: ignore[arg-type]

    def floatify_weight_std(self, name: str) -> torch.Tensor:
        """std(W) of weight ``name`` over its kept entries, detached, computed on every call.

        reason: not cached across reads: writes through ``weight.data`` (``w.data.mul_(100)``) change W
        without changing ``weight._version``, so a version-keyed cache returned a stale std. The std is one
        reduction over W, measured at ~1/4 of the Gaussian draw of the same size on CPU; inside
        :func:`floatify.context.hold_noise` (training's default) the noisy weight is computed once per step anyway.
        """
        return _weight_std(self._parameters[name], self.floatify_mask(name))

    def floatify_noisy_weight(
        self, name: str, lam: torch.Tensor | float, generator=None, eta: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One draw of ``W·m + λ·α·η·m`` for weight ``name`` (``m`` the sparsity mask, if any).

        The cost beyond the unavoidable Gaussian draw is one fused multiply-add over the weight.
        ``eta`` reuses a given standard-normal draw instead of a fresh one.
        """
        weight = self._parameters[name]
        alpha = self._parameters[name + ALPHA_SUFFIX]
        if eta is None:
            eta = torch.randn(weight.shape, dtype=weight.dtype, device=weight.device, generator=generator)
        mask = self.floatify_mask(name)
        base = weight
        if mask is not None:
            base = weight * mask
            eta = eta * mask
        scale = (lam * alpha * self.floatify_weight_std(name)).to(weight.dtype)
        return torch.addcmul(base, eta, scale)

    def floatify_held_weight(self, name: str, state, held: dict) -> torch.Tensor:
        """The noisy weight ``name`` inside :func:`floatify.context.hold_noise`: one η per block.

        The noisy tensor is computed once (without autograd history) and reused while W, α, the mask and
        λ are unchanged; with grad enabled each read wraps it in a fresh autograd node
        (:class:`_HeldNoisyWeight`), so any number of ``backward``/``autograd.grad`` calls inside the
        block are independent and W and α still get exact gradients.
        """
        weight, alpha = self._parameters[name], self._parameters[name + ALPHA_SUFFIX]
        mask = self.floatify_mask(name)
        version = (state.value, weight._version, weight.data_ptr(), alpha._version, id(mask))
        key = (id(self), name)
        hit = held.get(key)
        if hit is None or hit[0] != version:
            eta = hit[1] if hit is not None else torch.randn(weight.shape, dtype=weight.dtype, device=weight.device)
            if mask is not None:
                eta = eta * mask  # reason: pruned weights never receive noise
            with torch.no_grad():
                unit = (state.tensor * self.floatify_weight_std(name)).to(weight.dtype)  # λ·std(W)
                noisy = torch.addcmul(weight if mask is None else weight * mask, eta, unit * alpha)
            hit = (version, eta, noisy, unit)
            held[key] = hit
        _, eta, noisy, unit = hit
        if not (torch.is_grad_enabled() and (weight.requires_grad or alpha.requires_grad)):
            return noisy
        return _HeldNoisyWeight.apply(weight, alpha, noisy, eta, unit, mask)

    # -- dual BN -------------------------------------------------------------------------
    def reset_running_stats(self) -> None:
        if not is_batchnorm(self):  # type: ignore[arg-type]
            return super().reset_running_stats()  # type: ignore[misc]
        reset_dual_running_stats(self)  # type: ignore[arg-type]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # reason: a sparse checkpoint loaded into a dense model brings its masks along.
        add_mask_buffers(self, self._floatify_weights, state_dict, prefix)  # type: ignore[arg-type]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]


class _HeldNoisyWeight(torch.autograd.Function):
    """``W·m + λ·std·α·η`` from a precomputed value: no forward work, exact gradients for W and α."""

    @staticmethod
    def forward(ctx, weight, alpha, noisy, eta, unit, mask):
        ctx.save_for_backward(eta, unit, mask)
        ctx.has_mask = mask is not None
        return noisy.view_as(noisy)  # reason: a new tensor per read, so each read has its own node

    @staticmethod
    def backward(ctx, grad):
        eta, unit, mask = ctx.saved_tensors
        grad_w = grad * mask if ctx.has_mask else grad
        grad_alpha = (grad * eta).sum() * unit if ctx.needs_input_grad[1] else None
        return grad_w, grad_alpha, None, None, None, None


def _weight_std(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    w = weight.detach().float()
    if mask is not None:
        w = w[mask]
    if w.numel() < 2:
        return w.new_zeros(())
    return w.std()


def _weight_property(name: str) -> property:
    alpha_key, mask_key = name + ALPHA_SUFFIX, name + MASK_SUFFIX  # reason: no string work per read

    def get(self):
        params = self._parameters
        weight = params.get(name)
        if weight is None:
            if name in params:
                return None
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        if alpha_key not in params:  # reason: not conditioned (filtered out, or a pruned plain layer)
            return weight if mask_key not in self._buffers else weight * self.floatify_mask(name)
        state = lam_state()
        if not (state.active and state.noise) or is_fx_tracing():
            # reason: λ = 0 is the original computation; FX traces must not bake a λ in
            # (floatify.fx re-installs the layer so the traced read stays conditioned).
            if mask_key not in self._buffers:
                return weight
            return weight * self.floatify_mask(name)
        if not state.runtime and (torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()):
            # reason: a plain export at λ > 0 would record one draw (or fail on randn in ONNX) and ship a
            # model that is silently either deterministic or not the dial
            raise RuntimeError(
                f"exporting a converted model at λ = {state.value:g} would bake one weight-noise draw into the "
                f"program; use floatify.export(model, example_inputs) (λ as a runtime input) or export "
                f"floatify.freeze(model, lam) (one operating point, a plain model)")
        held = held_draws()
        if held is None or torch.compiler.is_compiling():
            return self.floatify_noisy_weight(name, state.tensor)
        return self.floatify_held_weight(name, state, held)

    return property(get, doc=f"λ-conditioned ``{name}``: W + λ·α·η (W itself at λ = 0).")


def _class_name(base: type) -> str:
    # reason: pickle looks classes up by name in this module; dots would split the lookup.
    return f"Float[{base.__module__.replace('.', '/')}:{base.__qualname__.replace('.', '/')}]"


def conditioned_class(base: type[nn.Module]) -> type[nn.Module]:
    """The generated conditioned subclass of ``base`` (created once, picklable by name)."""
    if "_floatify_base" in base.__dict__:
        return base
    cls = _CLASSES.get(base)
    if cls is not None:
        return cls
    namespace: dict = {"_floatify_base": base, "__module__": __name__}
    if issubclass(base, nn.modules.batchnorm._BatchNorm):
        for name in BN_PARAMS:
            namespace[name] = bn_property(name, is_buffer=False)
        for name in BN_BUFFERS:
            namespace[name] = bn_property(name, is_buffer=True)
    else:
        weights = conditioned_weight_names_for_class(base)
        if not weights:
            raise TypeError(f"{base.__qualname__} has no registered conditioned weight")
        namespace["_floatify_weights"] = weights
        for name in weights:
            namespace[name] = _weight_property(name)
    name = _class_name(base)
    namespace["__qualname__"] = name
    cls = type(name, (_ConditionedMixin, base), namespace)
    _CLASSES[base] = cls
    register_fx_leaf(cls)
    return cls


def __getattr__(name: str) -> type:
    """Rebuild a generated class from its name (unpickling in a fresh process)."""
    if name.startswith("Float[") and name.endswith("]"):
        module_path, _, qualname = name[len("Float[") : -1].partition(":")
        obj: Any = importlib.import_module(module_path.replace("/", "."))
        for part in qualname.split("/"):
            obj = getattr(obj, part)
        return conditioned_class(obj)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
