"""Generic checks shared by the test modules (tables of cases feed these)."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

import floatify
import floatify.heap
from floatify.layers.conditioned import ALPHA_SUFFIX, is_conditioned


def wake_up(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give zero-initialised gains and un-calibrated BatchNorms real values.

    timm's ``zero_init_last``, NFNet skip-init gains and layer-scale zeros make whole branches output
    exactly zero at initialisation, which hides the weight noise from a gradient check.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.numel() and bool((p == 0).all()):
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g, dtype=torch.float32).to(p.dtype))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


def alphas(model: nn.Module) -> dict[str, nn.Parameter]:
    found = {}
    for fqn, m in model.named_modules():
        if is_conditioned(m):
            for name, p in m._parameters.items():
                if name.endswith(ALPHA_SUFFIX):
                    found[f"{fqn}.{name}" if fqn else name] = p
    return found


def alpha_grads_at(model: nn.Module, x: torch.Tensor, lam: float = 1.0) -> dict[str, float]:
    """|dL/dα| for every α at ``lam`` for a random linear read-out of the output."""
    model.zero_grad(set_to_none=True)
    with floatify.lam(lam):
        out = model(x)
    out = out if isinstance(out, torch.Tensor) else out[0]
    g = torch.Generator().manual_seed(1)
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    return {k: (0.0 if p.grad is None else float(p.grad.abs())) for k, p in alphas(model).items()}


class RecordingLibc:
    """Stands in for glibc: records the allocator calls; ``refuse``: the ``mallopt`` parameters it answers 0 to."""

    def __init__(self, refuse=()):
        self.calls = []
        self.refuse = set(refuse)

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 0 if param in self.refuse else 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def use_libc(monkeypatch, fake, malloc_is_glibcs=True):
    """Make ``fake`` the glibc :mod:`floatify.heap` finds, in an environment without malloc settings."""
    monkeypatch.setattr(floatify.heap, "_libc", lambda: fake)
    monkeypatch.setattr(floatify.heap, "_malloc_is_glibcs", lambda libc: malloc_is_glibcs)
    for k in [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(k)


OLD_RUN = {"model.safetensors": b"old weights", "config.json": b"{}", "report.md": b"old report",
           "report.json": b"{}", "adversarial.safetensors": b"old adversarial"}
"""An earlier run folder (its files and bytes), for checks that a refused or failed command leaves it as it was."""


def plant_old_run(out) -> None:
    out.mkdir()
    for name, data in OLD_RUN.items():
        (out / name).write_bytes(data)


def old_run_unchanged(out) -> bool:
    return sorted(p.name for p in out.iterdir()) == sorted(OLD_RUN) and all(
        (out / n).read_bytes() == d for n, d in OLD_RUN.items())
