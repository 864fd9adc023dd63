"""λ-conditioned layers: the same class, the same parameters, a weight that depends on λ.

A converted layer keeps its original class as a base (``isinstance`` still holds) and its
original parameters under their original state_dict keys. Its class is swapped for a generated
subclass in which the conditioned attributes are properties:

* a Conv/Linear ``weight`` reads as ``W`` at λ = 0 (the very Parameter, so outputs are bitwise
  the original's) and as ``W + λ·α·std(W)·η`` with ``η ~ N(0, I)`` at λ > 0, a new draw per read (a window
  of a pre-drawn Gaussian bank by default, see :mod:`floatify.layers.noise`).
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

from floatify.context import held_draws, held_offsets, lam_state, register_recomputable, weights_are_constant

# reason: the dual-BatchNorm names are re-exported here, where the package and users imported them from
from floatify.layers.dual_bn import (
    ADV_SUFFIX,
    BN_BUFFERS,
    BN_MIXES,
    BN_PARAMS,
    bn_property,
    clear_bn_mix_cache,
    dual_bn_entries,
    get_bn_mix,
    reset_dual_running_stats,
    set_bn_mix,
)
from floatify.layers.masks import CACHE_ATTR, MASK_SUFFIX, add_mask_buffers, get_mask
from floatify.layers.noise import held_window, in_graph_capture, standard_normal
from floatify.layers.noisy_weight import (
    compiled_inference_weight,
    held_std,
    inference_noisy_weight,
    weight_std,
)
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
NOISE_SLOTS_ATTR = "_floatify_noise_slots"  # reason: set by floatify.compile while it trains: {weight name: slot}
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
        without changing ``weight._version``, so a version-keyed cache returned a stale std. Inside
        :func:`floatify.context.hold_noise` (training's default) it is computed once per step; the CPU no-grad
        path (inference) caches it with a guard against such writes
        (:func:`floatify.layers.noisy_weight.inference_noisy_weight`).
        """
        return weight_std(self._parameters[name], self.floatify_mask(name))

    def floatify_noisy_weight(
        self, name: str, lam: torch.Tensor | float, generator=None, eta: torch.Tensor | None = None,
        unit: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One draw of ``W·m + λ·α·η·m`` for weight ``name`` (``m`` the sparsity mask, if any).

        ``η`` comes from :func:`floatify.layers.noise.standard_normal` (a bank window by default, a fresh
        draw with ``generator``), so the cost is one fused multiply-add over the weight; the autograd graph
        keeps η as a view, no weight-sized copy. ``eta`` reuses a given standard-normal draw and ``unit`` a
        precomputed ``λ·std(W)``.
        """
        weight = self._parameters[name]
        alpha = self._parameters[name + ALPHA_SUFFIX]
        if eta is None:
            eta = standard_normal(weight, generator)
        mask = self.floatify_mask(name)
        base = weight
        if mask is not None:
            base = weight * mask
            eta = eta * mask
        if unit is None:
            unit = (lam * self.floatify_weight_std(name)).to(weight.dtype)
        return torch.addcmul(base, eta, unit * alpha)

    def floatify_compiled_weight(self, name: str, state) -> torch.Tensor:
        """The noisy weight ``name`` under ``torch.compile``: the held draw of a compiled training step (the bank
        window at this layer's offset and the step's std(W), :mod:`floatify.compile`; inside the step's attack the
        noisy weight itself, made once for the step), else a window drawn in the graph."""
        held = held_offsets()
        slots = getattr(self, NOISE_SLOTS_ATTR, None)
        if held is not None and slots is not None and name in slots:
            # reason: the step's draw and std(W) are graph inputs, made once per step: no std reduction per forward
            offsets, stds, constant = held
            weight, slot = self._parameters[name], slots[name]
            if constant is not None:  # reason: the attack's noisy weights, made once per step (floatify.compile)
                return constant[slot]
            unit = (state.tensor.to(stds.device) * stds[slot]).to(weight.dtype)
            return self.floatify_noisy_weight(name, state.tensor, eta=held_window(weight, offsets[slot]), unit=unit)
        weight = self._parameters[name]
        fast = compiled_inference_weight(weight, self._parameters[name + ALPHA_SUFFIX], state.tensor,
                                         self.floatify_mask(name) is not None)
        return self.floatify_noisy_weight(name, state.tensor) if fast is None else fast

    def floatify_held_weight(self, name: str, state, held: dict) -> torch.Tensor:
        """The noisy weight ``name`` inside :func:`floatify.context.hold_noise`: one η per block.

        The block holds the draw (η, a bank view, ``λ·std(W)`` and the scale ``λ·std(W)·α`` per α version), not
        the noisy tensor: each read recomputes ``W + scale·η`` with one multiply-add, so W and α get exact gradients
        and every ``backward`` is independent. The draw is redrawn when
        W, the mask or λ change (``weight._version``: an optimizer step inside the block). A noisy weight that a
        layer saves for backward is kept as its recipe and recomputed there. Inside
        :func:`floatify.context.constant_weights` (a training step's attack) the noisy weight has no autograd
        history: it is computed once, reused by every attack iteration and held (one weight-sized tensor per layer)
        until the next read takes it over (the loss) or the block ends — unless W already has a gradient (the
        previous step's, alive through the attack): then each read recomputes it, memory over speed.
        """
        weight, alpha = self._parameters[name], self._parameters[name + ALPHA_SUFFIX]
        mask = self.floatify_mask(name)
        version = (state.value, weight._version, weight.data_ptr(), id(mask))
        key = (id(self), name)
        hit = held.get(key)
        if hit is None or hit.version != version:
            hit = held[key] = _HeldDraw(version, hit.raw if hit is not None else standard_normal(weight), weight,
                                        mask, state.value)
        scale = hit.scale(alpha)
        if weights_are_constant():
            if weight.grad is not None:
                # reason: the previous step's gradients are alive (zero_grad after the forwards), so a held set would
                # add one weight-sized tensor per layer to the peak: each read recomputes, and a noisy weight the
                # attack saves for backward is kept as its recipe (float_loss installs the hooks for this case)
                noisy = _noisy_value(weight, hit.eta, scale, mask)
                register_recomputable(noisy, _recipe(weight, alpha, hit.eta, scale, mask))
                return noisy
            # reason: a multiply-add per layer for all attack iterations, not one per read: the set (one weight-sized
            # tensor per layer) is held until the loss after the attack takes it over; per-read recomputation cost
            # a resnet18 step 1.6x PGD-AT's on an H200 against 1.2x held (benchmarks/RESULTS.md, `float-late`)
            if hit.constant is None or hit.constant[0] is not scale:
                hit.constant = (scale, _noisy_value(weight, hit.eta, scale, mask))
            return hit.constant[1]
        # reason: the loss right after the attack takes over the attack's noisy weight (same W, α and draw) instead
        # of computing it again; taken out of the block, it is freed with the layer's forward like any other read
        const, hit.constant = hit.constant, None
        value = const[1] if const is not None and const[0] is scale else None
        if not (torch.is_grad_enabled() and (weight.requires_grad or alpha.requires_grad)):
            return _noisy_value(weight, hit.eta, scale, mask) if value is None else value
        noisy = _NoisyWeight.apply(weight, alpha, hit.eta, hit.unit, scale, mask, value)
        # reason: saved for backward as its recipe, not as a weight-sized copy
        register_recomputable(noisy, _recipe(weight, alpha, hit.eta, scale, mask))
        return noisy

    # -- dual BN -------------------------------------------------------------------------
    def train(self, mode: bool = True):
        clear_bn_mix_cache(self)  # type: ignore[arg-type]  # reason: running statistics may have changed
        return super().train(mode)  # type: ignore[misc]

    def reset_running_stats(self) -> None:
        if not is_batchnorm(self):  # type: ignore[arg-type]
            return super().reset_running_stats()  # type: ignore[misc]
        reset_dual_running_stats(self)  # type: ignore[arg-type]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # reason: a sparse checkpoint loaded into a dense model brings its masks along.
        add_mask_buffers(self, self._floatify_weights, state_dict, prefix)  # type: ignore[arg-type]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]


class _HeldDraw:
    """One layer's draw inside :func:`floatify.context.hold_noise`: η (a bank view, masked), ``λ·std(W)`` and the
    scale ``λ·std(W)·α`` (kept per α version), and the attack's noisy weight until the loss takes it over."""

    __slots__ = ("version", "raw", "eta", "unit", "constant", "_scale", "_alpha", "_alpha_version")

    def __init__(self, version: tuple, raw: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None,
                 lam: float) -> None:
        self.version, self.raw = version, raw
        # reason: masked once per draw (pruned weights never receive noise); a copy for sparse layers only
        self.eta = raw if mask is None else raw * mask
        unit = held_std(weight, mask)  # reason: of the detached weight, so no autograd history (nor no_grad) here
        if lam != 1.0:  # reason: λ = 1 (every training step's attack) skips a kernel launch per layer
            unit = unit * lam
        self.unit = unit.to(weight.dtype)
        self.constant: tuple[torch.Tensor, torch.Tensor] | None = None
        self._scale: torch.Tensor | None = None
        self._alpha: torch.Tensor | None = None  # reason: held, so a new α can never reuse its address
        self._alpha_version = -1

    def scale(self, alpha: torch.Tensor) -> torch.Tensor:
        """``λ·std(W)·α`` without history, computed once per α version (an optimizer step makes a new one).

        Like std(W) and like a tensor autograd saves, it sees in-place changes of α but not writes through
        ``.data``."""
        if self._scale is None or alpha is not self._alpha or alpha._version != self._alpha_version:
            self._scale = self.unit * alpha.detach()
            self._alpha, self._alpha_version = alpha, alpha._version
        return self._scale


class _NoisyWeight(torch.autograd.Function):
    """``W·m + λ·std·α·η`` with exact gradients: W gets the output's gradient (masked), α gets λ·std·⟨grad, η⟩.

    reason: autograd through ``addcmul`` with a broadcast scalar spends a weight-sized multiply and a reduction on
    α's gradient (about 10 ms per training step for a resnet18 on CPU); one dot product does it. η is saved as the
    bank view it is (no copy).
    """

    @staticmethod
    def forward(ctx, weight, alpha, eta, unit, scale, mask, value=None):
        ctx.save_for_backward(eta, unit, mask)
        ctx.has_mask = mask is not None
        if value is None:
            return _noisy_value(weight, eta, scale, mask)
        # reason: a new tensor on the held storage: returned as is, autograd would make the output a view of it,
        # and F.linear's saved W.t() would then not be recognised as a recipe (saved_tensors_hooks see its base)
        return value.detach()

    @staticmethod
    def backward(ctx, grad):
        eta, unit, mask = ctx.saved_tensors
        grad_w = grad * mask if ctx.has_mask else grad
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            grad_alpha = unit * torch.dot(grad.reshape(-1), eta.reshape(-1).to(grad.dtype))
        return grad_w, grad_alpha, None, None, None, None, None


def _noisy_value(weight: torch.Tensor, eta: torch.Tensor, scale: torch.Tensor,
                 mask: torch.Tensor | None) -> torch.Tensor:
    """``W·m + scale·η`` (scale = λ·std·α) without autograd history: :class:`_NoisyWeight`'s forward and recipe."""
    # reason: detached inputs rather than a no_grad block (a context manager per layer per step costs more)
    base = weight.detach() if mask is None else weight.detach() * mask
    if weight.device.type == "cpu" and not in_graph_capture():
        return torch.add(base, eta, alpha=float(scale))  # reason: a Python scale: one pass, no temporaries
    return torch.addcmul(base, eta, scale)


def _recipe(weight: torch.Tensor, alpha: torch.Tensor, eta: torch.Tensor, scale: torch.Tensor,
            mask: torch.Tensor | None):
    """What backward calls to recompute a saved noisy weight; it refuses if W or α changed in between."""
    versions = (weight._version, alpha._version)

    def recompute() -> torch.Tensor:
        if (weight._version, alpha._version) != versions:
            # reason: the check autograd does for a saved tensor: a recomputed weight would be silently new
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace operation: "
                "a conditioned weight or its α changed between forward and backward (floatify recomputes the noisy "
                "weight in backward); run backward before optimizer.step()")
        return _noisy_value(weight, eta, scale, mask)

    return recompute


def _refuse_a_baked_export(state) -> None:
    if not state.runtime and (torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()):
        # reason: a plain export at λ > 0 would record one draw (or fail on randn in ONNX) and ship a
        # model that is silently either deterministic or not the dial
        raise RuntimeError(
            f"exporting a converted model at λ = {state.value:g} would bake one weight-noise draw into the "
            f"program; use floatify.export(model, example_inputs) (λ as a runtime input) or export "
            f"floatify.freeze(model, lam) (one operating point, a plain model)")


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
        if torch.compiler.is_compiling():
            # reason: the eager held draws are Python state a graph would freeze; compiled training hands the held
            # draw in as bank offsets (a graph input), elsewhere each compiled forward draws in the graph
            _refuse_a_baked_export(state)
            return self.floatify_compiled_weight(name, state)
        held = held_draws()
        if held is not None and not torch.jit.is_tracing():
            # reason: first, the training step's path (read ~8 times per layer per step): no export can be running
            # here (torch.export compiles, ONNX's TorchScript exporter traces)
            return self.floatify_held_weight(name, state, held)
        _refuse_a_baked_export(state)
        if held is None:
            alpha = params[alpha_key]
            # reason: no gradient can reach W or α (no grad mode, or both frozen: an attack's forwards): the noisy
            # weight is a constant, so the inference path serves it
            constant = not (torch.is_grad_enabled() and (weight.requires_grad or alpha.requires_grad))
            if constant and not (state.runtime or mask_key in self._buffers or in_graph_capture()):
                fast = inference_noisy_weight(self, name, weight, alpha, state.value)
                if fast is not None:
                    return fast
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
