"""FLOATS: sparsify(), masks at every λ, through training, freeze, save/load and export."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.layers import is_conditioned
from floatify.sparsity import LAYER_FLOOR, load_sparse, save_sparse, sparsity_report


def model_and_data():
    torch.manual_seed(0)
    model = floatify.convert(nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                                           nn.Conv2d(16, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                           nn.Linear(16, 10)))
    return model, torch.rand(8, 3, 10, 10), torch.randint(0, 10, (8,))


def pruned(model):
    out = {}
    for fqn, m in model.named_modules():
        if is_conditioned(m) and hasattr(type(m), "_floatify_weights"):
            mask = m.floatify_mask("weight")
            if mask is not None:
                out[fqn] = ~mask
    return out


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("criterion", ["magnitude", "random", "snip"])
@pytest.mark.parametrize("density", [0.5, 0.1, 0.005])  # at 0.005 the floor binds (ceil(1.6) = 2 for the Linear)
def test_exact_density(scope, criterion, density):
    model, x, y = model_and_data()
    floatify.sparsify(model, density, criterion=criterion, scope=scope, data=[(x, y)])
    rep = sparsity_report(model)
    floors = [max(1, math.ceil(LAYER_FLOOR * layer.total)) for layer in rep.layers]
    if scope == "global":  # exactly the target, unless the per-layer floors alone exceed it
        assert rep.kept == max(round(density * rep.total), sum(floors))
    for layer, floor in zip(rep.layers, floors):
        assert layer.kept >= floor  # the per-layer floor
        if scope == "layer":
            assert layer.kept == max(round(density * layer.total), floor)


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


def test_export_round_trip_and_size_scales_with_density(tmp_path):
    sizes = {}
    for density in (1.0, 0.5, 0.1):
        torch.manual_seed(0)
        model = floatify.convert(nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 10)))
        floatify.sparsify(model, density)
        frozen = floatify.freeze(model, 0.5, seed=1)
        path = save_sparse(frozen, tmp_path / f"d{density}.safetensors")
        sizes[density] = path.stat().st_size
        torch.manual_seed(3)
        back = load_sparse(nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 10)), path)
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


@pytest.mark.parametrize("with_data, same_as", [(True, "snip"), (False, "magnitude")])
def test_auto_criterion_is_snip_with_data_and_magnitude_without(with_data, same_as):
    def pruned(criterion):
        torch.manual_seed(0)
        model = floatify.convert(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)))
        torch.manual_seed(1)
        data = [(torch.rand(16, 6), torch.randint(0, 3, (16,)))] if with_data else None
        kwargs = {} if criterion == "auto" else {"criterion": criterion}
        floatify.sparsify(model, 0.3, data=data, **kwargs)
        return [model[i].floatify_mask("weight") for i in (0, 2)]

    assert all(torch.equal(a, b) for a, b in zip(pruned("auto"), pruned(same_as)))
    other = "magnitude" if same_as == "snip" else "random"
    assert not all(torch.equal(a, b) for a, b in zip(pruned("auto"), pruned(other)))


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
    with pytest.raises(ValueError, match="Sequential has no Conv/Linear weight to prune"):
        floatify.sparsify(nn.Sequential(nn.ReLU()), 0.5)
    floatify.sparsify(converted, 0.25)  # re-prune from the current mask
    before = converted[0].floatify_mask("weight")
    assert sparsity_report(converted).density == pytest.approx(0.25, abs=0.01)
    floatify.sparsify(converted, 0.1)
    assert not (converted[0].floatify_mask("weight") & ~before).any(), "new mask must be a subset"


def _sparse_with_a_kept_zero():
    model, x, y = model_and_data()
    floatify.sparsify(model, 0.3)
    kept = model[3].floatify_mask("weight")
    idx = kept.reshape(-1).nonzero()[0].item()
    with torch.no_grad():
        model[3]._parameters["weight"].view(-1)[idx] = 0.0  # a kept weight that is exactly zero
    return model, x


def test_load_sparse_restores_masks_into_a_dense_model_including_kept_zeros(tmp_path):
    model, x = _sparse_with_a_kept_zero()
    path = save_sparse(model, tmp_path / "s.safetensors")
    dense, _, _ = model_and_data()
    load_sparse(dense, path)
    for i in (0, 3, 7):
        assert torch.equal(dense[i].floatify_mask("weight"), model[i].floatify_mask("weight"))
    dead = ~model[3].floatify_mask("weight")
    with floatify.lam(1.0):
        assert (dense[3].weight[dead] == 0).all()  # pruned weights get no noise
    again, _, _ = model_and_data()
    floatify.sparsify(again, 0.3)
    load_sparse(again, path)  # a sparse model: the kept zero stays kept
    assert torch.equal(again[3].floatify_mask("weight"), model[3].floatify_mask("weight"))
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def _bits_dropped(path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, raw = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: v for k, v in raw.items() if not k.endswith("::bitmask")}, str(path), metadata=meta)


def _header(path, **meta):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path), metadata=meta)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "corrupted or not a safetensors file"),
    (lambda p: p.write_bytes(b""), "corrupted or not a safetensors file"),
    (lambda p: _header(p, other="1"), "not a floatify sparse export"),
    (lambda p: _header(p, **{"floatify-sparse": "{oops"}), "is corrupted"),
    (_bits_dropped, "is corrupted .*KeyError"),
    (lambda p: p.unlink() or p.mkdir(), "not a file"),
])
def test_damaged_sparse_files_are_clear_errors(tmp_path, damage, message):
    model, _, _ = model_and_data()
    path = save_sparse(floatify.sparsify(model, 0.3), tmp_path / "s.safetensors")
    damage(path)
    with pytest.raises(ValueError, match=message) as err:
        load_sparse(model_and_data()[0], path)
    assert str(path) in str(err.value)


def test_density_accepts_numpy_scalars_and_rejects_nan():
    import numpy as np  # reason: a declared dependency (floatify.split)

    model, _, _ = model_and_data()
    floatify.sparsify(model, np.float32(0.5))
    assert abs(sparsity_report(model).density - 0.5) < 0.01
    for bad in (float("nan"), np.float64("nan"), "0.5", True, 0):
        with pytest.raises(ValueError, match="density must be in"):
            floatify.sparsify(model_and_data()[0], bad)


def test_pruned_but_never_converted_is_not_conditioned():
    from torch.utils.data import DataLoader, TensorDataset

    plain = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3))
    floatify.sparsify(plain, 0.5)
    assert not any(is_conditioned(m) for m in plain.modules())
    with pytest.raises(ValueError, match="expects a converted model"):
        floatify.freeze(plain, 0.0)
    loader = DataLoader(TensorDataset(torch.rand(8, 8), torch.randint(0, 3, (8,))), batch_size=4)
    with pytest.raises(ValueError, match="expects a model converted"):
        floatify.fit(plain, loader, epochs=1, progress=False)
    converted = floatify.convert(plain)
    assert all(is_conditioned(m) for m in converted)
