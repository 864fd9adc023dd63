"""torch.compile: right outputs when λ changes, and no recompilation per λ value."""

from __future__ import annotations

import threading

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
            reference = model(x)  # the eager bank windows: compiled graphs draw their offsets in the graph
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


@pytest.mark.parametrize("source", ["bank", "fresh"])
def test_compiled_graphs_draw_from_the_chosen_noise_source(source):
    torch._dynamo.reset()
    model = floatify.convert(CASES["cnn"][0]()).eval()
    x = torch.rand(2, 3, 8, 8)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with floatify.lam(1.0), noise_source(source):
        torch.manual_seed(0)
        got = compiled(x)
        torch.manual_seed(0)
        reference = model(x)  # the same windows (bank) or the same torch.randn stream (fresh)
    assert torch.equal(got, reference)


class _WeightOut(torch.nn.Linear):
    def forward(self, x):
        return self.weight + 0 * x.sum()  # reason: the compiled graph returns the noisy weight it computed


def test_inductor_reads_a_bank_window_at_an_offset_drawn_per_call(monkeypatch):
    from floatify.layers import noise

    monkeypatch.setattr(noise, "_BANKS", {})  # reason: no bank yet: compiling must make it, outside the graph
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = floatify.convert(_WeightOut(16, 8))
    compiled = torch.compile(layer, fullgraph=True)
    w, alpha = layer._parameters["weight"].detach(), layer.weight_alpha.detach()
    scale = alpha * w.std()
    offsets = []
    with torch.no_grad(), floatify.lam(1.0):
        for _ in range(3):
            out = compiled(torch.zeros(1, 16))
            bank = noise._BANKS[(w.device, w.dtype)]
            eta = ((out - w) / scale).reshape(-1)
            hits = torch.nonzero(torch.isclose(bank, eta[0], rtol=0, atol=1e-5)).flatten().tolist()
            match = [o for o in hits if torch.allclose(bank[o:o + eta.numel()], eta, atol=1e-4)]
            assert match, "the compiled noise is not a window of the bank"
            offsets.append(match[0])
    assert len(set(offsets)) == 3  # a new offset per call, drawn in the graph


def test_a_larger_layer_traced_later_gets_its_own_bank_and_eager_regrowth_needs_no_recompile(monkeypatch):
    from floatify.layers import noise

    # reason: the first layer makes a small bank while tracing; the larger one after it must not regrow it (the
    # earlier layer's read of it is already part of the graph): it gets an extra bank. A later eager call of a
    # larger model regrows the device's bank, which the graph takes without recompiling.
    monkeypatch.setattr(noise, "_BANKS", {})
    monkeypatch.setattr(noise, "_EXTRA_BANKS", {})
    monkeypatch.setattr(noise, "MIN_BANK_SIZE", 64)
    torch._dynamo.reset()
    model = floatify.convert(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 200))).eval()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.rand(2, 4)
    with torch.no_grad(), floatify.lam(1.0):
        a, b = compiled(x), compiled(x)
        assert list(noise._EXTRA_BANKS) == [(torch.device("cpu"), torch.float32, 4096)]
        floatify.convert(torch.nn.Linear(100, 100))(torch.rand(1, 100))  # eager: the device's bank grows
        assert noise.bank_size() == 32768
        with torch.compiler.set_stance("fail_on_recompile"):
            c = compiled(x)
    assert counter.frame_count == 1
    assert not torch.equal(a, b) and not torch.equal(b, c) and torch.isfinite(c).all()


def test_an_fx_trace_between_compiled_calls_needs_no_recompile():
    # reason: the conditioned reads ask whether an FX trace runs; asked inside a graph, that question must not
    # become a guard on torch.fx's thread-local state, which the first trace in a thread creates (so the calls run
    # in a fresh thread)
    torch._dynamo.reset()
    model = floatify.convert(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))).eval()
    counter = torch._dynamo.testing.CompileCounterWithBackend("eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x, errors = torch.rand(2, 4), []

    def calls() -> None:
        try:
            with floatify.lam(1.0):
                compiled(x)
                torch.fx.symbolic_trace(torch.nn.ReLU())  # any trace, in this thread
                with torch.compiler.set_stance("fail_on_recompile"):
                    compiled(x)
        except Exception as error:  # reason: re-raised in the test's thread
            errors.append(error)

    thread = threading.Thread(target=calls)
    thread.start()
    thread.join()
    assert not errors, errors
    assert counter.frame_count == 1
