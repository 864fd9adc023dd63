"""Compiled training: :func:`floatify.fit` with ``compile=True`` runs every forward and backward of a step compiled.

The converted model is compiled once, in place (``module.compile``'s mechanism: the state_dict keys, the model
object, its DDP wrapper and its EMA stay what they are), for as long as :func:`floatify.fit` trains; afterwards it
is the eager model it was. λ is a 0-d tensor the graphs read (:mod:`floatify.context`), so changing it never
recompiles; the graphs specialise only on what changes the computation: λ > 0 or not, train or eval mode (the
attack runs with BatchNorm in eval mode) and whether the input needs a gradient (the attack's forwards).

The held noise of a training step (``noise_draw="step"``, :func:`floatify.context.hold_noise`) enters the graphs as
one bank offset and one std(W) per conditioned weight: made once per step, outside the graph, from the same generator
and in the same order as the eager held draws, and read by every forward of the step (the attack's and the loss's). So a
compiled step sees the very noise of the eager step, and no graph is recompiled per step, per attack iteration,
per λ or per epoch. The saved-tensor hooks that keep eager noisy weights as recipes are off: the compiler's
partitioner recomputes such cheap element-wise results in backward on its own.

Where the installed torch cannot compile (no working backend), :func:`floatify.fit` warns once and trains eagerly;
a benchmark asks :func:`compiler_problem` first and stops instead (its numbers must never silently be eager ones).

Example:
    >>> from floatify.compile import COMPILE_MODES, check_compile_options
    >>> COMPILE_MODES
    ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
    >>> check_compile_options(False, "default")
    Traceback (most recent call last):
    ...
    ValueError: compile_mode='default' needs compile=True (--compile): set compile=True, or drop compile_mode
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

from floatify.config import check_bool, check_choice
from floatify.context import _COMPILED, _OFFSETS, held_draws, lam_state, weights_are_constant
from floatify.layers.conditioned import ALPHA_SUFFIX, NOISE_SLOTS_ATTR, is_conditioned
from floatify.layers.noise import bank_window, draw_offset, get_noise_source
from floatify.layers.noisy_weight import held_std
from floatify.walk import iter_modules

__all__ = ["COMPILE_MODES", "CUDA_GRAPH_MODES", "BACKEND", "check_compile_options", "check_compile_device",
           "compiler_problem", "compiled_training", "noise_slots", "frozen_parameters"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""The ``torch.compile`` modes training accepts (``compile_mode``; None is ``"default"``)."""
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
"""The modes that capture CUDA graphs: on a CUDA device only."""
BACKEND = "inductor"
"""The compiler backend of compiled training (tests set a light one: ``aot_eager``)."""

_OFFSETS_KEY = "compiled_offsets"  # reason: where a hold_noise block keeps its compiled held draw
_DRAWN_KEY = "compiled_drawn"  # reason: ... its offsets as Python ints (the eager side's bank views)
_CONSTANT_KEY = "compiled_constant"  # reason: ... and its attack's noisy weights
_PROBLEMS: dict[tuple[object, str], str | None] = {}


def check_compile_options(compile: object, mode: object) -> None:
    """The checks of :class:`floatify.TrainConfig`'s ``compile`` and ``compile_mode``; one line naming the fix.

    Example:
        >>> from floatify.compile import check_compile_options
        >>> check_compile_options(True, "turbo")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: compile_mode must be one of default, reduce-overhead, ..., got 'turbo'
    """
    check_bool("compile", compile)
    check_choice("compile_mode", mode, COMPILE_MODES, optional=True)
    if mode is not None and not compile:
        raise ValueError(f"compile_mode={mode!r} needs compile=True (--compile): set compile=True, or drop "
                         f"compile_mode")


def check_compile_device(mode: str | None, device: torch.device | str) -> None:
    """A ValueError where ``mode`` cannot run on ``device``: CUDA graphs need a CUDA device.

    Example:
        >>> from floatify.compile import check_compile_device
        >>> check_compile_device("reduce-overhead", "cpu")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: compile_mode='reduce-overhead' captures CUDA graphs, which need a CUDA device, ...
    """
    device = torch.device(device)
    if mode in CUDA_GRAPH_MODES and device.type != "cuda":
        raise ValueError(f"compile_mode={mode!r} captures CUDA graphs, which need a CUDA device, and the model is on "
                         f"{device.type}: use compile_mode 'default' (or 'max-autotune-no-cudagraphs') there")


def compiler_problem(device: torch.device | str = "cpu", backend: str | Callable | None = None) -> str | None:
    """Why ``torch.compile`` with ``backend`` cannot run on ``device`` here (one line), or None where it can.

    It compiles and runs a one-line function once per backend and device type (the answer is kept for the
    process); inductor on CPU needs a C++ compiler.

    Example:
        >>> from floatify.compile import compiler_problem
        >>> compiler_problem("cpu", backend="eager") is None
        True
    """
    backend = backend or BACKEND
    device = torch.device(device)
    key = (backend, device.type)
    if key not in _PROBLEMS:
        _PROBLEMS[key] = _probe(backend, device)
    return _PROBLEMS[key]


def _probe(backend: str | Callable, device: torch.device) -> str | None:
    def twice_plus_one(x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1

    try:
        x = torch.arange(4.0, device=device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reason: the probe's own compiler chatter is not the user's business
            got = torch.compile(twice_plus_one, backend=backend, dynamic=False)(x)
        if not torch.equal(got, x * 2 + 1):
            return f"torch.compile (backend {backend}) computes wrong results on {device.type}"
    except Exception as err:  # reason: any failure of the compiler stack means "cannot compile here"
        # reason: dynamo wraps a backend's error (BackendCompilerFailed); the backend's own says what is missing
        cause = getattr(err, "inner_exception", None) or err.__cause__ or err
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        name = getattr(backend, "__name__", backend)
        return f"torch {torch.__version__} cannot compile with backend {name} on {device.type} " \
               f"({type(cause).__name__}: {first[:160]})"
    return None


def noise_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every conditioned weight of ``model`` as (layer, weight name), in forward-registration order: the order in
    which the held draws of a step are made (one bank offset each).

    Example:
        >>> import torch, floatify
        >>> from floatify.compile import noise_slots
        >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)))
        >>> [(type(m).__name__, name) for m, name in noise_slots(model)]
        [('Float[torch/nn/modules/linear:Linear]', 'weight')]
    """
    return [(module, name) for _, module in iter_modules(model) if is_conditioned(module)
            for name in getattr(type(module), "_floatify_weights", ()) if name + ALPHA_SUFFIX in module._parameters]


@contextlib.contextmanager
def compiled_training(model: nn.Module, mode: str | None = None,
                      backend: str | Callable | None = None) -> Iterator[bool]:
    """Inside the block ``model`` (a converted model, not a DDP wrapper) runs compiled; yields whether it does.

    Where the compiler does not work here it warns once and ``model`` stays eager (yields False). On exit the model is
    eager again: no compiled state stays on it (the compiled graphs stay in torch's cache for the process).

    Example:
        >>> import torch, floatify
        >>> from floatify.compile import compiled_training
        >>> model = floatify.convert(torch.nn.Linear(4, 2))
        >>> with compiled_training(model, backend="eager") as compiled, floatify.lam(1.0):
        ...     y = model(torch.rand(3, 4))
        >>> compiled, model._compiled_call_impl is None
        (True, True)
    """
    backend = backend or BACKEND
    device = next(model.parameters()).device
    check_compile_device(mode, device)
    problem = compiler_problem(device, backend)
    if problem is not None:
        warnings.warn(f"{problem}; training eagerly (compile=False) instead", RuntimeWarning, stacklevel=3)
        yield False
        return
    slots = noise_slots(model)
    for i, (module, name) in enumerate(slots):
        module.__dict__.setdefault(NOISE_SLOTS_ATTR, {})[name] = i
    compiled = torch.compile(model._call_impl, backend=backend, mode=mode)
    model._compiled_call_impl = _with_held_draw(compiled, slots, device, list(model.parameters()))
    token = _COMPILED.set(True)
    try:
        yield True
    finally:
        _COMPILED.reset(token)
        model._compiled_call_impl = None
        for module, _ in slots:
            module.__dict__.pop(NOISE_SLOTS_ATTR, None)


def _with_held_draw(compiled: Callable, slots: list[tuple[nn.Module, str]], device: torch.device,
                    params: list[nn.Parameter]) -> Callable:
    """The compiled forward, handed the step's held draw (bank offsets) inside a :func:`hold_noise` block."""

    def call(*args, **kwargs):
        # reason: inside constant_weights (a training step's attack) the backward needs the input's gradient only
        with frozen_parameters(params) if weights_are_constant() else contextlib.nullcontext():
            held, state = held_draws(), lam_state()
            if held is None or not (state.active and state.noise) or get_noise_source() != "bank":
                return compiled(*args, **kwargs)  # reason: no held draw: each forward draws in the graph
            offsets, stds = _held_draw(held, slots, device)
            constant = _constant_weights(held, slots, state) if weights_are_constant() else None
            token = _OFFSETS.set((offsets, stds, constant))
            try:
                return compiled(*args, **kwargs)
            finally:
                _OFFSETS.reset(token)

    return call


def _held_draw(held: dict, slots: list[tuple[Any, str]], device: torch.device) -> tuple:
    """The step's held draw for the graphs: one bank offset and one std(W) per noise slot, made at its first forward.

    reason: one offset per weight from torch's default generator, in the order the eager layers make their held
    draws (at the block's first forward), so a compiled step sees the eager step's noise; std(W) once per step too,
    as the eager held draw computes it, instead of a reduction per layer in every forward
    """
    draw = held.get(_OFFSETS_KEY)
    if draw is None:
        drawn = [draw_offset(module._parameters[name]) for module, name in slots]
        stds = torch.stack([held_std(module._parameters[name], module.floatify_mask(name)).to(device)
                            for module, name in slots])
        held[_DRAWN_KEY] = drawn
        draw = held[_OFFSETS_KEY] = (torch.tensor(drawn, dtype=torch.int64).to(device, non_blocking=True), stds)
    return draw


def _constant_weights(held: dict, slots: list[tuple[Any, str]], state) -> tuple[torch.Tensor, ...]:
    """The attack's noisy weights of the step (no autograd history), made once per λ and weight version.

    reason: the attack differentiates with respect to the input only (:func:`floatify.context.constant_weights`):
    made in each of its forwards, the noisy weights cost a weight-sized read of the bank and a multiply-add per
    iteration (a resnet18's compiled PGD-7 step 1.19x PGD-AT's on CPU); made once, as the eager step does, the
    attack's graphs read them like plain weights. The values are the graphs' own formula, on the same draw.
    """
    version = (state.value, *(module._parameters[name]._version for module, name in slots))
    hit = held.get(_CONSTANT_KEY)
    if hit is None or hit[0] != version:
        _, stds = held[_OFFSETS_KEY]
        with torch.no_grad():
            weights = tuple(_noisy(module, name, state, offset, stds[i])
                            for i, ((module, name), offset) in enumerate(zip(slots, held[_DRAWN_KEY])))
        hit = held[_CONSTANT_KEY] = (version, weights)
    return hit[1]


def _noisy(module: Any, name: str, state, offset: int, std: torch.Tensor) -> torch.Tensor:
    weight = module._parameters[name]
    unit = (state.tensor.to(std.device) * std).to(weight.dtype)
    return module.floatify_noisy_weight(name, state.tensor, eta=bank_window(weight, offset), unit=unit)


@contextlib.contextmanager
def frozen_parameters(params: list[nn.Parameter]) -> Iterator[None]:
    """Inside the block the parameters that required a gradient do not: a forward's backward computes the input's
    gradient only.

    reason: a compiled backward computes the gradient of every graph input that requires one, whatever
    ``torch.autograd.grad`` asks for, so an attack's backward through a compiled model computed every weight
    gradient too (a resnet18's convolution backward was ~2/3 of a compiled PGD-7 step on CPU); an eager backward
    skips them by itself.

    Example:
        >>> import torch
        >>> from floatify.compile import frozen_parameters
        >>> layer = torch.nn.Linear(2, 2)
        >>> with frozen_parameters(list(layer.parameters())):
        ...     inside = layer.weight.requires_grad
        >>> inside, layer.weight.requires_grad
        (False, True)
    """
    thawed = [p for p in params if p.requires_grad]
    for p in thawed:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in thawed:
            p.requires_grad_(True)
