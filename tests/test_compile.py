"""torch.compile: right outputs when λ changes, and no recompilation per λ value; compiled training
(:mod:`floatify.compile`): the eager trajectory, each graph compiled once, the settings it serves and refuses."""

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


# a compiled λ > 0 forward without autograd calls floatify::noisy_weight (the eager path); with autograd it draws in
# the graph: both read a bank window at a new offset per call
@pytest.mark.parametrize("grad", [False, True], ids=["inference: the operator", "autograd: drawn in the graph"])
def test_inductor_reads_a_bank_window_at_an_offset_drawn_per_call(monkeypatch, grad):
    from floatify.layers import noise

    monkeypatch.setattr(noise, "_BANKS", {})  # reason: no bank yet: compiling must make it, outside the graph
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = floatify.convert(_WeightOut(16, 8))
    compiled = torch.compile(layer, fullgraph=True)
    w, alpha = layer._parameters["weight"].detach(), layer.weight_alpha.detach()
    scale = alpha * w.std()
    offsets = []
    with torch.set_grad_enabled(grad), floatify.lam(1.0):
        for _ in range(3):
            out = compiled(torch.zeros(1, 16)).detach()
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
    with floatify.lam(1.0):  # reason: with autograd on, the window is read in the graph (no_grad: the operator)
        a, b = compiled(x).detach(), compiled(x).detach()
        assert list(noise._EXTRA_BANKS) == [(torch.device("cpu"), torch.float32, 4096)]
        floatify.convert(torch.nn.Linear(100, 100))(torch.rand(1, 100))  # eager: the device's bank grows
        assert noise.bank_size() == 32768
        with torch.compiler.set_stance("fail_on_recompile"):
            c = compiled(x).detach()
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


# ------------------------------------------------------------------------------------------- compiled training
# reason: aot_eager traces forward and backward as inductor does, without compiling C++ (fast on 2 shared cores)
LIGHT = "aot_eager"


def _light_counter(monkeypatch) -> torch._dynamo.testing.CompileCounterWithBackend:
    """Compiled training with a graph counter over aot_eager; its answer to the compiler probe is kept apart."""
    import floatify.compile as compile_module

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend(LIGHT)
    monkeypatch.setattr(compile_module, "BACKEND", counter)
    assert compile_module.compiler_problem("cpu") is None  # reason: the probe's graph, counted before training
    counter.frame_count = 0
    return counter


def _fit(model=None, **kw):
    from tiny_training import loader, tiny_model

    model = tiny_model() if model is None else model
    history = floatify.fit(model, loader(), **{"epochs": 2, "steps": 2, "progress": False, **kw})
    return model, [r["loss"] for r in history]


# every setting compiled training must serve: the same losses and weights as eager, within float rounding
TRAJECTORIES = [
    ("paired (the default)", {}),
    ("binary", dict(strategy="binary")),
    ("uniform λ", dict(strategy="uniform", zero_share=0.3)),
    # reason: 4 epochs: its first λ = 1 step (the 12th) comes after clean steps, whose momentum a zero gradient keeps
    ("oat: λ = 1 alone trains the adversarial BatchNorm only", dict(strategy="oat", epochs=4)),
    ("fixed λ = 0.5", dict(strategy="fixed", fixed_lam=0.5)),
    ("a fresh draw per forward", dict(noise_draw="forward")),  # in-graph offsets: the same generator stream
    # reason: not AdamW here: its first updates are about lr·sign(gradient), which turns rounding into lr-sized steps
    ("fgsm, grad clip", dict(attack="fgsm", grad_clip=1.0)),
    ("amp (a no-op on CPU)", dict(amp=True)),
    ("model EMA", dict(model_ema=True)),
]


@pytest.mark.parametrize("name, kw", TRAJECTORIES, ids=[r[0] for r in TRAJECTORIES])
def test_compiled_training_follows_the_eager_loss_trajectory(monkeypatch, name, kw):
    from tiny_training import tiny_model

    _light_counter(monkeypatch)
    eager, eager_losses = _fit(**kw)
    compiled, compiled_losses = _fit(compile=True, **kw)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5), name
    for (key, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), key
    assert not torch.equal(compiled[0].weight_alpha, tiny_model()[0].weight_alpha)  # it trained


# strategy -> the most graphs it may compile: λ = 0 in train mode; per kind of λ > 0 trained (λ = 1, 0 < λ < 1) the
# attack in eval mode (input gradient) and the loss in train mode; one no-grad forward before training. Never one
# more per λ value, attack iteration or epoch.
GRAPH_BOUNDS = [("paired", 4), ("binary", 4), ("uniform", 4), ("oat", 6)]


@pytest.mark.parametrize("strategy, bound", GRAPH_BOUNDS)
def test_compiled_training_compiles_each_graph_once(monkeypatch, strategy, bound):
    counter = _light_counter(monkeypatch)
    graphs: list[int] = []
    _fit(compile=True, epochs=4, strategy=strategy, on_epoch_end=lambda e, r: graphs.append(counter.frame_count))
    assert graphs[-1] <= bound, graphs  # oat's first λ = 1 step is the 12th (of 4 per epoch): its graphs come then
    assert graphs[-1] == graphs[-2], f"the last epoch recompiled: {graphs}"


def test_compiled_training_holds_one_noise_draw_per_step_and_leaves_the_model_eager():
    from floatify.compile import NOISE_SLOTS_ATTR, compiled_training
    from floatify.context import hold_noise

    from tiny_training import tiny_model

    torch._dynamo.reset()
    model, eager = tiny_model().eval(), tiny_model().eval()
    x = torch.rand(4, 3, 6, 6)
    with compiled_training(model, backend=LIGHT) as compiled, floatify.lam(1.0):
        with hold_noise():
            torch.manual_seed(0)
            a, b = model(x), model(x)  # one held draw: the same noise
        with hold_noise():
            torch.manual_seed(0)
            reference = eager(x)  # the eager held draw from the same generator state
        c = model(x)  # outside a block: a fresh draw per forward
    assert compiled and torch.equal(a, b) and torch.allclose(a, reference, atol=1e-6) and not torch.equal(a, c)
    assert model._compiled_call_impl is None and not any(NOISE_SLOTS_ATTR in vars(m) for m in model.modules())


def test_a_compiled_attack_forward_reaches_the_input_only_with_the_steps_noisy_weights_made_once(monkeypatch):
    import floatify.compile as compile_module
    from floatify.compile import compiled_training
    from floatify.context import constant_weights, hold_noise

    from tiny_training import tiny_model

    torch._dynamo.reset()
    made: list[int] = []
    real = compile_module._noisy
    monkeypatch.setattr(compile_module, "_noisy", lambda *a: made.append(1) or real(*a))
    model, eager = tiny_model().eval(), tiny_model().eval()
    slots = len(compile_module.noise_slots(model))
    x = torch.rand(4, 3, 6, 6, requires_grad=True)
    with compiled_training(model, backend=LIGHT), floatify.lam(1.0):
        with hold_noise():
            torch.manual_seed(0)
            with constant_weights():
                attack = [model(x) for _ in range(3)]  # three attack iterations: one set of noisy weights
            loss = model(x)  # the loss after the attack: the same draw, with gradients for W and α
        with hold_noise(), constant_weights():
            torch.manual_seed(0)
            reference = eager(x)  # the eager attack forward on the same draw
    # the attack's graph has no parameter inputs needing a gradient: its backward computes the input's alone
    grads = torch.autograd.grad(attack[0].sum(), [x, *model.parameters()], allow_unused=True)
    assert grads[0] is not None and all(g is None for g in grads[1:])
    assert all(p.requires_grad for p in model.parameters())  # thawed after each forward
    assert len(made) == slots, made  # once per step (and λ), not once per attack forward
    assert all(torch.equal(a, attack[0]) for a in attack) and torch.allclose(attack[0], reference, atol=1e-6)
    assert torch.allclose(loss, attack[0], atol=1e-6)
    assert model[0].weight_alpha in {p for p in model.parameters()}
    assert torch.autograd.grad(loss.sum(), model[0].weight_alpha)[0].abs().sum() > 0  # the loss reaches α


def test_fit_leaves_the_model_it_trained_compiled_eager(monkeypatch):
    _light_counter(monkeypatch)
    model, _ = _fit(compile=True, epochs=1)
    assert model._compiled_call_impl is None


def test_compiled_training_trains_a_floats_sparse_model_and_keeps_its_mask(monkeypatch):
    from tiny_training import tiny_model

    _light_counter(monkeypatch)

    def sparse():
        return floatify.sparsify(tiny_model(), 0.5, criterion="magnitude")

    eager, eager_losses = _fit(sparse())
    compiled, compiled_losses = _fit(sparse(), compile=True)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    kept = compiled[0].floatify_mask("weight")
    assert kept is not None and bool((compiled[0].weight[~kept] == 0).all())


def test_compiled_training_without_dual_batchnorm(monkeypatch):
    from tiny_training import tiny_model

    _light_counter(monkeypatch)
    config = floatify.FloatConfig(dual_bn=False)
    _, eager_losses = _fit(tiny_model(config))
    _, compiled_losses = _fit(tiny_model(config), compile=True)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)


def test_a_compiled_run_resumes_to_the_weights_of_an_uninterrupted_one(monkeypatch, tmp_path):
    from tiny_training import Stop, stop_after, tiny_model, weights_equal

    _light_counter(monkeypatch)
    straight, _ = _fit(compile=True, epochs=3)
    with pytest.raises(Stop):
        _fit(compile=True, epochs=3, checkpoint_dir=tmp_path, on_epoch_end=stop_after(1))
    resumed, _ = _fit(tiny_model(), compile=True, epochs=3, checkpoint_dir=tmp_path, resume=True)
    assert weights_equal(straight, resumed)


def test_compiled_training_under_ddp_matches_eager(monkeypatch, tmp_path):
    import torch.distributed as dist

    from tiny_training import tiny_model

    _light_counter(monkeypatch)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        _, eager_losses = _fit(torch.nn.parallel.DistributedDataParallel(tiny_model()))
        inner = tiny_model()
        _, compiled_losses = _fit(torch.nn.parallel.DistributedDataParallel(inner), compile=True)
    finally:
        dist.destroy_process_group()
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5) and inner._compiled_call_impl is None


def _raising_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler found\nsecond line")


def test_fit_warns_once_and_trains_eagerly_where_torch_cannot_compile(monkeypatch):
    import warnings

    import floatify.compile as compile_module

    torch._dynamo.reset()
    monkeypatch.setattr(compile_module, "BACKEND", _raising_backend)
    monkeypatch.setattr(compile_module, "_PROBLEMS", {})
    _, eager_losses = _fit()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, losses = _fit(compile=True)
    ours = [w for w in caught if "cannot compile" in str(w.message)]
    assert len(ours) == 1 and "no C++ compiler found" in str(ours[0].message) and "eagerly" in str(ours[0].message)
    assert "\n" not in str(ours[0].message)
    assert losses == eager_losses and model._compiled_call_impl is None


BAD_COMPILE = [
    (dict(compile_mode="turbo", compile=True), ValueError, "compile_mode must be one of default, reduce-overhead"),
    (dict(compile_mode="default"), ValueError, "compile_mode='default' needs compile=True"),
    (dict(compile="yes"), TypeError, "compile must be True or False"),
    (dict(compile=True, compile_mode=3), ValueError, "compile_mode must be one of"),
]


@pytest.mark.parametrize("setting, error, message", BAD_COMPILE)
def test_bad_compile_settings_are_one_line(setting, error, message):
    with pytest.raises(error, match=message):
        floatify.TrainConfig(**setting)


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_a_cuda_graph_mode_on_cpu_is_refused_before_any_step(mode):
    from tiny_training import tiny_model, weights_equal

    model = tiny_model()
    with pytest.raises(ValueError, match=f"compile_mode='{mode}' captures CUDA graphs, which need a CUDA device"):
        _fit(model, compile=True, compile_mode=mode)
    assert weights_equal(model, tiny_model())


def test_the_compile_modes_are_torchs():
    from torch._inductor import list_mode_options

    from floatify.compile import COMPILE_MODES

    assert set(COMPILE_MODES) <= set(list_mode_options())
