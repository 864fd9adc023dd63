"""floatify.layers.masks: one bit per weight, unpacked once per buffer version, baked in by freeze."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.layers.conditioned import conditioned_class
from floatify.layers.masks import (
    CACHE_ATTR,
    MASK_SUFFIX,
    add_mask_buffers,
    bake_mask,
    clear_cache,
    get_mask,
    has_mask,
    pack_mask,
    set_mask,
    unpack_mask,
)


def masked_linear(keep: torch.Tensor) -> nn.Module:
    """A plain Linear(4, 3) made a generated class with ``keep`` (3×4 booleans) as its weight mask."""
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    layer.__class__ = conditioned_class(nn.Linear)  # reason: what sparsify does before set_mask
    set_mask(layer, "weight", keep)
    return layer


KEEP = torch.tensor([[True, False, True, True], [False, False, True, False], [True, True, True, False]])


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 4), (16, 3, 3, 3), (5, 1, 2)])
@pytest.mark.parametrize("fill", ["random", "all", "none"])
def test_pack_unpack_round_trip_one_bit_per_weight(shape, fill):
    mask = {"random": torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.5,
            "all": torch.ones(shape, dtype=torch.bool), "none": torch.zeros(shape, dtype=torch.bool)}[fill]
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(math.prod(shape) / 8),)
    unpacked = unpack_mask(packed, shape)
    assert unpacked.dtype == torch.bool and torch.equal(unpacked, mask)


def test_set_mask_zeroes_the_pruned_weights_and_stores_the_bits():
    layer = masked_linear(KEEP)
    assert has_mask(layer, "weight") and not has_mask(layer, "bias")
    assert torch.equal(layer._buffers["weight" + MASK_SUFFIX], pack_mask(KEEP))
    raw = layer._parameters["weight"]
    assert (raw[~KEEP] == 0).all() and (raw[KEEP] != 0).all()
    assert torch.equal(layer.weight, raw)  # the weight property applies the mask


def test_get_mask_is_unpacked_once_per_buffer_version():
    layer = masked_linear(KEEP)
    first = get_mask(layer, "weight")
    assert torch.equal(first, KEEP) and get_mask(layer, "weight") is first  # cached
    set_mask(layer, "weight", KEEP & ~torch.eye(3, 4, dtype=torch.bool))  # a new buffer: unpacked again
    second = get_mask(layer, "weight")
    assert second is not first and not second[0, 0] and first[0, 0]
    layer._buffers["weight" + MASK_SUFFIX].zero_()  # in place: a new version
    assert not get_mask(layer, "weight").any()
    clear_cache(layer)
    assert CACHE_ATTR not in layer.__dict__
    assert get_mask(nn.Linear(2, 2), "weight") is None  # dense: no mask


def test_bake_mask_zeroes_the_pruned_entries_and_drops_the_mask():
    layer = masked_linear(KEEP)
    with torch.no_grad():
        layer._parameters["weight"].fill_(2.0)  # pruned entries written through behind the mask's back
    bake_mask(layer, "weight")
    assert not has_mask(layer, "weight") and get_mask(layer, "weight") is None
    assert torch.equal(layer._parameters["weight"], 2.0 * KEEP.float())
    bake_mask(layer, "weight")  # a dense weight: nothing to do
    assert torch.equal(layer._parameters["weight"], 2.0 * KEEP.float())


@pytest.mark.parametrize("in_state, already_masked, creates", [
    (True, False, True),  # a sparse state_dict into a dense layer: the buffer is made, then loaded
    (True, True, False),  # the layer has its own buffer: kept
    (False, False, False),  # a dense state_dict: nothing to make
])
def test_add_mask_buffers_makes_only_the_missing_buffers(in_state, already_masked, creates):
    layer = masked_linear(KEEP) if already_masked else nn.Linear(4, 3)
    own = layer._buffers.get("weight" + MASK_SUFFIX)
    state = {"fc.weight" + MASK_SUFFIX: pack_mask(KEEP)} if in_state else {}
    add_mask_buffers(layer, ["weight"], state, "fc.")
    assert has_mask(layer, "weight") is (in_state or already_masked)
    assert (layer._buffers.get("weight" + MASK_SUFFIX) is not own) is creates


def _sparse_model():
    torch.manual_seed(0)
    return floatify.convert(nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3),
                                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)))


def test_mask_survives_state_dict_round_trip_into_a_dense_model_and_freeze():
    model = floatify.sparsify(_sparse_model(), 0.3)
    dense = _sparse_model()
    dense.load_state_dict(model.state_dict())
    assert torch.equal(dense[3].floatify_mask("weight"), model[3].floatify_mask("weight"))
    packed = model.state_dict()["3.weight" + MASK_SUFFIX]
    assert packed.dtype == torch.uint8 and packed.numel() == (16 * 16 * 9 + 7) // 8  # one bit per weight
    frozen = floatify.freeze(model, 0.8, seed=0)
    assert (frozen[3].weight[~model[3].floatify_mask("weight")] == 0).all()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone[3].floatify_mask("weight"), model[3].floatify_mask("weight"))
