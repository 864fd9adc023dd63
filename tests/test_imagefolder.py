"""floatify.imagefolder: class folders scanned and split per class, every image mode decoded to RGB, damaged files
and bad layouts named on one line (by the loader, check_images and the CLI) before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from image_folders import classes, colour, garbage, png, split_folder, truncated_jpeg
from PIL import Image

from floatify.cli import main
from floatify.data import load_dataset, make_loader
from floatify.imagefolder import ImageDecodeError, check_images

# ------------------------------------------------------------------------------------------------ hostile rows


def _corrupt_in_train(root: Path) -> str:
    split_folder(root)
    garbage(root / "train" / "cat" / "broken.png")
    return "broken.png"


def _truncated_in_val(root: Path) -> str:
    split_folder(root)
    truncated_jpeg(root / "val" / "dog" / "cut.jpg")
    return "cut.jpg"


def _empty_class(root: Path) -> str:
    classes(root, {"cat": 5, "dog": 5})
    (root / "empty").mkdir()
    return "holds no images"


def _single_class(root: Path) -> str:
    classes(root, {"cat": 5})
    return "single class folder"


def _no_images(root: Path) -> str:
    root.mkdir()
    return "has no class folders"


def _not_an_image(root: Path) -> str:
    classes(root, {"cat": 5, "dog": 5})
    (root / "dog" / "notes.txt").write_text("hello")
    return "notes.txt is not an image file"


def _too_few_to_split(root: Path) -> str:
    classes(root, {"cat": 1, "dog": 5})
    return "at least 2 per class"


def _good(root: Path) -> str:
    classes(root, {"cat": 10, "dog": 10})
    return ""


def _train_and_val(root: Path) -> str:
    split_folder(root)
    return ""


HOSTILE = [  # (build the folder -> expected fragment, extra CLI arguments, fragment when the builder gives none)
    pytest.param(_corrupt_in_train, [], None, id="corrupt-file-in-train"),
    pytest.param(_truncated_in_val, [], None, id="truncated-jpeg-in-val"),
    pytest.param(_empty_class, [], None, id="empty-class-folder"),
    pytest.param(_single_class, [], None, id="single-class"),
    pytest.param(_no_images, [], None, id="no-images"),
    pytest.param(_not_an_image, [], None, id="not-an-image"),
    pytest.param(_too_few_to_split, ["--val-split", "0.2"], None, id="too-few-to-split"),
    pytest.param(_good, ["--val-split", "0"], "--val-split must be in (0, 1)", id="val-split-0"),
    pytest.param(_good, ["--val-split", "1"], "--val-split must be in (0, 1)", id="val-split-1"),
    pytest.param(_good, ["--val-split", "-0.1"], "--val-split must be in (0, 1)", id="val-split-negative"),
    pytest.param(_train_and_val, ["--val-split", "0.2"], "has train/ and val/ already", id="val-split-with-val"),
    pytest.param(_good, ["--workers", "-1"], "--workers must be 0 or more", id="workers-negative"),
]


@pytest.mark.parametrize("build, extra, fragment", HOSTILE)
def test_bad_data_stops_the_cli_with_one_line_before_out_is_written(tmp_path, capsys, build, extra, fragment):
    root, out = tmp_path / "data", tmp_path / "run"
    fragment = build(root) or fragment
    code = main(["train", "--out", str(out), "--dataset", f"imagefolder:{root}", "--model", "resnet10t",
                 "--image-size", "16", "--batch-size", "2", "--epochs", "1", "--no-progress", "--workers", "0"]
                + extra)
    err = capsys.readouterr().err
    assert code == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("floatify train: error: ")
    assert not out.exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_file_is_named_by_check_images_and_by_the_loader_in_worker_processes(tmp_path, workers):
    _truncated_in_val(tmp_path)
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=8)
    assert check_images(data.train, workers=workers) == 8
    for run in (lambda: check_images(data.test, workers=workers),
                lambda: list(make_loader(data.test, 5, shuffle=False, drop_last=False, workers=workers))):
        with pytest.raises(ImageDecodeError) as err:
            run()
        message = str(err.value)
        assert message.startswith(f"cannot decode image {tmp_path / 'val' / 'dog' / 'cut.jpg'}: ")
        assert message.endswith("; remove or replace the file") and "\n" not in message


# --------------------------------------------------------------------------------------------- image formats

FORMATS = [  # (PIL mode, file extension)
    ("L", "png"), ("LA", "png"), ("RGBA", "png"), ("P", "png"), ("RGB", "png"), ("RGB", "jpg"), ("CMYK", "tiff"),
    ("RGB", "bmp"), ("RGB", "webp"), ("P", "gif"),
]


@pytest.mark.parametrize("mode, ext", FORMATS)
def test_every_image_mode_loads_as_three_channels_in_unit_range(tmp_path, mode, ext):
    split_folder(tmp_path)
    for split in ("train", "val"):
        path = png(tmp_path / split / "cat" / f"x.{ext}", value=128, size=12, mode=mode, bar=False)
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=8, augment="none")
    x, label = data.test[[p for p, _ in data.test.samples].index(str(path))]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and label == 0
    assert 0 <= x.min() and x.max() <= 1
    with Image.open(path) as img:  # the colour PIL itself reads from the file, as RGB
        want = torch.tensor(img.convert("RGB").getpixel((6, 6)), dtype=torch.float32).view(3, 1, 1) / 255
    assert (x - want).abs().max() <= 3 / 255  # the colour survives resizing and conversion (lossy files: ±3)
    assert (want - torch.tensor(colour(128)).view(3, 1, 1) / 255).abs().max() < 0.4  # and is about the one drawn


# ---------------------------------------------------------------------------------------- splitting a folder


def test_a_single_folder_is_split_per_class_and_by_seed(tmp_path):
    classes(tmp_path, {"a": 10, "b": 10, "c": 10})
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=8, val_split=0.2)
    train, test = data.train.samples, data.test.samples
    assert data.num_classes == 3 and data.val_split == 0.2 and data.image_size == 8
    assert set(train).isdisjoint(test)
    assert len(set(train) | set(test)) == 30
    assert [sum(label == k for _, label in test) for k in range(3)] == [2, 2, 2]  # stratified
    assert load_dataset(f"imagefolder:{tmp_path}", image_size=8, val_split=0.2).test.samples == test  # seeded
    assert set(load_dataset(f"imagefolder:{tmp_path}", image_size=8, val_split=0.2, seed=1).test.samples) != set(test)
    default = load_dataset(f"imagefolder:{tmp_path}", image_size=8)
    assert default.val_split == 0.1 and len(default.test) == 3  # the default holds out 10% of each class
    assert load_dataset(f"imagefolder:{split_folder(tmp_path / 'tv')}", image_size=8).val_split is None
