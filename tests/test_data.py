"""floatify.data: the embedded digits, image folders' transforms, augmentation per dataset, loaders, clear errors.

Reading image folders (layouts, formats, damaged files, the split) is tested in tests/test_imagefolder.py."""

from __future__ import annotations

import json

import pytest
import torch
from image_folders import classes, split_folder
from torch.utils.data import DataLoader, Subset, TensorDataset

from floatify.cli import main
from floatify.data import (
    AugmentedTensors,
    _torchvision_transforms,
    default_eps,
    default_workers,
    load_dataset,
    make_loader,
    make_loaders,
    random_crop_batch,
)


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


@pytest.mark.parametrize("kwargs, message", [
    (dict(val_split=0.1), "has its own test split"),
    (dict(val_split=1.0, name="FOLDER"), "val_split must be a number in (0, 1)"),
    (dict(augment="flip"), "augment must be one of auto, none, crop, crop-flip, timm"),
    (dict(augment="timm"), "augment 'timm' (random-resized crop of image files) needs an imagefolder"),
    (dict(name="FOLDER", data_config={"crop_pct": 0}), "crop_pct must be a number in (0, 1]"),
    (dict(name="FOLDER", data_config={"interpolation": "cubic"}), "interpolation must be one of"),
    (dict(name="FOLDER", data_config=[1]), "data_config must be a dict"),
])
def test_load_dataset_refuses_bad_arguments_with_one_line(tmp_path, kwargs, message):
    classes(tmp_path, {"cat": 10, "dog": 10})
    name = kwargs.pop("name", "digits").replace("FOLDER", f"imagefolder:{tmp_path}")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(name, **kwargs)



def test_imagefolder_uses_the_model_input_size_by_default(tmp_path):
    split_folder(tmp_path)
    config = {"input_size": [3, 24, 24], "interpolation": "bicubic", "crop_pct": 0.9, "mean": [0.5] * 3}
    data = load_dataset(f"imagefolder:{tmp_path}", data_config=config)
    assert data.image_size == 24 and data.train[0][0].shape == (3, 24, 24) and data.test[0][0].shape == (3, 24, 24)


# ---------------------------------------------------------------------------------------------- augmentation


def _shifts(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop of ``image`` zero-padded by ``padding``: what a random crop may give, and nothing else."""
    h, w = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    return [padded[..., dy:dy + h, dx:dx + w] for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)]


def test_digits_train_unaugmented_by_default_as_measured():
    data = load_dataset("digits", image_size=16)
    assert data.augmentation == "none" and not isinstance(data.train, AugmentedTensors)


def test_digits_asked_to_crop_are_randomly_cropped_and_never_mirrored():
    data = load_dataset("digits", image_size=16, augment="crop")
    assert isinstance(data.train, AugmentedTensors) and "no flip" in data.augmentation
    images = data.train.tensors[0][:64]
    asymmetric = [i for i in range(64) if not torch.equal(images[i], images[i].flip(-1))]
    moved = 0
    for _ in range(20):
        batch = torch.stack([x for x, _ in data.train.__getitems__(list(range(64)))])
        for i in asymmetric:
            assert any(torch.equal(batch[i], s) for s in _shifts(images[i], 2)), "not a shift: mirrored?"
            moved += not torch.equal(batch[i], images[i])
    assert moved > 0.8 * 20 * len(asymmetric) * (24 / 25)  # shifted in most draws (24 of 25 offsets move it)


@pytest.mark.parametrize("name, flipped", [("cifar10", True), ("cifar100", True), ("svhn", False), ("mnist", False),
                                           ("fashionmnist", False)])
def test_torchvision_sets_get_a_padded_crop_and_a_flip_only_where_mirroring_keeps_the_label(name, flipped):
    train, test, described = _torchvision_transforms(name, 32, "auto")
    steps = [type(t).__name__ for t in train.transforms]
    assert "RandomCrop" in steps and ("RandomHorizontalFlip" in steps) == flipped
    assert ("flip" in described and "no flip" not in described) == flipped and "padding 4" in described
    assert not any(n.startswith("Random") for n in (type(t).__name__ for t in test.transforms))
    plain_train, plain_test, none = _torchvision_transforms(name, 32, "none")
    assert plain_train is plain_test and repr(plain_test) == repr(test) and none == "none"


# rule asked for by name, dataset, whether training images may be mirrored, fragment of the description
RULES = [
    ("crop-flip", "digits", True, "horizontal flip"),
    ("crop", "digits", False, "no flip"),
    ("crop", "FOLDER", False, "random crop 8 px, padding 1, no flip"),
    ("crop-flip", "FOLDER", True, "random crop 8 px, padding 1, horizontal flip"),
]


@pytest.mark.parametrize("augment, name, mirrors, described", RULES, ids=[f"{r[0]}-{r[1]}" for r in RULES])
def test_a_rule_asked_for_by_name_is_the_one_applied(tmp_path, augment, name, mirrors, described):
    split_folder(tmp_path)
    data = load_dataset(name.replace("FOLDER", f"imagefolder:{tmp_path}"), image_size=8, augment=augment)
    assert described in data.augmentation
    if name == "digits":
        images = data.train.tensors[0][:32]
        batches = [torch.stack([x for x, _ in data.train.__getitems__(list(range(32)))]) for _ in range(10)]
        mirrored = any(not any(torch.equal(b[i], s) for s in _shifts(images[i], 1))
                       for b in batches for i in range(32) if not torch.equal(images[i], images[i].flip(-1)))
        assert mirrored == mirrors
    else:
        steps = [type(t).__name__ for t in data.train.transform.transforms]
        assert "RandomCrop" in steps and ("RandomHorizontalFlip" in steps) == mirrors


def test_random_crop_batch_draws_each_image_its_own_offset():
    x = torch.rand(200, 1, 6, 6)
    out = random_crop_batch(x, 2, generator=torch.Generator().manual_seed(0))
    offsets = [next(k for k, s in enumerate(_shifts(x[i], 2)) if torch.equal(out[i], s)) for i in range(200)]
    assert len(set(offsets)) == 25  # every offset of the 5×5 occurs: per image, uniform


def test_imagefolder_trains_on_timm_crops_and_evaluates_on_a_centre_crop_unnormalised(tmp_path):
    split_folder(tmp_path)
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=8)
    train_steps = [type(t).__name__ for t in data.train.transform.transforms[0].transforms]
    test_steps = [type(t).__name__ for t in data.test.transform.transforms[0].transforms]
    assert train_steps[:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    assert test_steps[:2] == ["Resize", "CenterCrop"] and "flip" in data.augmentation
    assert "Normalize" not in train_steps + test_steps  # normalisation lives in the model


@pytest.mark.parametrize("name", ["digits", "FOLDER"])
def test_augment_none_trains_on_test_style_images(tmp_path, name):
    classes(tmp_path / "train", {"a": 3, "b": 3})
    classes(tmp_path / "val", {"a": 3, "b": 3})  # the same files in both splits
    name = name.replace("FOLDER", f"imagefolder:{tmp_path}")
    plain = load_dataset(name, image_size=16, augment="none")
    assert plain.augmentation == "none"
    if name == "digits":
        assert type(plain.train) is TensorDataset
        assert torch.equal(plain.train.tensors[0], load_dataset(name, image_size=16).train.tensors[0])
    else:
        assert all(torch.equal(plain.train[i][0], plain.test[i][0]) for i in range(6))
    augmented = load_dataset(name, image_size=16, augment="crop" if name == "digits" else "auto")
    torch.manual_seed(0)
    assert any(not torch.equal(augmented.train[i][0], plain.train[i][0]) for i in range(6))


# --------------------------------------------------------------------------------------------------- loaders


def test_loader_settings_follow_the_data_and_the_device(tmp_path):
    classes(tmp_path, {"cat": 10, "dog": 10})
    digits, folder = load_dataset("digits", image_size=8), load_dataset(f"imagefolder:{tmp_path}", image_size=8)
    assert default_workers(digits.train) == 0 and default_workers(Subset(digits.train, [0])) == 0
    assert default_workers(folder.train) == max(0, min(8, (__import__("os").cpu_count() or 1) - 1))
    rows = [  # (loader, workers, pin_memory)
        (make_loader(digits.train, 8), 0, False),
        (make_loader(folder.train, 8, workers=2), 2, False),
        (make_loader(digits.train, 8, device="cuda"), 0, True),
    ]
    for loader, workers, pinned in rows:
        assert loader.num_workers == workers and loader.pin_memory == pinned
        assert loader.persistent_workers == (workers > 0) and loader.drop_last
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        make_loader(digits.train, 8, workers=-1)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        make_loader(digits.train, 0)


def test_loader_order_is_seeded_and_with_augment_none_the_same_as_before():
    data = load_dataset("digits", image_size=8, augment="none")
    first = [y.tolist() for _, y in make_loader(data.train, 100, seed=3)]
    assert first == [y.tolist() for _, y in make_loader(data.train, 100, seed=3)]
    assert first != [y.tolist() for _, y in make_loader(data.train, 100, seed=4)]
    old = DataLoader(data.train, batch_size=100, shuffle=True, generator=torch.Generator().manual_seed(3),
                     drop_last=True)  # reason: the loader floatify train built before make_loader
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(old, make_loader(data.train, 100,
                                                                                                      seed=3)))


def test_distributed_loaders_shard_the_data_without_a_process_group():
    data = load_dataset("digits", image_size=8, augment="none")
    shards = [make_loader(data.train, 10, distributed=True, num_replicas=2, rank=r, seed=1) for r in (0, 1)]
    indices = [list(iter(loader.sampler)) for loader in shards]
    assert all(type(loader.sampler).__name__ == "DistributedSampler" for loader in shards)
    assert set(indices[0]).isdisjoint(indices[1]) and len(indices[0]) == len(indices[1]) == 1437 // 2
    assert shards[0].sampler.drop_last and shards[0].sampler.seed == 1 and shards[0].sampler.shuffle
    train, test = make_loaders(data, 10, eval_batch_size=100, distributed=True, num_replicas=2, rank=0)
    assert type(train.sampler).__name__ == "DistributedSampler" and len(test) == 4  # eval: every point, in order


# ---------------------------------------------------------------------------------------------- the CLI, end to end


def test_cli_trains_on_an_image_folder_and_records_the_pipeline(tmp_path):
    classes(tmp_path / "data", {"a": 10, "b": 10})
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--dataset", f"imagefolder:{tmp_path / 'data'}", "--model", "resnet10t",
                 "--image-size", "16", "--batch-size", "6", "--epochs", "1", "--steps", "1", "--workers", "2",
                 "--val-split", "0.2", "--lams", "0", "--eval-attacks", "clean", "--no-progress"]) == 0
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert meta["augmentation"].startswith("timm random-resized crop 16 px")
    ev = tmp_path / "ev"
    assert main(["eval", str(out), "--out", str(ev), "--lams", "0", "--eval-attacks", "clean", "--workers", "0",
                 "--no-progress"]) == 0
    scores = [json.loads((d / "report.json").read_text())["scores"]["0.0"]["clean"] for d in (out, ev)]
    assert scores[0] == scores[1]  # eval re-splits the same held-out 20% from the recorded seed and val_split
    saved = json.loads((out / "config.json").read_text())["training"]
    assert saved["val_split"] == 0.2 and saved["data_config"]["input_size"] == [3, 176, 176]
    assert saved["augmentation"] == meta["augmentation"]
