"""Where the weight noise η ~ N(0, I) of a conditioned layer comes from.

Two sources, chosen per thread/task with :func:`noise_source`:

* ``"bank"`` (default): η is a window of a pre-drawn standard-normal *bank* read at a uniformly random
  offset. One bank per device and dtype serves every layer; a read costs one random integer and no new
  memory (the window is a view), so a noisy weight is one multiply-add over W. On CPU a fresh Gaussian draw
  costs more than the forward it perturbs (``benchmarks/overhead.py``'s "noise floor"); the bank removes it.
* ``"fresh"``: a new ``torch.randn`` per read, the reference.

What changes for an attacker (measured with EOT in ``benchmarks/noise_source.py``): every η is still exactly
N(0, I) — a window of independent standard normals — and the layers' offsets are independent, but the draws
of one layer are overlapping windows of one fixed sequence (``len(bank) − numel + 1`` of them) instead of
independent vectors. The bank is drawn once from a fixed seed (it is not a secret: a white-box attacker sees
the model's state anyway); the offsets come from torch's default generator, so ``torch.manual_seed`` makes a
run reproducible as it does with fresh draws. Under ``torch.compile`` a CPU forward without autograd calls the
eager path as one operator (:mod:`floatify.layers.noisy_weight`); elsewhere the offset is drawn in the graph and the
window read by index (the bank a graph input); ``floatify.export``, ``torch.jit.trace`` and ``freeze(seed=...)``
always draw fresh (in-graph or from their own generator), so an exported program carries no bank.

Example:
    >>> import torch, floatify
    >>> from floatify.layers.noise import noise_source
    >>> model = floatify.convert(torch.nn.Linear(64, 2))
    >>> x = torch.rand(1, 64)
    >>> with floatify.lam(1.0):
    ...     a, b = model(x), model(x)          # two bank windows: two different draws
    ...     with noise_source("fresh"):
    ...         c = model(x)                   # torch.randn
    >>> bool((a != b).any()), bool((a != c).any())
    (True, True)
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from collections.abc import Iterator

import torch

# reason: private, but the only way to see (and step out of) an active FakeTensorMode or other dispatch mode
from torch.utils._python_dispatch import _disable_current_modes, _get_current_dispatch_mode

__all__ = ["NOISE_SOURCES", "DEFAULT_NOISE_SOURCE", "noise_source", "get_noise_source", "standard_normal",
           "bank_size", "in_graph_capture", "held_window", "bank_window", "draw_offset", "BANK_SEED", "MIN_BANK_SIZE"]

NOISE_SOURCES = ("bank", "fresh")
DEFAULT_NOISE_SOURCE = "bank"
BANK_SEED = 0x5EED_F10A7
MIN_BANK_SIZE = 1 << 22  # reason: ≥ 4M windows for every layer up to 4M weights; 16 MiB in float32
"""The smallest bank; a bank grows to twice the largest weight it serves, so the largest layer gets as many
distinct windows as it has entries."""

_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("floatify_noise_source", default=DEFAULT_NOISE_SOURCE)
_BANKS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
_EXTRA_BANKS: dict[tuple[torch.device, torch.dtype, int], torch.Tensor] = {}  # reason: see _ensure_bank
_LOCK = threading.Lock()

get_noise_source = _SOURCE.get
"""The noise source of the calling thread/task: ``"bank"`` or ``"fresh"``."""


@contextlib.contextmanager
def noise_source(kind: str) -> Iterator[str]:
    """Draw the weight noise from ``kind`` (``"bank"`` or ``"fresh"``) inside the ``with`` block.

    Example:
        >>> from floatify.layers.noise import noise_source, get_noise_source
        >>> with noise_source("fresh"):
        ...     get_noise_source()
        'fresh'
    """
    if kind not in NOISE_SOURCES:
        raise ValueError(f"noise source must be one of {', '.join(NOISE_SOURCES)}, got {kind!r}")
    token = _SOURCE.set(kind)
    try:
        yield kind
    finally:
        _SOURCE.reset(token)


def _bank(numel: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    key = (device, dtype)
    bank = _BANKS.get(key)
    if bank is None or bank.numel() < 2 * numel:
        with _LOCK:
            bank = _BANKS.get(key)
            if bank is None or bank.numel() < 2 * numel:
                bank = _BANKS[key] = _draw_bank(_size_for(numel), device, dtype)
                # reason: rebinding, not writing in place: views handed out stay valid
    return bank


def _size_for(numel: int) -> int:
    return max(MIN_BANK_SIZE, 1 << math.ceil(math.log2(2 * numel)))


def _draw_bank(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(BANK_SEED)
    # reason: drawn on the CPU from one seed, so every device and process holds the same values; a plain tensor
    # whatever mode the first caller runs in (an inference-mode bank could never be saved for backward, one made
    # under a dispatch mode would be fake), and it is cached for the process
    with torch.inference_mode(False), torch.no_grad(), _disable_current_modes():
        return torch.randn(size, generator=gen, device="cpu").to(device=device, dtype=dtype)


def bank_size(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> int:
    """Entries in the bank for ``device``/``dtype`` (0 while none was needed)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # reason: banks are keyed by the weights' device, cuda:N
        device = torch.device("cuda", torch.cuda.current_device())
    bank = _BANKS.get((device, dtype))
    return 0 if bank is None else bank.numel()


def in_graph_capture() -> bool:
    """True while torch.compile, torch.export or torch.jit.trace captures a graph, or a dispatch mode is active:
    there a value read back into Python (a bank offset, a scale) would become a constant of the graph."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or _get_current_dispatch_mode() is not None)


def standard_normal(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """η ~ N(0, I) shaped like ``like``: a bank window (under ``torch.compile`` at an offset drawn in the graph),
    or a fresh draw (``generator`` given, source "fresh", or inside ``torch.export``/``jit.trace``).

    Example:
        >>> import torch
        >>> w = torch.empty(3, 4)
        >>> standard_normal(w).shape
        torch.Size([3, 4])
    """
    if generator is None and _SOURCE.get() != "fresh" and torch.compiler.is_compiling() \
            and not torch.compiler.is_exporting():
        return _compiled_window(like)
    if generator is not None or _SOURCE.get() == "fresh" or in_graph_capture():
        # reason: exported and traced graphs draw in-graph (a bank offset would be a Python constant, and an
        # exported program would carry the bank), and a dispatch mode (FakeTensorMode) must not see the bank
        return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)
    return bank_window(like, draw_offset(like))


def bank_window(like: torch.Tensor, offset: int) -> torch.Tensor:
    """The bank window at ``offset`` shaped like ``like``: a view, no copy (the bank made by :func:`draw_offset`).

    Example:
        >>> import torch
        >>> from floatify.layers.noise import bank_window, draw_offset
        >>> w = torch.empty(2, 3)
        >>> bank_window(w, draw_offset(w)).shape
        torch.Size([2, 3])
    """
    numel = like.numel()
    return _BANKS[(like.device, like.dtype)][offset:offset + numel].view(like.shape)


def draw_offset(like: torch.Tensor) -> int:
    """Where the bank window of a weight shaped like ``like`` starts: uniform, from torch's default generator (the
    device's bank is made or grown first)."""
    numel = like.numel()
    bank = _bank(numel, like.device, like.dtype)
    return int(torch.randint(0, bank.numel() - numel + 1, (), device="cpu"))


def held_window(like: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Under ``torch.compile``: the bank window at ``offset`` (a graph input) — a held draw of compiled training.

    reason: compiled training (:mod:`floatify.compile`) draws each layer's offset once per training step outside the
    graph, exactly as the eager held draw does, so every forward of the step (the attack's and the loss's) reads the
    same window and one graph serves every step. The bank is the device's, made large enough when the offsets are
    drawn (:func:`draw_offset`).
    """
    numel = like.numel()
    bank = _BANKS[(like.device, like.dtype)]  # reason: global tensors become inputs of the graph, guarded by it
    torch._check(bank.numel() >= 2 * numel)
    return bank[torch.arange(numel, device=like.device) + offset].view(like.shape)


def _compiled_window(like: torch.Tensor) -> torch.Tensor:
    """Under ``torch.compile``: a bank window at an offset drawn in the graph.

    reason: the eager offset is a Python int, which a graph would freeze; here the offset is a graph tensor and
    the window an indexed read that the compiler fuses into the noisy weight's multiply-add (a fresh in-graph
    ``randn`` of a resnet18's weights cost ~20x its compiled forward on CPU). The bank is made, if missing, while
    tracing (outside the graph) and read as a graph input.
    """
    numel = like.numel()
    size = _ensure_bank(numel, like.device, like.dtype)
    # reason: global tensors become inputs of the graph, guarded by it
    bank = _BANKS[(like.device, like.dtype)] if size == 0 else _EXTRA_BANKS[(like.device, like.dtype, size)]
    torch._check(bank.numel() >= 2 * numel)  # reason: what _ensure_bank made true, told to the symbolic shapes
    offset = torch.randint(0, bank.numel() - numel + 1, (), device=like.device)
    return bank[torch.arange(numel, device=like.device) + offset].view(like.shape)


@torch.compiler.assume_constant_result
def _ensure_bank(numel: int, device: torch.device, dtype: torch.dtype) -> int:
    """The bank for a weight of ``numel`` entries under ``torch.compile``: 0 for the device's bank (made if
    missing), else the size of an extra bank. It runs once per layer, at trace time, outside the graph.

    reason: drawing a bank cannot be traced, and a constant result lets the compiler run it outside the graph (a
    tensor result would be one graph constant per layer, which it rejects). The device's bank is never regrown
    here: layers traced earlier already read it, so a larger layer gets an extra bank of its own, kept for the
    process (graphs may read it).
    """
    bank = _BANKS.get((device, dtype))
    size = 0
    if bank is None:
        bank = _bank(numel, device, dtype)
    elif bank.numel() < 2 * numel:
        size = _size_for(numel)
        with _LOCK:
            bank = _EXTRA_BANKS.get((device, dtype, size))
            if bank is None:
                bank = _EXTRA_BANKS[(device, dtype, size)] = _draw_bank(size, device, dtype)
    # reason: the graph reads the bank as an input; not specialising on its size lets a bank that eager code regrows
    # later (a larger model) serve the same graph without a recompile
    torch._dynamo.maybe_mark_dynamic(bank, 0)
    return size
