"""The λ (lambda) conditioning context: which operating point every converted model runs at.

λ lives in a :class:`contextvars.ContextVar`, so concurrent threads and asyncio tasks each see
their own value. A thread started inside ``with lam(v):`` does **not** inherit ``v`` (threads
start with a fresh context, so they see the default λ = 0) unless it is started through
``contextvars.copy_context().run``. asyncio tasks copy the context when they are created, so a
task created inside ``with lam(v):`` sees ``v``.

For ``torch.compile`` the value is also held in a 0-d tensor: compiled graphs read the tensor
and guard only on ``λ > 0``, so changing λ costs no recompilation (at most two graphs: λ = 0
and λ > 0).

Example:
    >>> import floatify
    >>> from floatify.context import get_lam
    >>> get_lam()
    0.0
    >>> with floatify.lam(0.3):
    ...     get_lam()
    0.3
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import numbers
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

__all__ = ["lam", "get_lam", "validate_lam", "LamState", "lam_state", "hold_noise", "held_draws", "held_offsets",
           "lam_from_tensor", "constant_weights", "weights_are_constant", "register_recomputable", "recompute_saved",
           "compiling_training"]


@dataclass(frozen=True)
class LamState:
    """The active operating point: the float, a 0-d tensor mirror and whether it is positive."""

    value: float
    tensor: torch.Tensor
    active: bool  # value > 0; with ``noise`` the only things compiled graphs specialise on
    noise: bool = True  # False: adversarial BatchNorm but no weight noise (a deterministic model)
    runtime: bool = False  # True inside lam_from_tensor: λ is a program input, the noise is drawn in the graph
    full: bool = False  # value == 1.0: compiled training specialises on it (the adversarial BatchNorm set as is)


HeldOffsets = tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]
"""A compiled step's held draw: bank offsets, std(W) per noise slot, and the attack's constant noisy weights."""

_ZERO = LamState(0.0, torch.zeros((), dtype=torch.float32), False)
_LAM: contextvars.ContextVar[LamState] = contextvars.ContextVar("floatify_lam", default=_ZERO)
_HELD: contextvars.ContextVar[dict | None] = contextvars.ContextVar("floatify_held_noise", default=None)
_CONSTANT: contextvars.ContextVar[bool] = contextvars.ContextVar("floatify_constant_weights", default=False)
_OFFSETS: contextvars.ContextVar[HeldOffsets | None] = contextvars.ContextVar("floatify_held_offsets", default=None)
_COMPILED: contextvars.ContextVar[bool] = contextvars.ContextVar("floatify_compiled_training", default=False)

# The accessors the conditioned layers read on every weight access: the ContextVars' own bound ``get``
# methods, so the hot path costs exactly one ContextVar lookup.
lam_state: Callable[[], LamState] = _LAM.get
"""The :class:`LamState` of the calling thread/task."""
held_draws: Callable[[], dict | None] = _HELD.get
"""The noise draws of the innermost :func:`hold_noise` block (None outside one)."""
weights_are_constant: Callable[[], bool] = _CONSTANT.get
"""True inside :func:`constant_weights`."""
held_offsets: Callable[[], HeldOffsets | None] = _OFFSETS.get
"""Inside a compiled training step's :func:`hold_noise` block: the held draw as (one bank offset, one std(W)) per
noise slot, and inside its attack (:func:`constant_weights`) the noisy weights made from it (graph inputs,
:mod:`floatify.compile`); None elsewhere."""
compiling_training: Callable[[], bool] = _COMPILED.get
"""True while :func:`floatify.fit` trains a compiled model (:mod:`floatify.compile`)."""


def validate_lam(value: object, name: str = "lam") -> float:
    """Return ``value`` as a float in [0, 1] or raise a clear ``TypeError``/``ValueError``.

    Example:
        >>> import torch
        >>> from floatify.context import validate_lam
        >>> validate_lam(torch.tensor(0.5)), validate_lam(1)
        (0.5, 1.0)
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(
                f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}; "
                f"pass a Python float or a one-element tensor"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (0 = clean, 1 = most robust), got {value!r}")
    return value


def get_lam() -> float:
    """The λ the calling thread/task currently runs at (0.0 outside any :func:`lam` block).

    Example:
        >>> import floatify
        >>> from floatify.context import get_lam
        >>> with floatify.lam(0.25):
        ...     get_lam()
        0.25
    """
    return _LAM.get().value


@contextlib.contextmanager
def lam(value: float, *, noise: bool = True) -> Iterator[float]:
    """Run every converted model at operating point ``value`` inside the ``with`` block.

    ``value`` is a real number in [0, 1]: 0 is the clean network (clean BatchNorm, no weight
    noise), larger values select the adversarial BatchNorm and scale the weight noise.
    Nesting restores the outer value on exit, also when the body raises. ``noise=False`` keeps
    the operating point's BatchNorm but turns the weight noise off: the deterministic model used to
    measure how much robustness comes from randomness. (Inside floatify, where ``lam`` is also the name of
    operating-point parameters, modules import it as ``from floatify.context import lam as at_lam``.)

    Example:
        >>> import torch, floatify
        >>> model = floatify.convert(torch.nn.Linear(4, 2))
        >>> with floatify.lam(1.0):
        ...     y = model(torch.rand(3, 4))
    """
    v = validate_lam(value)
    if not isinstance(noise, bool):
        raise TypeError(f"noise must be True or False, got {noise!r}")
    token = _LAM.set(LamState(v, torch.tensor(v, dtype=torch.float32), v > 0.0, noise, full=v == 1.0))
    try:
        yield v
    finally:
        _LAM.reset(token)


@contextlib.contextmanager
def hold_noise(recompute: bool = True) -> Iterator[None]:
    """Draw the weight noise once per layer for the whole block instead of once per forward.

    Every forward inside the block sees the same η (one draw per layer, a bank window: no weight-sized
    buffer) and recomputes ``W + λ·α·std·η`` with one multiply-add. With ``recompute`` (default) a noisy weight
    that a layer saves for backward is kept as that recipe and recomputed in backward
    (:func:`recompute_saved`), so no weight-sized copy per layer lives from forward to backward (the set that
    :func:`constant_weights` holds lives until the loss takes it over). It is
    what :func:`floatify.float_loss` uses by default for a training step (``noise_draw="step"``): the PGD
    iterations (inside :func:`constant_weights`) and the loss all see one draw, which keeps the step cost of
    FLOAT close to plain PGD adversarial training. Evaluation never holds the noise: EOT attacks and scoring
    need a fresh draw per forward. Under ``torch.compile`` the block holds the draw only in compiled training
    (:mod:`floatify.compile` hands it to the graphs as bank offsets); elsewhere a compiled forward draws anew.
    The block keeps std(W) and the scale ``λ·std·α`` per version of W and α: like tensors autograd saves, it sees
    in-place changes (an optimizer step inside the block) but not writes through ``.data``.

    Example:
        >>> import torch, floatify
        >>> model = floatify.convert(torch.nn.Linear(4, 2))
        >>> x = torch.rand(3, 4)
        >>> from floatify.context import hold_noise
        >>> with floatify.lam(1.0), hold_noise():
        ...     torch.equal(model(x), model(x))
        True
    """
    token = _HELD.set({})
    try:
        with recompute_saved() if recompute else contextlib.nullcontext():
            yield
    finally:
        _HELD.reset(token)


@contextlib.contextmanager
def recompute_saved() -> Iterator[None]:
    """Inside :func:`hold_noise`: keep a noisy weight that autograd saves for backward as its recipe.

    The recipe (W, the held η and the scale λ·std·α) is recomputed in backward — the trick activation checkpointing
    uses — so no weight-sized copy per layer stays alive between forward and backward. It installs saved-tensor
    hooks, whose Python call per saved tensor costs time: :func:`floatify.float_loss` enables them for the
    forward whose graph outlives the next layer (the loss) and, for the attack, only where the previous step's
    gradients are alive (there :func:`constant_weights` recomputes instead of holding). Outside
    :func:`hold_noise` it does nothing.

    Example:
        >>> import torch, floatify
        >>> from floatify.context import hold_noise, recompute_saved
        >>> model = floatify.convert(torch.nn.Linear(4, 2))
        >>> x = torch.rand(3, 4, requires_grad=True)
        >>> with floatify.lam(1.0), hold_noise(recompute=False), recompute_saved():
        ...     model(x).sum().backward()
    """
    held = _HELD.get()
    if held is None or _COMPILED.get():
        # reason: compiled training: the compiler's partitioner already recomputes the noisy weights in backward,
        # and a hook would cost a Python call per saved tensor of every compiled graph
        yield
        return
    with torch.autograd.graph.saved_tensors_hooks(functools.partial(_pack, held), _unpack):
        yield


def register_recomputable(tensor: torch.Tensor, recompute: Callable[[], torch.Tensor]) -> None:
    """Inside :func:`hold_noise`: if autograd saves ``tensor`` for backward, keep ``recompute`` instead.

    ``recompute()`` must return the same values (it runs in backward, without autograd history). Outside a
    :func:`hold_noise` block it does nothing.
    """
    held = _HELD.get()
    if held is not None and not tensor.is_inference():  # reason: an inference tensor is never saved for backward
        key = ("recompute", id(tensor))

        def forget(_: weakref.ref) -> None:  # reason: the entry goes with the tensor: a long block keeps none per read
            held.pop(key, None)

        held[key] = (weakref.ref(tensor, forget), recompute, tensor._version)


def _pack(held: dict, tensor: torch.Tensor):
    # reason: a tensor changed in place since it was registered (its version, shared with its views) is no longer
    # what the recipe computes: it is saved as is
    entry = held.get(("recompute", id(tensor)))
    if entry is not None and entry[0]() is tensor and entry[2] == tensor._version:
        return entry[1], None
    base = tensor._base
    if base is not None:  # reason: F.linear saves the transposed view W.t(), not W
        entry = held.get(("recompute", id(base)))
        if entry is not None and entry[0]() is base and entry[2] == tensor._version:
            return entry[1], (tensor.size(), tensor.stride(), tensor.storage_offset())
    return tensor


def _unpack(saved):
    if isinstance(saved, torch.Tensor):
        return saved
    recompute, view = saved
    value = recompute()
    return value if view is None else value.as_strided(*view)


@contextlib.contextmanager
def constant_weights() -> Iterator[None]:
    """Inside :func:`hold_noise`: treat the noisy weights as constants, computed once for the block.

    For an attack inside a training step: it differentiates with respect to the input only, so the noisy
    weights carry no autograd history. Each layer's is computed once and reused by every attack iteration (one
    weight-sized set, on every device: recomputing it per read makes a resnet18 step on an H200 1.6x PGD-AT's
    instead of 1.2x, ``float-late`` in benchmarks/RESULTS.md); the first read after the block with W and α
    unchanged (the loss that follows the attack) takes it over, with gradients for W and α, and the rest goes with the
    :func:`hold_noise` block. A weight that already has a gradient (the previous step's, alive through the
    attack when ``zero_grad`` runs after the forwards) is recomputed per read instead, since the set would add
    to the peak memory there; :func:`floatify.float_loss` then wraps the attack in :func:`recompute_saved`
    (:func:`floatify.fit` frees the gradients first, so it holds). Like a tensor autograd saves, the held set is
    checked against W's and α's versions, so an in-place change between the attack and the loss is seen but a
    write through ``.data`` is not. Outside :func:`hold_noise` it has no effect.

    Example:
        >>> import torch, floatify
        >>> from floatify.context import hold_noise, constant_weights
        >>> model = floatify.convert(torch.nn.Linear(4, 2))
        >>> with floatify.lam(1.0), hold_noise():
        ...     with constant_weights():
        ...         w = model.weight
        ...     w.requires_grad, torch.equal(w, model.weight)
        (False, True)
    """
    token = _CONSTANT.set(True)
    try:
        yield
    finally:
        _CONSTANT.reset(token)


@contextlib.contextmanager
def lam_from_tensor(value: torch.Tensor) -> Iterator[None]:
    """Run at the λ held in the 0-d tensor ``value`` (e.g. a traced program input), a fresh draw per forward.

    For tracing a program whose λ is a runtime input (:func:`floatify.export`): the conditioned layers read
    λ from ``value`` and take their λ > 0 path (weight noise on, dual BatchNorm mixed by ``bn_mix``) whatever
    the tensor holds, so ``value`` is not validated and the caller routes λ = 0 elsewhere. Any enclosing
    :func:`hold_noise` is suspended inside the block. :func:`get_lam` reads 1.0 inside it.

    Example:
        >>> import torch, floatify
        >>> from floatify.context import lam_from_tensor
        >>> model = floatify.convert(torch.nn.Linear(4, 2))
        >>> x = torch.rand(3, 4)
        >>> with lam_from_tensor(torch.tensor(0.0)):  # the λ > 0 path with λ = 0: no noise added
        ...     torch.equal(model(x), torch.nn.functional.linear(x, model.weight, model.bias))
        True
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"lam_from_tensor expects a torch.Tensor, got {type(value).__name__}")
    lam_token = _LAM.set(LamState(1.0, value, True, True, runtime=True))  # reason: 1.0 only marks it active
    held_token = _HELD.set(None)
    try:
        yield
    finally:
        _HELD.reset(held_token)
        _LAM.reset(lam_token)
