"""floatify.models: Normalized puts the model's own normalisation inside it; create_model by name; data configs."""

from __future__ import annotations

import json

import pytest
import timm
import timm.data
import torch
import torch.nn as nn

import floatify
from floatify.checkpoint import load_checkpoint, load_into, save_checkpoint
from floatify.cli import main
from floatify.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalized,
    create_model,
    model_data_config,
    set_normalization,
)


def test_normalized_feeds_the_inner_model_normalised_inputs():
    inner = nn.Identity()
    model = Normalized(inner)
    x = torch.rand(2, 3, 4, 4)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(model(x), (x - mean) / std)
    assert torch.allclose(Normalized(inner, mean=(0.5,), std=(0.25,))(x), (x - 0.5) / 0.25)
    assert sorted(model.state_dict()) == ["mean", "std"]  # buffers travel with the checkpoint
    assert model(x.double()).dtype == torch.float64


def test_create_model_by_name_and_unknown_names():
    model = create_model("resnet10t", 7)
    assert isinstance(model, Normalized) and model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 7)
    assert not isinstance(create_model("resnet10t", 7, normalize=False), Normalized)
    with pytest.raises(ValueError, match="resnet10t"):  # a close name is suggested
        create_model("resnet10", 7)
    with pytest.raises(ValueError, match="unknown model 'resnet10'"):
        model_data_config("resnet10")


MODELS = [  # (name, constructor kwargs, library: where its preprocessing comes from)
    ("resnet10t", {}, "timm"),
    ("vit_tiny_patch16_224", {"img_size": 32, "depth": 1}, "timm"),  # mean/std 0.5, not ImageNet's
    ("mobilenet_v3_small", {}, "torchvision"),
]


def _expected_config(name: str, kwargs: dict, library: str) -> dict:
    if library == "timm":
        return dict(timm.data.resolve_model_data_config(timm.create_model(name, num_classes=3, **kwargs)))
    return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (3, 224, 224), "crop_pct": 0.875,
            "interpolation": "bilinear"}


@pytest.mark.parametrize("name, kwargs, library", MODELS)
def test_the_model_brings_its_own_preprocessing(name, kwargs, library):
    want = _expected_config(name, kwargs, library)
    model = create_model(name, 3, **kwargs)
    assert torch.allclose(model.mean.flatten(), torch.tensor(want["mean"]))
    assert torch.allclose(model.std.flatten(), torch.tensor(want["std"]))
    by_name, built = model_data_config(name), model_data_config(floatify.convert(model))
    assert by_name == built  # the name alone gives what the built (and converted) model says
    assert built["input_size"] == list(want["input_size"]) and built["interpolation"] == want["interpolation"]
    assert built["crop_pct"] == pytest.approx(want["crop_pct"]) and built["mean"] == pytest.approx(want["mean"])


OVERRIDES = [  # (mean, std, error fragment or None)
    ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), None),
    (None, (0.5, 0.5, 0.5), None),
    ((1, 2), None, "mean must be 3 numbers, one per RGB channel"),
    ((0.5, 0.5, 0.5, 0.5), None, "mean must be 3 numbers"),
    (None, (0.5, 0, 0.5), "std must be numbers > 0"),
    (None, (0.5, -0.2, 0.5), "std must be numbers > 0"),
    ((0.5, float("nan"), 0.5), None, "mean must be 3 numbers"),
    ("abc", None, "mean must be 3 numbers"),
]


@pytest.mark.parametrize("mean, std, error", OVERRIDES)
def test_mean_and_std_can_be_overridden_and_bad_values_are_one_clear_line(mean, std, error):
    if error is not None:
        with pytest.raises(ValueError, match=error) as raised:
            create_model("resnet10t", 3, mean=mean, std=std)
        assert "\n" not in str(raised.value)
        with pytest.raises(ValueError, match=error):
            set_normalization(create_model("resnet10t", 3), mean, std)
        return
    for model in (create_model("resnet10t", 3, mean=mean, std=std),
                  set_normalization(create_model("resnet10t", 3), mean, std)):
        config = model_data_config(model)
        assert config["mean"] == pytest.approx(mean or IMAGENET_MEAN) and config["std"] == pytest.approx(std)


def test_set_normalization_needs_a_normalized_model():
    assert set_normalization(nn.Linear(2, 2)) is not None  # nothing to change: fine
    with pytest.raises(ValueError, match="no floatify.models.Normalized"):
        set_normalization(nn.Linear(2, 2), std=(0.5, 0.5, 0.5))


def test_mean_and_std_travel_with_the_saved_model(tmp_path):
    trained = floatify.convert(create_model("resnet10t", 3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5)))
    save_checkpoint(tmp_path / "m.safetensors", trained, {})
    rebuilt = floatify.convert(create_model("resnet10t", 3))  # the model's defaults, as `floatify eval` builds it
    load_into(rebuilt, load_checkpoint(tmp_path / "m.safetensors")[0])
    assert model_data_config(rebuilt)["mean"] == [0.1, 0.2, 0.3] and model_data_config(rebuilt)["std"] == [0.5] * 3


CLI_ERRORS = [  # (arguments, message)
    (["--mean", "1,2"], "--mean must be 3 numbers, one per RGB channel"),
    (["--std", "0.5,0,0.5"], "--std must be numbers > 0"),
    (["--std", "0.5,0.5,-1"], "--std must be numbers > 0"),
    (["--mean", "0.1,0.2,0.3,0.4"], "--mean must be 3 numbers"),
]


@pytest.mark.parametrize("argv, message", CLI_ERRORS)
def test_cli_refuses_bad_mean_and_std_before_writing(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--model", "resnet10t", "--no-progress"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists(), err


def test_cli_mean_that_is_not_numbers_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path / "run"), "--mean", "a,b,c"])
    assert exc.value.code == 2 and "3 comma-separated numbers" in capsys.readouterr().err


def test_cli_records_the_normalisation_it_trained_with(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--model", "resnet10t", "--image-size", "8", "--train-limit", "32",
                 "--batch-size", "16", "--epochs", "1", "--steps", "1", "--std", "0.5,0.5,0.5", "--lams", "0",
                 "--eval-attacks", "clean", "--eval-limit", "16", "--no-progress"]) == 0
    state, _ = load_checkpoint(out / "model.safetensors")
    meta = json.loads((out / "config.json").read_text())["training"]
    assert meta["data_config"]["std"] == [0.5] * 3 and meta["data_config"]["mean"] == pytest.approx(IMAGENET_MEAN)
    assert torch.equal(state["std"].flatten(), torch.full((3,), 0.5))
