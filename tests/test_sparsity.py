"""FLOATS: sparsify(), masks at every λ, through training, freeze, save/load and export."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.layers.conditioned import MASK_SUFFIX
from floatify.sparsity import sparsity_report


def model_and_data():
    torch.manual_seed(0)
    model = floatify.convert(nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                                           nn.Conv2d(16, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                           nn.Linear(16, 10)))
    return model, torch.rand(8, 3, 10, 10), torch.randint(0, 10, (8,))


def pruned(model):
    out = {}
    for fqn, m in model.named_modules():
        if floatify.is_conditioned(m) and hasattr(type(m), "_floatify_weights"):
            mask = m.floatify_mask("weight")
            if mask is not None:
                out[fqn] = ~mask
    return out


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("criterion", ["magnitude", "random", "snip"])
@pytest.mark.parametrize("density", [0.5, 0.1])
def test_exact_density(scope, criterion, density):
    model, x, y = model_and_data()
    floatify.sparsify(model, density, criterion=criterion, scope=scope, data=[(x, y)])
    rep = sparsity_report(model)
    if scope == "global":
        assert abs(rep.kept - round(density * rep.total)) <= len(rep.layers)
    for layer in rep.layers:
        assert layer.kept >= max(1, int(0.01 * layer.total))  # the per-layer floor
        if scope == "layer":
            assert abs(layer.kept - max(round(density * layer.total), 1)) <= 1


def test_pruned_weights_stay_zero_at_every_lam_through_training():
    model, x, y = model_and_data()
    floatify.sparsify(model, 0.2)
    masks = pruned(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(5):
        opt.zero_grad()
        with floatify.lam(1.0):
            nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for fqn, dead in masks.items():
        m = model.get_submodule(fqn)
        assert (m._parameters["weight"][dead] == 0).all()
        for v in (0.0, 0.5, 1.0):
            with floatify.lam(v):
                assert (m.weight[dead] == 0).all(), "noise must be masked too"
    # the noise std is computed over the kept weights
    conv = model[3]
    w = conv._parameters["weight"].detach()
    assert conv.floatify_weight_std("weight").item() == pytest.approx(w[conv.floatify_mask("weight")].std().item())


def test_mask_survives_state_dict_round_trip_into_a_dense_model_and_freeze():
    model, x, y = model_and_data()
    floatify.sparsify(model, 0.3)
    dense, _, _ = model_and_data()
    dense.load_state_dict(model.state_dict())
    assert torch.equal(dense[3].floatify_mask("weight"), model[3].floatify_mask("weight"))
    packed = model.state_dict()["3.weight" + MASK_SUFFIX]
    assert packed.dtype == torch.uint8 and packed.numel() == (16 * 16 * 9 + 7) // 8  # one bit per weight
    frozen = floatify.freeze(model, 0.8, seed=0)
    assert (frozen[3].weight[~model[3].floatify_mask("weight")] == 0).all()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone[3].floatify_mask("weight"), model[3].floatify_mask("weight"))


def test_export_round_trip_and_size_scales_with_density(tmp_path):
    sizes = {}
    for density in (1.0, 0.5, 0.1):
        torch.manual_seed(0)
        model = floatify.convert(nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 10)))
        floatify.sparsify(model, density)
        frozen = floatify.freeze(model, 0.5, seed=1)
        path = floatify.save_sparse(frozen, tmp_path / f"d{density}.safetensors")
        sizes[density] = path.stat().st_size
        torch.manual_seed(3)
        back = floatify.load_sparse(nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 10)), path)
        for k, v in frozen.state_dict().items():
            assert torch.equal(back.state_dict()[k], v), k
    assert sizes[0.1] < 0.2 * sizes[1.0] and sizes[0.5] < 0.6 * sizes[1.0]


def test_snip_ranks_a_known_important_weight_above_a_dead_one():
    torch.manual_seed(0)
    model = floatify.convert(nn.Sequential(nn.Linear(4, 2, bias=False)))
    with torch.no_grad():
        model[0]._parameters["weight"].copy_(torch.tensor([[1.0, 1.0, 0.5, 0.5], [-1.0, -1.0, 0.5, 0.5]]))
    x = torch.zeros(16, 4)
    x[:, 0] = torch.rand(16)  # only input 0 carries signal; input 1 is always 0: its weights are dead
    y = torch.zeros(16, dtype=torch.long)
    floatify.sparsify(model, 0.25, criterion="snip", scope="layer", data=[(x, y)])
    mask = model[0].floatify_mask("weight")
    assert mask[:, 0].all() and not mask[:, 1].any()


def test_plain_models_and_errors():
    plain = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 4))
    floatify.sparsify(plain, 0.5)
    assert isinstance(plain[0], nn.Linear) and sparsity_report(plain).density == pytest.approx(0.5, abs=0.01)
    converted = floatify.convert(plain)  # convert after pruning: noise added, masks kept
    assert converted[0].weight_alpha is not None and converted[0].floatify_mask("weight") is not None
    with pytest.raises(ValueError, match="density"):
        floatify.sparsify(converted, 0.0)
    with pytest.raises(ValueError, match="density"):
        floatify.sparsify(converted, 1.5)
    with pytest.raises(ValueError, match="only go down"):
        floatify.sparsify(converted, 0.8)
    with pytest.raises(ValueError, match="needs data"):
        floatify.sparsify(converted, 0.2, criterion="snip")
    with pytest.raises(ValueError, match="nothing|no Conv/Linear"):
        floatify.sparsify(nn.Sequential(nn.ReLU()), 0.5)
    floatify.sparsify(converted, 0.25)  # re-prune from the current mask
    before = converted[0].floatify_mask("weight")
    assert sparsity_report(converted).density == pytest.approx(0.25, abs=0.01)
    floatify.sparsify(converted, 0.1)
    assert not (converted[0].floatify_mask("weight") & ~before).any(), "new mask must be a subset"
