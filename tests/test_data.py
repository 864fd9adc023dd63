"""floatify.data: the embedded digits set, images in [0, 1], the per-dataset eps and clear errors."""

from __future__ import annotations

import pytest
import torch

from floatify.data import default_eps, load_dataset


def test_digits_is_a_stratified_split_of_images_in_unit_range():
    data = load_dataset("digits", image_size=16)
    x, y = data.train.tensors
    assert x.shape == (1437, 3, 16, 16) and len(data.test) == 360 and data.num_classes == 10
    assert 0 <= x.min() and x.max() <= 1 and torch.equal(x[:, 0], x[:, 1])  # grey repeated to 3 channels
    train_share = torch.bincount(y, minlength=10) / len(y)
    assert (train_share - 0.1).abs().max() < 0.01  # stratified: every class ≈ 10%
    again = load_dataset("DIGITS", image_size=16)
    assert torch.equal(again.test.tensors[1], data.test.tensors[1])  # the same split for the same seed
    assert not torch.equal(load_dataset("digits", image_size=16, seed=1).test.tensors[1], data.test.tensors[1])


def test_default_eps_and_errors(tmp_path):
    assert default_eps("digits") == 0.1 and default_eps("Digits") == 0.1 and default_eps("cifar10") == 8 / 255
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="image_size must be an int >= 8"):
        load_dataset("digits", image_size=4)
    with pytest.raises(FileNotFoundError, match="--download"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="train/"):
        load_dataset(f"imagefolder:{tmp_path}")
