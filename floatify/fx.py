"""torch.fx support: traced graphs of converted models stay λ-conditioned.

In eager mode every read of a conditioned weight goes through its λ-dependent attribute, so a layer's
own ``forward`` and functional call sites (``F.linear(x, self.qkv.weight)``) are covered without any
rewriting. Symbolic tracing is different: a functional read becomes a ``get_attr`` node, and
``GraphModule`` copies the bare Parameter into a plain container, silently dropping the noise and the
dual BatchNorm. This pass finds every ``get_attr`` node that reads a conditioned attribute and
re-installs the conditioned layer itself at that path, so the read goes through the λ-dependent
attribute again. The rewrite is local: no node is added or removed.

Conditioned layers register themselves with timm's ``register_notrace_module`` so timm's FX feature
extraction calls them as leaves; pass :func:`leaf_modules` to torchvision's tracer for the same.

Example:
    >>> import torch, timm, floatify, floatify.fx
    >>> model = floatify.convert(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1))
    >>> traced = floatify.fx.symbolic_trace(model)
    >>> with floatify.lam(1.0):
    ...     y = traced(torch.rand(1, 3, 32, 32))
"""

from __future__ import annotations

import torch.fx
import torch.nn as nn

from floatify.layers.conditioned import generated_classes, is_floatify_layer
from floatify.walk import iter_modules

__all__ = ["leaf_modules", "restore_conditioned_reads", "symbolic_trace", "create_feature_extractor"]


def leaf_modules() -> list[type]:
    """The conditioned layer classes created so far (pass as ``leaf_modules`` to an FX tracer)."""
    return generated_classes()


def restore_conditioned_reads(graph_module: torch.fx.GraphModule, model: nn.Module) -> torch.fx.GraphModule:
    """Make ``get_attr`` reads of conditioned weights in ``graph_module`` follow λ again.

    Args:
        graph_module: traced from ``model`` (any tracer: torch.fx, timm, torchvision).
        model: the converted model the graph was traced from.

    Returns:
        ``graph_module``, modified in place. Raises ``ValueError`` if a node reads an attribute of a
        conditioned layer that is not in ``model``.
    """
    owners = {fqn: m for fqn, m in iter_modules(model) if is_floatify_layer(m)}
    for node in graph_module.graph.nodes:
        if node.op != "get_attr":
            continue
        owner_path, _, _ = str(node.target).rpartition(".")
        owner = owners.get(owner_path)
        if owner is None:
            continue
        try:
            current = graph_module.get_submodule(owner_path)
        except AttributeError:
            current = None
        if current is not owner:
            graph_module.add_submodule(owner_path, owner)
    return graph_module


def symbolic_trace(model: nn.Module, **tracer_kwargs) -> torch.fx.GraphModule:
    """``torch.fx`` trace of a converted model that keeps every conditioned read λ-dependent."""
    leaves = tuple(leaf_modules())

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    graph = _Tracer(**tracer_kwargs).trace(model)
    return restore_conditioned_reads(torch.fx.GraphModule(model, graph, type(model).__name__), model)


def create_feature_extractor(model: nn.Module, return_nodes) -> torch.fx.GraphModule:
    """timm's FX feature extractor for a converted model (conditioned layers stay conditioned)."""
    from timm.layers import create_feature_extractor as timm_create_feature_extractor

    return restore_conditioned_reads(timm_create_feature_extractor(model, return_nodes), model)
