"""Walking a model: every module once, depth-first, with its first fully qualified name.

The one walker every floatify module uses (conversion, freezing, export, sparsity, summaries, training), kept
apart from :mod:`floatify.convert` so that walking a model does not import the conversion machinery.

Example:
    >>> import torch.nn as nn
    >>> from floatify.walk import iter_modules
    >>> shared = nn.Linear(2, 2)
    >>> [fqn for fqn, _ in iter_modules(nn.Sequential(shared, nn.ReLU(), shared))]
    ['', '0', '1']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch.nn as nn

__all__ = ["FilterFn", "iter_modules"]

FilterFn = Callable[[nn.Module, str], bool]
"""``filter_fn(module, fqn) -> bool``: which layers :func:`floatify.convert` conditions (True: condition it)."""


def iter_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Every module once, depth-first over ``named_children``, with its first fully qualified name.

    Example:
        >>> import torch.nn as nn
        >>> from floatify.walk import iter_modules
        >>> [(fqn, type(m).__name__) for fqn, m in iter_modules(nn.Sequential(nn.Linear(2, 2)), prefix="net")]
        [('net', 'Sequential'), ('net.0', 'Linear')]
    """
    seen: set[int] = set()

    def walk(module: nn.Module, fqn: str) -> Iterator[tuple[str, nn.Module]]:
        if id(module) in seen:
            return  # reason: a module reachable twice (shared/called twice) is one site, one α
        seen.add(id(module))
        yield fqn, module
        for name, child in module.named_children():
            if child is not None:
                yield from walk(child, f"{fqn}.{name}" if fqn else name)

    yield from walk(model, prefix)
