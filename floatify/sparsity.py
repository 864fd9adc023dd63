"""FLOATS: one-shot (non-iterative) pruning of FLOAT models.

``sparsify(model, density)`` chooses a binary keep-mask once, for a target density (fraction of weights
kept), and from then on every pruned weight is exactly zero at every λ: the mask multiplies both the
weight and its noise, so a pruned weight never receives noise, never receives gradient (hence no
momentum and no weight-decay update) and stays zero after ``freeze()`` and after save/load. The noise
std of a layer is computed over its kept weights (pruned zeros would shrink it by ~sqrt(density)).

The mask lives in the state_dict as a bit-packed ``<layer>.weight_mask`` buffer (one bit per weight).
Loading a sparse checkpoint into a dense converted model restores the masks.

What is and is not faster: nothing runs faster by itself — PyTorch's dense kernels multiply the zeros
too. What shrinks is storage: :func:`save_sparse` writes only the kept values plus the bitmask, so the
file scales with density. Speed-ups need sparse kernels or structured sparsity, which this is not.

Example:
    >>> import torch, floatify
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 10)))
    >>> model = floatify.sparsify(model, 0.2)
    >>> from floatify.sparsity import sparsity_report
    >>> round(sparsity_report(model).density, 2)
    0.2
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from floatify.io import read_safetensors
from floatify.layers.conditioned import conditioned_class, is_floatify_layer
from floatify.layers.masks import MASK_SUFFIX, get_mask, has_mask, pack_mask, set_mask, unpack_mask
from floatify.layers.registry import conditioned_weight_names, is_batchnorm
from floatify.walk import iter_modules

__all__ = ["sparsify", "sparsity_report", "SparsityReport", "save_sparse", "load_sparse", "CRITERIA"]

CRITERIA = ("magnitude", "random", "snip")
LAYER_FLOOR = 0.01  # every layer keeps at least this fraction of its weights (and at least one weight)


def _targets(model: nn.Module, filter_fn) -> list[tuple[str, nn.Module, str]]:
    found = []
    for fqn, module in iter_modules(model):
        if is_batchnorm(module):
            continue
        names = conditioned_weight_names(module)
        if not names or (filter_fn is not None and not filter_fn(module, fqn)):
            continue
        for name in names:
            w = module._parameters.get(name)
            if isinstance(w, nn.Parameter) and w.is_floating_point():
                found.append((fqn, module, name))
    return found


def _raw_weight(module: nn.Module, name: str) -> nn.Parameter:
    """The registered Parameter ``name`` of a target layer (its raw value, not the λ-dependent property)."""
    weight = module._parameters[name]
    assert weight is not None  # reason: _targets keeps only registered floating-point Parameters
    return weight


def _current_mask(module: nn.Module, name: str) -> torch.Tensor | None:
    return get_mask(module, name) if is_floatify_layer(module) else None  # reason: not torch.nn.utils.prune's


def _scores(targets, criterion: str, seed: int) -> list[torch.Tensor]:
    if criterion == "magnitude":
        return [m._parameters[n].detach().abs().float() for _, m, n in targets]
    if criterion == "random":
        g = torch.Generator().manual_seed(seed)
        return [torch.rand(m._parameters[n].shape, generator=g).to(m._parameters[n].device) for _, m, n in targets]
    raise AssertionError(criterion)


def _snip_scores(model: nn.Module, targets, data: Iterable, batches: int) -> list[torch.Tensor]:
    """Connection sensitivity |w · ∂L/∂w| (Lee et al. 2019), summed over a few batches at λ = 0."""
    weights = [m._parameters[n] for _, m, n in targets]
    grads = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    was_training = model.training
    model.eval()
    used = 0
    for x, y in data:
        if used >= batches:
            break
        device = weights[0].device
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        for acc, g in zip(grads, torch.autograd.grad(loss, weights, allow_unused=True)):
            if g is not None:
                acc += g.float()
        used += 1
    model.train(was_training)
    if used == 0:
        raise ValueError("criterion='snip' got no batches from `data`")
    return [(w.detach().float() * g).abs() for w, g in zip(weights, grads)]


def sparsify(
    model: nn.Module,
    density: float,
    *,
    criterion: str = "auto",
    scope: str = "global",
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    data: Iterable | None = None,
    snip_batches: int = 4,
    seed: int = 0,
) -> nn.Module:
    """Prune ``model`` once to ``density`` (fraction of Conv/Linear weights kept), in place.

    Args:
        density: in (0, 1]; 1 keeps everything (a mask of ones).
        criterion: ``"magnitude"`` (|w|), ``"random"``, ``"snip"`` (|w·∂L/∂w| on ``data`` at λ = 0), or
            ``"auto"`` (default): ``"snip"`` when ``data`` is given, else ``"magnitude"``. benchmarks/floats.py
            (RESULTS.md, 3 seeds) found SNIP the best at 20% and 10% density under the digits threat model, where
            magnitude pruning collapses at 10%; at 50% the three are within a few points. Magnitude is the
            fallback only because it needs no data.
        scope: ``"global"`` (one threshold across layers) or ``"layer"`` (the same density in every layer).
            Either way each layer keeps at least 1% of its weights (and at least one): the floor.
        filter_fn: ``filter_fn(module, fqn) -> bool`` selects the layers to prune.
        data: an iterable of ``(x, y)`` batches, required by ``"snip"``.

    Calling it again re-prunes *from the current mask*: the new mask is a subset of the old one, so
    density can only go down (asking for a higher density is an error). Works on converted models and
    on plain ones (their pruned layers get a mask but no noise).

    Example:
        >>> import torch, floatify
        >>> model = floatify.sparsify(torch.nn.Sequential(torch.nn.Linear(10, 10)), 0.3, scope="layer")
        >>> int(model[0].floatify_mask("weight").sum())  # 30 of the 100 weights kept
        30
    """
    density, criterion = _check_sparsify_args(density, criterion, scope, data)
    targets = _targets(model, filter_fn)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no Conv/Linear weight to prune (or filter_fn excluded all)")
    current = [_current_mask(m, n) for _, m, n in targets]
    sizes = [_raw_weight(m, n).numel() for _, m, n in targets]
    target_total = _target_total(density, sizes, current)
    if criterion == "snip":
        assert data is not None  # reason: _check_sparsify_args refuses snip without data
        scores = _snip_scores(model, targets, data, snip_batches)
    else:
        scores = _scores(targets, criterion, seed)
    scores = _exclude_pruned(scores, current)
    masks = _layer_masks(scores, sizes, density) if scope == "layer" else _global_masks(scores, sizes, target_total)
    _set_masks(targets, masks)
    return model


def _check_sparsify_args(density: float, criterion: str, scope: str, data: Iterable | None) -> tuple[float, str]:
    """:func:`sparsify`'s ``density`` as a float and its criterion with ``"auto"`` resolved; a ValueError if wrong."""
    if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1] (fraction of weights kept), got {density!r}")
    density = float(density)  # reason: numpy scalars (np.float32(.5)) are fine, but keep the arithmetic in Python
    if criterion == "auto":
        criterion = "snip" if data is not None else "magnitude"
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)} or 'auto'")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if criterion == "snip" and data is None:
        raise ValueError("criterion='snip' needs data=<iterable of (x, y) batches> to measure saliency")
    return density, criterion


def _target_total(density: float, sizes: list[int], current: list[torch.Tensor | None]) -> int:
    """The number of weights to keep; a ValueError when that is more than the current masks keep."""
    kept_now = sum(s if c is None else int(c.sum()) for s, c in zip(sizes, current))
    target_total = round(density * sum(sizes))
    if target_total > kept_now:
        raise ValueError(
            f"the model is already sparse (density {kept_now / sum(sizes):.4f}); sparsify re-prunes from the "
            f"current mask, so density can only go down (asked for {density})"
        )
    return target_total


def _exclude_pruned(scores: list[torch.Tensor], current: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """Flat copies of ``scores`` with the weights the current masks prune scored -1 (below every real score)."""
    flat = [s.reshape(-1).clone() for s in scores]
    for s, c in zip(flat, current):
        if c is not None:
            s[~c.reshape(-1)] = -1.0  # reason: pruned weights stay pruned; scores are >= 0 otherwise
    return flat


def _set_masks(targets: list[tuple[str, nn.Module, str]], masks: list[torch.Tensor]) -> None:
    """Store each target weight's mask, first making a plain layer one whose weight property applies it."""
    for (_, module, name), mask in zip(targets, masks):
        if not is_floatify_layer(module):
            module.__class__ = conditioned_class(type(module))  # reason: its weight property applies the mask
        set_mask(module, name, mask)


def _layer_masks(scores: list[torch.Tensor], sizes: list[int], density: float) -> list[torch.Tensor]:
    """scope="layer": every layer keeps ``density`` of its weights (at least its floor)."""
    counts = [max(max(1, math.ceil(LAYER_FLOOR * n)), round(density * n)) for n in sizes]
    return [_top_k_mask(s, k) for s, k in zip(scores, counts)]


def _top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[torch.topk(scores, min(k, scores.numel()), sorted=False).indices] = True
    return mask


def _global_masks(scores: list[torch.Tensor], sizes: list[int], total: int) -> list[torch.Tensor]:
    floors = [min(max(1, math.ceil(LAYER_FLOOR * n)), n) for n in sizes]
    masks = [_top_k_mask(s, f) for s, f in zip(scores, floors)]
    remaining = max(0, total - sum(floors))
    if remaining:
        rest = torch.cat([torch.where(m, torch.full_like(s, -2.0), s) for s, m in zip(scores, masks)])
        top = torch.topk(rest, remaining, sorted=False).indices
        extra = torch.zeros_like(rest, dtype=torch.bool)
        extra[top] = True
        extra &= rest >= 0
        offset = 0
        for i, n in enumerate(sizes):
            masks[i] |= extra[offset:offset + n]
            offset += n
    return masks


@dataclass
class LayerSparsity:
    name: str
    kept: int
    total: int

    @property
    def density(self) -> float:
        return self.kept / self.total


@dataclass
class SparsityReport:
    layers: list[LayerSparsity] = field(default_factory=list)
    dense_bytes: int = 0
    compressed_bytes: int = 0

    @property
    def kept(self) -> int:
        return sum(x.kept for x in self.layers)

    @property
    def total(self) -> int:
        return sum(x.total for x in self.layers)

    @property
    def density(self) -> float:
        return self.kept / max(self.total, 1)

    def __str__(self) -> str:
        lines = [f"{'layer':48s} {'kept':>10s} {'total':>10s} {'density':>8s}"]
        lines += [f"{x.name:48s} {x.kept:10,d} {x.total:10,d} {x.density:8.4f}" for x in self.layers]
        lines.append(f"{'total':48s} {self.kept:10,d} {self.total:10,d} {self.density:8.4f}")
        lines.append(f"checkpoint: dense {self.dense_bytes / 1e6:.2f} MB, compressed (values + bitmask) "
                     f"{self.compressed_bytes / 1e6:.2f} MB ({self.compressed_bytes / max(self.dense_bytes, 1):.1%})")
        return "\n".join(lines)


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Per layer and in total: kept/total weights, density, and dense vs compressed checkpoint size."""
    report = SparsityReport()
    for fqn, module, name in _targets(model, None):
        weight: torch.Tensor = module._parameters[name]  # type: ignore[assignment]  # reason: _targets checked it
        mask = _current_mask(module, name)
        kept = int(torch.count_nonzero(weight)) if mask is None else int(mask.sum())
        report.layers.append(LayerSparsity(f"{fqn}.{name}" if fqn else name, kept, weight.numel()))
    report.dense_bytes = sum(t.numel() * t.element_size() for t in _plain_state(model).values())
    report.compressed_bytes = sum(t.numel() * t.element_size() for t in _compress(_plain_state(model)).values())
    return report


# ------------------------------------------------------------------------------ storage
_VALUES, _BITS = "::values", "::bitmask"


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.endswith(MASK_SUFFIX)}


def _compress(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in state.items():
        t = t.detach().cpu().contiguous()
        if t.is_floating_point() and t.dim() > 1:
            nonzero = t != 0
            # reason: values + 1 bit per weight beats dense below ~97% density for fp32
            if nonzero.sum() * t.element_size() + t.numel() / 8 < t.numel() * t.element_size():
                out[key + _VALUES] = t[nonzero].clone()
                out[key + _BITS] = pack_mask(nonzero)
                continue
        out[key] = t.clone()
    return out


SPARSE_KEY = "floatify-sparse"
MASKS_KEY = "floatify-sparse-masks"  # reason: files written before masks were stored explicitly lack it


def save_sparse(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state_dict with every sparse weight stored as kept values + bitmask (safetensors).

    The file size scales with density. The masks of a sparse model are stored explicitly (bit-packed), so a
    kept weight that happens to be exactly zero stays kept, and :func:`load_sparse` restores them even into
    a dense converted model. Written atomically (:func:`floatify.io.atomic_write`).
    """
    from safetensors.torch import save

    from floatify.io import atomic_write

    path = Path(path)
    plain = _plain_state(model)
    masks = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
             if k.endswith(MASK_SUFFIX)}
    shapes = {k: list(v.shape) for k, v in plain.items()}
    meta = {SPARSE_KEY: json.dumps(shapes), MASKS_KEY: json.dumps(sorted(masks))}
    return atomic_write(path, save({**_compress(plain), **masks}, metadata=meta))


def load_sparse(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a :func:`save_sparse` file into ``model`` (same architecture); restores the masks, also into a
    dense converted model. A damaged or foreign file is a ``ValueError`` that names it."""

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sparse file {path} does not exist or is not a file")
    raw, meta = read_safetensors(path, "sparse file", ValueError)
    if SPARSE_KEY not in meta:
        raise ValueError(f"{path} is not a floatify sparse export (no '{SPARSE_KEY}' header)")
    try:
        shapes = json.loads(meta[SPARSE_KEY])
        mask_keys = json.loads(meta[MASKS_KEY]) if MASKS_KEY in meta else None
        state = {}
        for key, shape in shapes.items():
            if key in raw:
                state[key] = raw[key]
                continue
            mask = unpack_mask(raw[key + _BITS], torch.Size(shape))
            values = raw[key + _VALUES]
            if values.numel() != int(mask.sum()):
                raise ValueError(f"'{key}' has {values.numel()} stored values for {int(mask.sum())} kept weights")
            t = torch.zeros(shape, dtype=values.dtype)
            t[mask] = values
            state[key] = t
        for key in mask_keys or ():
            state[key] = raw[key]
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise ValueError(f"{path} is corrupted ({type(err).__name__}: {err})") from None
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and not k.endswith(MASK_SUFFIX) and own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path} does not fit this model: '{wrong[0]}' has shape {tuple(state[wrong[0]].shape)} "
                         f"in the file but {tuple(own[wrong[0]].shape)} in the model")
    result = model.load_state_dict(state, strict=False)
    unexpected = result.unexpected_keys
    missing = [k for k in result.missing_keys if not k.endswith(MASK_SUFFIX)]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    stored = set(mask_keys or ())
    for fqn, module, name in _targets(model, None):
        key = f"{fqn}.{name}{MASK_SUFFIX}" if fqn else name + MASK_SUFFIX
        if not is_floatify_layer(module) or not has_mask(module, name):
            continue
        if mask_keys is None:  # reason: an old file without stored masks: the zero pattern is all we have
            module._buffers[name + MASK_SUFFIX] = pack_mask(module.get_parameter(name).detach() != 0)
        elif key not in stored:  # reason: the file is dense here; a mask left in the model would be stale
            del module._buffers[name + MASK_SUFFIX]
    return model
