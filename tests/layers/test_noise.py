"""floatify.layers.noise: the bank's windows are standard normal, cheap and reproducible; fresh is torch.randn."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.context import constant_weights, hold_noise
from floatify.layers.noise import (
    MIN_BANK_SIZE,
    NOISE_SOURCES,
    bank_size,
    get_noise_source,
    noise_source,
    standard_normal,
)


def _draws(shape, n, source):
    with noise_source(source):
        return torch.stack([standard_normal(torch.empty(shape)).clone() for _ in range(n)])


@pytest.mark.parametrize("source", NOISE_SOURCES)
def test_every_draw_is_standard_normal_and_new(source):
    draws = _draws((64, 32), 200, source)  # 200 draws of 2,048 entries
    assert draws.mean().abs().item() < 0.01
    assert draws.std().item() == pytest.approx(1.0, abs=0.01)
    per_entry = draws.std(dim=0)  # across draws: each entry varies like N(0, 1), not a fixed value
    assert per_entry.mean().item() == pytest.approx(1.0, abs=0.05)
    flat = draws.flatten(1)
    corr = torch.corrcoef(flat[:50])  # distinct draws are uncorrelated (overlapping windows included)
    off_diagonal = corr[~torch.eye(50, dtype=torch.bool)]
    assert off_diagonal.abs().max().item() < 0.15


@pytest.mark.parametrize("source", NOISE_SOURCES)
def test_draws_replay_under_manual_seed(source):
    like = torch.empty(7, 5)
    with noise_source(source):
        torch.manual_seed(3)
        a = standard_normal(like).clone()
        torch.manual_seed(3)
        assert torch.equal(standard_normal(like), a)
        assert not torch.equal(standard_normal(like), a)


def test_fresh_is_torch_randn_and_a_generator_always_draws_fresh():
    like = torch.empty(4, 6)
    with noise_source("fresh"):
        torch.manual_seed(5)
        got = standard_normal(like)
    torch.manual_seed(5)
    assert torch.equal(got, torch.randn(4, 6))
    gen = torch.Generator().manual_seed(2)
    assert torch.equal(standard_normal(like, gen), torch.randn(4, 6, generator=torch.Generator().manual_seed(2)))


def test_a_bank_window_is_a_view_and_stays_valid_when_the_bank_grows():
    window = standard_normal(torch.empty(1000))
    kept = window.clone()
    assert window._base is not None and window._base.numel() >= MIN_BANK_SIZE  # no weight-sized copy
    big = MIN_BANK_SIZE + 1  # reason: the bank grows to at least twice the largest weight it serves
    assert standard_normal(torch.empty(big)).shape == (big,)
    assert bank_size() >= 2 * big
    assert torch.equal(window, kept)  # the old bank was replaced, not overwritten


def test_noise_source_is_scoped_and_validated():
    assert get_noise_source() == "bank"
    with noise_source("fresh"):
        assert get_noise_source() == "fresh"
    assert get_noise_source() == "bank"
    with pytest.raises(ValueError, match="one of bank, fresh"):
        with noise_source("uniform"):
            pass


@pytest.mark.parametrize("source", NOISE_SOURCES)
def test_the_attacker_faces_the_same_output_spread(source):
    """Per-input output spread over draws at λ = 1 matches between sources (the reference is fresh)."""
    torch.manual_seed(0)
    model = floatify.convert(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))).eval()
    x = torch.rand(16, 32)

    def spread(src):
        with noise_source(src), floatify.lam(1.0), torch.no_grad():
            return torch.stack([model(x) for _ in range(400)]).std(dim=0)

    torch.manual_seed(1)
    ref, got = spread("fresh"), spread(source)
    assert (got.mean() / ref.mean()).item() == pytest.approx(1.0, abs=0.05)


def _held_tensors(held: dict) -> list[torch.Tensor]:
    """Every tensor the held draws keep, looking inside their attributes and tuples."""
    found, todo = [], list(held.values())
    while todo:
        item = todo.pop()
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (tuple, list)):
            todo.extend(item)
        elif hasattr(item, "__slots__"):
            todo.extend(getattr(item, n) for n in item.__slots__)
    return found


def test_a_held_draw_keeps_no_weight_sized_buffer():
    model = floatify.convert(nn.Linear(256, 256))
    x = torch.rand(2, 256)
    with floatify.lam(1.0), hold_noise():
        with constant_weights():
            model(x)  # the attack's set, held until the next read takes it over
        assert any(t.numel() == 256 * 256 and t._base is None for t in _held_tensors(floatify.context.held_draws()))
        a = model(x)
        assert torch.equal(model(x), a)  # one draw for the block
        held_tensors = _held_tensors(floatify.context.held_draws())
        assert held_tensors and all(t.numel() == 1 or t._base is not None for t in held_tensors)  # bank views


def test_a_bank_first_made_under_inference_mode_still_serves_training(monkeypatch):
    monkeypatch.setattr("floatify.layers.noise._BANKS", {})  # reason: the first caller makes the bank
    model = floatify.convert(nn.Linear(8, 4))
    x = torch.rand(3, 8)
    with torch.inference_mode(), floatify.lam(1.0):
        model(x)
    with floatify.lam(1.0):
        model(x).sum().backward()  # an inference-tensor bank could not be saved for backward
    assert model.weight_alpha.grad is not None


def test_a_traced_model_keeps_drawing():
    model = floatify.convert(nn.Linear(8, 4)).eval()
    x = torch.rand(2, 8)
    with floatify.lam(1.0), torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        assert not torch.equal(traced(x), traced(x))  # the offset and the scale are not baked in as constants
