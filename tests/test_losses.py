"""float_loss, float_step_loss, float_paired_loss and the λ sampler."""

from __future__ import annotations

import collections
import contextlib
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import floatify
from floatify.context import get_lam, hold_noise
from floatify.losses import LamSampler, float_paired_loss, float_step_loss

from tiny_training import batch, tiny_model


def test_loss_at_zero_is_plain_cross_entropy_and_runs_no_attack():
    model, (x, y) = tiny_model(), batch()

    def attack(*_):
        raise AssertionError("no attack at λ = 0")

    loss = floatify.float_loss(model, x, y, 0.0, attack=attack)
    assert torch.equal(loss, F.cross_entropy(model(x), y))


def replay(noise_draw: str):
    """The noise context float_loss uses for ``noise_draw`` (to replay its draws by seed)."""
    return hold_noise() if noise_draw == "step" else contextlib.nullcontext()


@pytest.mark.parametrize("noise_draw", ["step", "forward"])
def test_loss_at_one_is_adversarial_cross_entropy_without_a_clean_forward(noise_draw):
    model, (x, y) = tiny_model(), batch()
    x_adv = (x + 0.03).clamp(0, 1)
    calls = []
    model.register_forward_hook(lambda mod, inp, out: calls.append(inp[0]))
    torch.manual_seed(4)
    loss = floatify.float_loss(model, x, y, 1.0, attack=lambda a, b: x_adv, noise_draw=noise_draw)
    assert len(calls) == 1 and torch.equal(calls[0], x_adv)  # the zero-weight clean term is skipped
    torch.manual_seed(4)
    with floatify.lam(1.0), replay(noise_draw):
        expected = F.cross_entropy(model(x_adv), y)  # first draw goes to x_adv: no clean term at λ = 1
    assert torch.allclose(loss, expected)


@pytest.mark.parametrize("noise_draw", ["step", "forward"])
def test_intermediate_lam_mixes_the_two_terms(noise_draw):
    model, (x, y) = tiny_model(), batch()
    x_adv = (x - 0.03).clamp(0, 1)
    torch.manual_seed(2)
    loss = floatify.float_loss(model, x, y, 0.3, attack=lambda a, b: x_adv, noise_draw=noise_draw)
    torch.manual_seed(2)
    with floatify.lam(0.3), replay(noise_draw):
        clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    assert torch.allclose(loss, 0.7 * clean + 0.3 * adv)


@pytest.mark.parametrize("noise_draw, same", [("step", True), ("forward", False)])
def test_step_noise_draw_shows_the_attack_the_draw_the_loss_uses(noise_draw, same):
    torch.manual_seed(0)
    model = floatify.convert(nn.Sequential(nn.Flatten(), nn.Linear(108, 3)))  # reason: no BN, logits comparable
    (x, y), seen = batch(), []

    def attack(a, b):
        seen.extend([model(a).detach(), model(a).detach()])  # two attack iterations
        return a

    loss = floatify.float_loss(model, x, y, 1.0, attack=attack, noise_draw=noise_draw)
    assert torch.equal(seen[0], seen[1]) is same
    assert torch.allclose(loss, F.cross_entropy(seen[0], y)) is same


def test_noise_draw_is_validated():
    model, (x, y) = tiny_model(), batch()
    with pytest.raises(ValueError, match="noise_draw must be one of step, forward"):
        floatify.float_loss(model, x, y, 1.0, noise_draw="epoch")


def test_attack_sees_noise_on_eval_bn_and_leaves_param_grads_alone():
    model, (x, y) = tiny_model(), batch()
    model.train()
    seen = {}

    def spy(a, b):
        seen["lam"], seen["training"] = get_lam(), model.training
        with torch.no_grad():
            seen["noisy"] = not torch.equal(model[0].weight, model[0]._parameters["weight"])
        return a

    floatify.float_loss(model, x, y, 0.5, attack=spy)
    assert seen == {"lam": 0.5, "training": True, "noisy": True}
    # a real torchattacks attack: BN eval during the attack, no parameter gradient left behind
    model.zero_grad(set_to_none=True)
    from floatify.attacks import make_attack

    with floatify.lam(1.0):
        x_adv = make_attack(model, "pgd", eps=8 / 255, steps=3)(x, y)
    assert all(p.grad is None for p in model.parameters())
    assert model.training, "torchattacks must restore train mode"
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("gradients_alive", [False, True], ids=["zero-grad-first", "zero-grad-late"])
def test_the_attack_holds_its_noisy_weights_only_while_no_gradient_is_alive(gradients_alive):
    # reason: a held set adds one weight-sized tensor per layer, which only costs peak memory where the previous
    # step's gradients live through the attack; there each read recomputes (with recipes for what autograd saves)
    model, (x, y) = tiny_model(), batch()
    if gradients_alive:
        floatify.float_loss(model, x, y, 1.0).backward()
    seen = {}

    def spy(a, b):
        w = model[0].weight
        seen["held"] = w.data_ptr() == model[0].weight.data_ptr()
        ref = weakref.ref(w)
        graph = F.conv2d(a.clone().requires_grad_(True), w).sum()  # autograd saves w for the input gradient
        del w
        seen["freed"] = ref() is None  # neither held by the block nor saved by autograd (kept as its recipe)
        del graph  # reason: the graph (and what it saved) lived until the check
        return a

    floatify.float_loss(model, x, y, 1.0, attack=spy).backward()
    assert seen == {"held": not gradients_alive, "freed": gradients_alive}


def test_gradients_alive_sees_a_tied_weight_under_its_converted_name():
    from floatify.losses import _gradients_alive

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(3, 4), nn.Linear(4, 3)
            self.head.weight = self.emb.weight  # reason: named_parameters() lists it once, under emb

    model = floatify.convert(Tied(), filter_fn=lambda module, fqn: fqn == "head")
    assert not _gradients_alive(model)
    model.emb.weight.grad = torch.zeros(3, 4)
    assert _gradients_alive(model)


def test_sampler_distributions():
    oat = LamSampler("oat", seed=0, zero_share=0.25)
    draws = [oat(i)[0] for i in range(6000)]
    counts = collections.Counter(draws)
    assert set(counts) == {0.0, 0.1, 0.2, 0.3, 0.4, 1.0}
    assert counts[0.0] / len(draws) == pytest.approx(0.25, abs=0.02)
    for v in (0.1, 0.2, 0.3, 0.4, 1.0):
        assert counts[v] / len(draws) == pytest.approx(0.15, abs=0.02)
    uni = [LamSampler("uniform", seed=1, zero_share=0.25)(i)[0] for i in range(4000)]
    positive = [v for v in uni if v > 0]
    assert uni.count(0.0) / len(uni) == pytest.approx(0.25, abs=0.02)  # the clean BN must train too
    assert max(positive) <= 1 and sum(positive) / len(positive) == pytest.approx(0.5, abs=0.02)
    assert LamSampler("binary")(7) == [0.0, 1.0]
    assert LamSampler("paired")(7) == [0.0, 1.0]
    assert {LamSampler("fixed", values=[0.3])(i)[0] for i in range(20)} == {0.3}  # a dedicated model
    # identical on every rank: depends only on (seed, step)
    assert [LamSampler("oat", seed=3)(i) for i in range(50)] == [LamSampler("oat", seed=3)(i) for i in range(50)]
    with pytest.raises(ValueError, match="strategy"):
        LamSampler("nope")


@pytest.mark.parametrize("weight", [0.0, 0.5, 0.75, 1.0])
def test_paired_loss_uses_the_whole_batch_at_both_ends(weight):
    x, y = torch.rand(6, 3, 4, 4), torch.randint(0, 3, (6,))
    kw = dict(eps=0.1, steps=2)
    torch.manual_seed(0)  # reason: a fresh model per loss, as each forward updates the BatchNorm statistics
    got = float_paired_loss(tiny_model(), x, y, weight, **kw)
    torch.manual_seed(0)
    model = tiny_model()
    clean = floatify.float_loss(model, x, y, 0.0, **kw)
    adversarial = floatify.float_loss(model, x, y, 1.0, **kw)
    assert torch.allclose(got, (1 - weight) * clean + weight * adversarial)
    # not the binary strategy's halves: those see each example once
    torch.manual_seed(0)
    halves = float_step_loss(tiny_model(), x, y, [0.0, 1.0], **kw)
    assert weight in (0.0, 1.0) or not torch.allclose(got, halves)


def test_sampler_takes_the_global_step_only():
    oat = LamSampler("oat", seed=3)
    assert oat(global_step=5) == oat(5)
    with pytest.raises(TypeError):
        oat(step=5)  # the deprecated keyword is gone
    with pytest.raises(TypeError):
        oat()


def test_binary_step_splits_the_batch():
    model, (x, y) = tiny_model(), batch()
    calls = []

    def attack(a, b):
        calls.append(len(a))
        return a

    float_step_loss(model, x, y, [0.0, 1.0], attack=attack)
    assert calls == [4]  # only the λ = 1 half is attacked
