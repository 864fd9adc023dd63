"""Ship the dial: a ``torch.export`` program (or an ONNX model) that takes λ as a runtime input.

:func:`floatify.freeze` bakes one operating point into a plain model. :func:`export` keeps the whole dial:
the program's inputs are the images and λ as a 0-d float32 tensor, and one program serves every λ with
no re-export and no recompilation:

* λ = 0 runs the clean network, **bitwise** the eager model's output at λ = 0, with no noise drawn
  (no extra latency);
* λ > 0 draws ``η ~ N(0, 1)`` for every conditioned weight *inside the graph* on every call and uses
  ``W·m + λ·α·std(W)·η·m`` (``m`` the sparsity mask, if any), and reads each dual BatchNorm as the model
  does: ``lerp(clean, adversarial, λ)`` with ``bn_mix="interpolate"``, the adversarial set with
  ``bn_mix="switch"``.

How: the program is ``torch.cond(λ > 0, noisy, clean, (x,))``. The noisy branch is the converted model
traced with λ bound to the runtime tensor (so every conditioned read becomes the noisy-weight and
BatchNorm-mixing computation in the graph); the clean branch is the same model with floatify's extra
state removed, sharing the very same weight tensors (stored once). ``std(W)`` over the kept weights and
the unpacked sparsity masks are computed once at export time (the program's weights are fixed) and
stored as buffers of the program. The graph contains only ATen ops: loading it needs torch, not
floatify. BatchNorm runs in eval mode (an inference program); λ is not range-checked inside the program
(validate it before calling: λ ≤ 0 or NaN selects the clean branch).

Example:
    >>> import os, tempfile, torch, floatify
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
    ...                           torch.nn.Linear(8 * 6 * 6, 10))
    >>> model = floatify.convert(net).eval()
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "dial.pt2")
    ...     torch.export.save(floatify.export(model, torch.rand(2, 3, 8, 8)), path)
    ...     run = torch.export.load(path).module()              # in any process, no floatify needed
    >>> x = torch.rand(5, 3, 8, 8)                               # any batch size
    >>> with torch.no_grad():
    ...     torch.equal(run(x, torch.tensor(0.0)), model(x)), torch.equal(run(x, torch.tensor(0.5)), model(x))
    (True, False)
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from floatify.context import lam_from_tensor
from floatify.layers.conditioned import ALPHA_SUFFIX, is_floatify_layer
from floatify.layers.dual_bn import ADV_SUFFIX
from floatify.layers.registry import is_batchnorm
from floatify.walk import iter_modules

__all__ = ["export", "export_onnx"]


def _refuse_unexportable(model: object, what: str) -> None:
    """One clear ``ValueError`` line for every model :func:`export` cannot turn into a dial program."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} expects a torch.nn.Module, got {type(model).__name__}")
    for fqn, module in [("", model), *iter_modules(model)]:
        where = f"submodule '{fqn}' of the model" if fqn else "the model"
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            raise ValueError(f"{what}: {where} is wrapped in {type(module).__name__}; export the bare converted "
                             f"model instead (model.module)")
        if type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod"):
            raise ValueError(f"{what}: {where} was compiled with torch.compile; export the original converted "
                             f"model instead (model._orig_mod)")
    from floatify.summary import summary

    report = summary(model)
    if not report.conditioned:
        raise ValueError(f"{what}: {type(model).__name__} has no λ-conditioned weight; convert it first "
                         f"(model = floatify.convert(model)) or, for one fixed operating point, use floatify.freeze")
    problems = [(site, reason) for site, reason in report.skipped if reason != "excluded by filter_fn"]
    if problems:
        site, reason = problems[0]
        raise ValueError(
            f"{what}: {len(problems)} weight(s) of the model could not be conditioned, e.g. '{site}' ({reason}); "
            f"the exported dial would ignore λ there. Remove the cause (e.g. torch.nn.utils.remove_weight_norm / "
            f"parametrize.remove_parametrizations) and convert again, or exclude the layers with convert's "
            f"filter_fn; floatify.summary(model) lists them"
        )


def _read_buffer(owner: nn.Module, keys: dict[str, str], name: str) -> torch.Tensor | None:
    key = keys.get(name)
    return None if key is None else getattr(owner, key)


class _Dial(nn.Module):
    """``forward(x, lam)``: the converted model at the runtime operating point ``lam`` (a 0-d tensor)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # reason: a private copy; the caller's model is never modified (classes, caches, hooks)
        memo: dict[int, object] = {}
        model = copy.deepcopy(model, memo).eval()
        self.model = model
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
        clean = copy.deepcopy(model, dict(shared))  # the same tensors: the program stores each weight once
        pairs: list[tuple[Any, Any]] = [(a, b) for (_, a), (_, b) in zip(iter_modules(model), iter_modules(clean),
                                                                          strict=True)]
        for noisy_m, clean_m in pairs:
            if not is_floatify_layer(noisy_m):  # reason: also pruned layers without noise (their mask)
                continue
            if is_batchnorm(noisy_m):  # λ = 0 reads the clean BatchNorm: drop the adversarial set
                for store in (clean_m._parameters, clean_m._buffers):
                    for key in [k for k in store if k.endswith(ADV_SUFFIX)]:
                        del store[key]
                continue
            std_keys: dict[str, str] = {}
            mask_keys: dict[str, str] = {}
            for name in getattr(type(noisy_m), "_floatify_weights", ()):
                if noisy_m._parameters.get(name) is None:
                    continue
                index = len(self._buffers)
                mask = noisy_m.floatify_mask(name)
                if mask is not None:  # unpacked once here rather than on every call
                    mask_keys[name] = f"mask_{index}"
                    self.register_buffer(mask_keys[name], mask.detach().clone())
                if name + ALPHA_SUFFIX in noisy_m._parameters:
                    # reason: the program's weights are fixed, so std(W) over the kept weights is a constant;
                    # computing it here also avoids a data-dependent shape (W[mask]) inside the graph
                    std_keys[name] = f"std_{index}"
                    self.register_buffer(std_keys[name], noisy_m.floatify_weight_std(name).detach().clone())
                    del clean_m._parameters[name + ALPHA_SUFFIX]  # λ = 0: W (or W·m), as the model reads it
            for module in (noisy_m, clean_m):
                module.__dict__["floatify_weight_std"] = functools.partial(_read_buffer, self, std_keys)
                module.__dict__["floatify_mask"] = functools.partial(_read_buffer, self, mask_keys)
        self.clean = clean  # its tensors are the model's: registered after it, they keep the model's names

    def forward(self, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        lam = lam.to(torch.float32).reshape(())
        # reason: the noisy branch reads λ from the runtime tensor, with a fresh draw per call (also when
        # exported inside hold_noise())
        with lam_from_tensor(lam):
            return torch.cond(lam > 0, self.model, self.clean, (x,))


def _plain_randn(program: torch.export.ExportedProgram) -> None:
    """``randn(..., generator=None)`` → ``randn(...)``: the same op, and the overload ONNX can translate.

    Also drops the source stack traces from the nodes' metadata (they were most of the saved program's size
    and name local paths).
    """
    for gm in program.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        changed = False
        for node in gm.graph.nodes:
            node.meta.pop("stack_trace", None)
            if node.target is torch.ops.aten.randn.generator and node.kwargs.get("generator") is None:
                node.target = torch.ops.aten.randn.default
                node.kwargs = {k: v for k, v in node.kwargs.items() if k != "generator"}
                changed = True
        if changed:
            gm.recompile()


def _example(example_inputs) -> torch.Tensor:
    if isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 1:
        example_inputs = example_inputs[0]
    if not isinstance(example_inputs, torch.Tensor):
        raise TypeError("example_inputs must be one image batch (a tensor, or a 1-tuple holding it); "
                        f"got {type(example_inputs).__name__}")
    if example_inputs.ndim == 0:
        raise ValueError("example_inputs must be a batch of images (N, C, H, W), got a 0-d tensor")
    if not example_inputs.is_floating_point():
        raise TypeError(f"example_inputs must be floating-point images (e.g. torch.rand(2, 3, 224, 224)), got "
                        f"{example_inputs.dtype}; pass x.float() / 255")
    return example_inputs


def _check_runs_on(model: nn.Module, x: torch.Tensor, what: str) -> None:
    """One clean (λ = 0), evaluation-mode forward of ``x`` (model mode and global RNGs kept): a ValueError naming
    the shape instead of an error from deep inside the tracer."""
    from floatify.context import lam
    from floatify.run_state import preserved_rng

    was_training = model.training
    try:
        with preserved_rng(), torch.no_grad(), lam(0.0):
            model.eval()
            model(x)
    except (RuntimeError, ValueError, IndexError, AssertionError) as err:  # reason: what torch/timm raise for shapes
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what}: the model cannot run on example_inputs of shape {tuple(x.shape)} ({first}); pass "
                         f"a batch shaped as its inputs (N, C, H, W)") from None
    finally:
        model.train(was_training)


def export(model: nn.Module, example_inputs, *, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """Export a converted model as a ``torch.export`` program with λ as a runtime input.

    Args:
        model: a model returned by :func:`floatify.convert` (not wrapped in DDP/DataParallel/torch.compile;
            every Conv/Linear weight conditioned or excluded by ``filter_fn``). It is not modified.
        example_inputs: an image batch (a tensor or a 1-tuple), e.g. ``torch.rand(2, 3, 224, 224)``.
        dynamic_batch: let the program take any batch size (otherwise only the example's).

    Returns:
        An ``ExportedProgram``; ``program.module()(x, lam)`` with ``lam`` a 0-d float32 tensor (0 = clean,
        bitwise the eager model at λ = 0; > 0 = a fresh noise draw per call). Save and load it with
        ``torch.export.save`` / ``torch.export.load`` (no floatify needed to load and run it).

    Raises:
        ValueError: the model is wrapped, not converted, or has weights that could not be conditioned.

    Example:
        >>> import torch, floatify
        >>> net = floatify.convert(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)))
        >>> run = floatify.export(net, torch.rand(3, 4)).module()
        >>> run(torch.rand(5, 4), torch.tensor(0.7)).shape
        torch.Size([5, 8])
    """
    _refuse_unexportable(model, "floatify.export")
    x = _example(example_inputs).detach()
    _check_runs_on(model, x, "floatify.export")
    dynamic_shapes = None
    if dynamic_batch:
        if x.shape[0] == 1:  # reason: torch.export specialises a size-1 dimension; trace with 2
            x = torch.cat([x, x])
        dynamic_shapes = ({0: torch.export.Dim("batch")}, None)
    dial = _Dial(model)
    lam = torch.tensor(0.5, dtype=torch.float32, device=x.device)
    with torch.no_grad():
        program = torch.export.export(dial, (x, lam), dynamic_shapes=dynamic_shapes)
    _plain_randn(program)
    return program


def export_onnx(model: nn.Module, example_inputs, path: str | Path, *, dynamic_batch: bool = True,
                opset_version: int | None = None) -> Path:
    """Write the dial program of :func:`export` as an ONNX model (``torch.onnx.export(..., dynamo=True)``).

    Needs ``pip install floatify[onnx]`` (onnx, onnxscript; onnxruntime to run it). The model's inputs are
    ``x`` (float32 images, any batch size with ``dynamic_batch``) and ``lam`` (a float32 scalar); λ = 0 is
    an ``If`` branch without noise, λ > 0 draws the weight noise with ``RandomNormal`` on every run.
    Weights are stored next to the file (``<path>.data``) when the model exceeds protobuf's 2 GB limit.

    Example:
        >>> import numpy as np, torch, floatify
        >>> import onnxruntime                                               # doctest: +SKIP
        >>> net = floatify.convert(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)))
        >>> path = floatify.export_onnx(net, torch.rand(3, 4), "dial.onnx")  # doctest: +SKIP
        >>> session = onnxruntime.InferenceSession(str(path))           # doctest: +SKIP
        >>> inputs = {"x": np.random.rand(5, 4).astype("float32"), "lam": np.array(0.5, dtype="float32")}
        >>> session.run(None, inputs)[0].shape                          # doctest: +SKIP
        (5, 8)
    """
    _refuse_unexportable(model, "floatify.export_onnx")
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(f"floatify.export_onnx needs the ONNX extra ({err.name} is missing): "
                          f"pip install 'floatify[onnx]'") from None
    x = _example(example_inputs).detach()
    program = export(model, x, dynamic_batch=dynamic_batch)
    path = Path(path)
    lam = torch.tensor(0.5, dtype=torch.float32, device=x.device)
    onnx_program = torch.onnx.export(program, (x, lam), dynamo=True, verbose=False, opset_version=opset_version)
    assert onnx_program is not None  # reason: dynamo=True always returns the program
    for node in onnx_program.model.graph.all_nodes():  # reason: per-node stack traces were ~1/3 of the file
        node.metadata_props.clear()
    onnx_program.save(str(path))
    return path
