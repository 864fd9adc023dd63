"""Datasets for training and evaluation, all as images in [0, 1] (normalisation lives in the model).

The embedded default, ``digits``, is scikit-learn's bundled copy of the UCI handwritten digits: 1,797
real 8×8 grey-scale images of 10 classes, shipped inside the scikit-learn wheel (no download). It is
split 80/20 (stratified, fixed seed), resized to the model's input size and repeated to 3 channels.
torchvision's CIFAR-10/100, SVHN, MNIST and FashionMNIST need ``download=True`` the first time;
``imagefolder:<path>`` reads your own data (``<path>/train/<class>/*`` and ``<path>/val/<class>/*``).

Example:
    >>> from floatify.data import load_dataset
    >>> data = load_dataset("digits", image_size=32)
    >>> len(data.train), len(data.test), data.num_classes
    (1437, 360, 10)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

__all__ = ["DatasetBundle", "load_dataset", "default_eps", "DATASETS"]

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "mnist", "fashionmnist", "imagefolder:<path>")
# reason: at 8/255 the 8×8 digits are barely perturbed (a standard model keeps ~85% under attack, so there is
# nothing to trade); at 0.1 a standard model keeps ~0-2% and PGD-AT ~60-67% (benchmarks/threat_model.py).
_DEFAULT_EPS = {"digits": 0.1}


def default_eps(dataset: str) -> float:
    """The default L∞ training/evaluation budget for ``dataset`` (pixel units): 0.1 for digits, else 8/255.

    >>> default_eps("digits"), round(default_eps("cifar10") * 255)
    (0.1, 8)
    """
    return _DEFAULT_EPS.get(dataset.lower(), 8 / 255)


@dataclass
class DatasetBundle:
    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    image_size: int


def _digits(image_size: int, seed: int) -> DatasetBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0  # raw values are 0..16
    labels = torch.tensor(bunch.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        range(len(labels)), test_size=0.2, stratify=bunch.target, random_state=seed
    )
    images = F.interpolate(images[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).repeat(1, 3, 1, 1).contiguous()
    return DatasetBundle(
        "digits",
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[test_idx], labels[test_idx]),
        10,
        image_size,
    )


def _torchvision(name: str, root: Path, image_size: int, download: bool) -> DatasetBundle:
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    grey = name in ("mnist", "fashionmnist")
    steps = [T.Resize((image_size, image_size))]
    if grey:
        steps.append(T.Grayscale(num_output_channels=3))
    transform = T.Compose(steps + [T.ToTensor()])
    kw = dict(root=str(root), transform=transform, download=download)
    try:
        if name == "svhn":
            train, test, n = tvd.SVHN(split="train", **kw), tvd.SVHN(split="test", **kw), 10
        else:
            cls, n = {"cifar10": (tvd.CIFAR10, 10), "cifar100": (tvd.CIFAR100, 100), "mnist": (tvd.MNIST, 10),
                      "fashionmnist": (tvd.FashionMNIST, 10)}[name]
            train, test = cls(train=True, **kw), cls(train=False, **kw)
    except RuntimeError as err:
        if not download:
            raise FileNotFoundError(
                f"dataset '{name}' is not under {root}: pass --download (download=True) to fetch it, "
                f"or --data-root to point at an existing copy"
            ) from err
        raise
    return DatasetBundle(name, train, test, n, image_size)


def _imagefolder(path: Path, image_size: int) -> DatasetBundle:
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    transform = T.Compose([T.Resize((image_size, image_size)), T.ToTensor()])
    for split in ("train", "val"):
        if not (path / split).is_dir():
            raise FileNotFoundError(f"imagefolder dataset needs {path / split}/<class>/<image> (missing {split}/)")
    train = tvd.ImageFolder(str(path / "train"), transform=transform)
    test = tvd.ImageFolder(str(path / "val"), transform=transform)
    if train.classes != test.classes:
        raise ValueError(f"train/ and val/ under {path} have different classes")
    return DatasetBundle(f"imagefolder:{path}", train, test, len(train.classes), image_size)


def load_dataset(
    name: str, *, image_size: int = 32, root: str | Path = "data", download: bool = False, seed: int = 0
) -> DatasetBundle:
    """Load dataset ``name`` (see :data:`DATASETS`) as images in [0, 1] at ``image_size``."""
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    key = name.lower()
    if key == "digits":
        return _digits(image_size, seed)
    if key.startswith("imagefolder:"):
        return _imagefolder(Path(name.split(":", 1)[1]), image_size)
    if key in ("cifar10", "cifar100", "svhn", "mnist", "fashionmnist"):
        return _torchvision(key, Path(root), image_size, download)
    raise ValueError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
