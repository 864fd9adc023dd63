"""torch.compile: right outputs when λ changes, and no recompilation per λ value."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

import floatify
from floatify.layers.noise import noise_source

from cases import CASES


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_follows_lam_without_recompiling(backend):
    torch._dynamo.reset()
    model = floatify.convert(CASES["cnn"][0]()).eval()
    x = torch.rand(2, 3, 8, 8)
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    assert torch.equal(compiled(x), model(x))
    outputs = {}
    for value in (0.1, 0.25, 0.5, 0.75, 1.0, 0.0, 0.33):
        with floatify.lam(value):
            torch.manual_seed(0)
            outputs[value] = compiled(x)
            torch.manual_seed(0)
            with noise_source("fresh"):  # reason: compiled graphs draw with torch.randn, eager reads the bank
                reference = model(x)
        if backend == "eager":  # same RNG stream as eager: outputs identical
            assert torch.equal(outputs[value], reference), value
    assert counter.frame_count <= 2, f"compiled {counter.frame_count} times for 7 λ values"
    assert torch.equal(outputs[0.0], model(x))
    # the noise grows with λ: the output deviation from λ = 0 is larger at λ = 1 than at 0.1
    dev = {v: (outputs[v] - outputs[0.0]).abs().mean().item() for v in (0.1, 1.0)}
    assert dev[1.0] > dev[0.1] > 0


def test_compiled_training_step_reaches_alpha():
    torch._dynamo.reset()
    model = floatify.convert(CASES["mlp"][0]())
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with floatify.lam(1.0):
        compiled(torch.rand(8, 8)).sum().backward()
    assert model[0].weight_alpha.grad is not None and model[0].weight_alpha.grad.abs() > 0
