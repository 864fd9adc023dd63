import asyncio
import contextlib
import contextvars
import math
import threading
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import floatify
from floatify.context import constant_weights, get_lam, hold_noise


def test_default_and_nesting_restore_outer_value_even_on_error():
    assert get_lam() == 0.0
    with floatify.lam(0.3):
        assert get_lam() == 0.3
        with pytest.raises(RuntimeError):
            with floatify.lam(1):
                assert get_lam() == 1.0
                raise RuntimeError("boom")
        assert get_lam() == 0.3
    assert get_lam() == 0.0


def test_the_context_manager_has_one_name():
    import floatify.context as context

    assert floatify.lam is context.lam
    assert [name for name, value in vars(context).items() if value is context.lam] == ["lam"]


@pytest.mark.parametrize(
    "bad, error",
    [
        (-0.1, ValueError),
        (1.0001, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("0.5", TypeError),
        (None, TypeError),
        (True, TypeError),
        (torch.tensor([0.1, 0.2]), TypeError),
        (torch.tensor(2.0), ValueError),
    ],
)
def test_invalid_lam_is_rejected_with_a_clear_error(bad, error):
    with pytest.raises(error, match="lam"):
        with floatify.lam(bad):
            pass
    assert get_lam() == 0.0


def test_scalar_tensor_and_int_are_accepted():
    with floatify.lam(torch.tensor(0.5)):
        assert get_lam() == 0.5
    with floatify.lam(1):
        assert get_lam() == 1.0


def test_threads_see_their_own_lam_and_new_threads_start_at_zero():
    seen = {}
    barrier = threading.Barrier(2)

    def worker(value):
        with floatify.lam(value):
            barrier.wait()
            seen[value] = get_lam()

    threads = [threading.Thread(target=worker, args=(v,)) for v in (0.2, 0.8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {0.2: 0.2, 0.8: 0.8}

    inside = {}
    with floatify.lam(0.7):
        t = threading.Thread(target=lambda: inside.setdefault("plain", get_lam()))
        t.start()
        t.join()
        ctx = contextvars.copy_context()
        t = threading.Thread(target=lambda: ctx.run(lambda: inside.setdefault("copied", get_lam())))
        t.start()
        t.join()
    assert inside == {"plain": 0.0, "copied": 0.7}


def test_asyncio_tasks_see_their_own_lam():
    async def task(value):
        with floatify.lam(value):
            await asyncio.sleep(0.01)
            return get_lam()

    async def main():
        return await asyncio.gather(task(0.1), task(0.9), task(0.0))

    assert asyncio.run(main()) == [0.1, 0.9, 0.0]


def noisy_linear():
    torch.manual_seed(0)
    return floatify.convert(torch.nn.Linear(6, 4))


def test_hold_noise_reuses_one_draw_per_block_and_only_inside_it():
    layer, x = noisy_linear(), torch.rand(2, 6)
    with floatify.lam(1.0):
        with hold_noise():
            a, b = layer(x), layer(x)
        with hold_noise():
            c = layer(x)
        d, e = layer(x), layer(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # a new block, a new draw
    assert not torch.equal(d, e)  # outside a block: a fresh draw per forward


def test_hold_noise_follows_weight_and_lam_changes_with_the_same_draw():
    layer = noisy_linear()
    raw = layer._parameters["weight"]
    with hold_noise():
        with floatify.lam(1.0):
            w1 = layer.weight.detach().clone()
        with floatify.lam(0.5):
            w_half = layer.weight.detach().clone()
        with torch.no_grad():
            raw.add_(1.0)  # reason: a shift leaves std(W), hence the noise scale, unchanged
        with floatify.lam(1.0):
            w2 = layer.weight.detach().clone()
    torch.testing.assert_close(w_half - raw.detach() + 1.0, 0.5 * (w1 - raw.detach() + 1.0))
    torch.testing.assert_close(w2 - w1, torch.ones_like(w1))


@pytest.mark.parametrize("density", [1.0, 0.5])
def test_held_weight_gives_exact_gradients_after_any_attack_backward_calls(density):
    """PGD uses autograd.grad on the input; CW/EAD-style attacks call .backward(): neither may break the
    final backward, and W/α gradients must equal those of an unheld forward with the same draw."""
    x, y = torch.rand(5, 6), torch.randint(0, 4, (5,))
    grads = []
    for attack in ("none", "grad", "backward", "constant"):
        layer = noisy_linear()
        if density < 1:
            floatify.sparsify(layer, density)
        torch.manual_seed(1)
        with floatify.lam(0.7), hold_noise():
            # "constant": a training step's attack (constant_weights), whose noisy weight the loss then takes over
            with constant_weights() if attack == "constant" else contextlib.nullcontext():
                for _ in range(3 if attack != "none" else 0):
                    xi = x.clone().requires_grad_(True)
                    loss = torch.nn.functional.cross_entropy(layer(xi), y)
                    torch.autograd.grad(loss, xi) if attack in ("grad", "constant") else loss.backward()
            layer.zero_grad()
            torch.nn.functional.cross_entropy(layer(x), y).backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    layer = noisy_linear()
    if density < 1:
        floatify.sparsify(layer, density)
    torch.manual_seed(1)
    with floatify.lam(0.7):  # no hold: the same single draw, ordinary autograd
        torch.nn.functional.cross_entropy(layer(x), y).backward()
    reference = [p.grad for p in layer.parameters()]
    for got in grads:
        for g, r in zip(got, reference):
            torch.testing.assert_close(g, r)


@pytest.mark.parametrize("change", ["none", "weight", "alpha", "lam"])
def test_the_loss_after_an_attack_takes_over_its_noisy_weight_only_if_nothing_changed(change):
    layer = noisy_linear()
    x = torch.rand(5, 6)
    with floatify.lam(1.0), hold_noise():
        with constant_weights():
            attacked = layer.weight
        with torch.no_grad():
            if change == "weight":
                layer._parameters["weight"].add_(1.0)
            elif change == "alpha":
                layer.weight_alpha.mul_(2.0)
        with floatify.lam(0.5 if change == "lam" else 1.0):
            noisy = layer.weight
            again = layer.weight  # taken over once: a second read computes its own
        (x @ noisy.T).sum().backward()
    shared = noisy.untyped_storage().data_ptr() == attacked.untyped_storage().data_ptr()
    assert shared == (change == "none")
    assert again.untyped_storage().data_ptr() != attacked.untyped_storage().data_ptr()
    torch.testing.assert_close(noisy, again)
    assert layer.weight_alpha.grad is not None and layer._parameters["weight"].grad is not None


SAVED_WEIGHT_CASES = {  # layer, its functional form, input shape
    "linear": (lambda: nn.Linear(64, 64, bias=False), F.linear, (4, 64)),  # saves the view W.t()
    "conv": (lambda: nn.Conv2d(8, 8, 3, bias=False), F.conv2d, (2, 8, 6, 6)),  # saves W itself
}


@pytest.mark.parametrize("case", SAVED_WEIGHT_CASES)
@pytest.mark.parametrize("after_attack", [False, True], ids=["alone", "after-attack"])
def test_hold_noise_saves_the_recipe_not_the_noisy_weight(case, after_attack):
    make, fn, shape = SAVED_WEIGHT_CASES[case]
    torch.manual_seed(0)
    model = floatify.convert(make())
    x = torch.rand(*shape, requires_grad=True)  # reason: so the layer saves its weight for backward
    params = [model._parameters["weight"], model.weight_alpha]

    def grads(w):
        return torch.autograd.grad(fn(x, w).square().sum(), params)

    with floatify.lam(1.0), hold_noise():
        if after_attack:  # the loss takes over the attack's held noisy weight: it must not outlive the forward either
            with constant_weights():
                attacked = weakref.ref(model.weight)
                torch.autograd.grad(fn(x, model.weight).sum(), x)
        w = model.weight
        ref = weakref.ref(w)
        loss = fn(x, w).square().sum()
        del w
        assert ref() is None  # autograd keeps the recipe, not the weight-sized tensor
        if after_attack:
            assert attacked() is None
        recomputed = torch.autograd.grad(loss, params)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):  # reason: saves the tensor itself
            stored = grads(model.weight)
    for a, b in zip(recomputed, stored):
        assert torch.equal(a, b)  # backward through the recomputed weight is exact


def test_a_long_hold_block_keeps_no_entry_per_read():
    model = floatify.convert(nn.Linear(16, 16))
    x = torch.rand(2, 16)
    with floatify.lam(1.0), hold_noise():
        for _ in range(50):
            model(x).sum().backward()
        held = floatify.context.held_draws()
        assert len(held) <= 2  # the draw (and at most one live recipe), not 50 recipes


def test_a_recipe_refuses_once_the_weights_changed_and_in_place_edits_are_saved_as_is():
    torch.manual_seed(0)
    model = floatify.convert(nn.Linear(8, 8, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(3, 8, requires_grad=True)
    with floatify.lam(1.0), hold_noise():
        loss = model(x).square().sum()
        loss.backward(retain_graph=True)
        opt.step()  # W changed: the recomputed weight would not be the one the forward used
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
        w = model.weight
        w.mul_(2)  # an in-place edit after registration: autograd must see the edited tensor
        grad = torch.autograd.grad(F.linear(x, w).sum(), x)[0]
    torch.testing.assert_close(grad, w.detach().sum(0).expand(3, 8))


def test_a_held_step_runs_under_inference_mode_with_gradients_alive():
    model = floatify.convert(nn.Linear(4, 4))
    model(torch.rand(2, 4)).sum().backward()  # gradients alive: the attack's per-read path registers recipes
    with floatify.lam(1.0), hold_noise(), constant_weights(), torch.inference_mode():
        assert model(torch.rand(2, 4)).shape == (2, 4)
