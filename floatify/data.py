"""Datasets and loaders for training and evaluation, all as images in [0, 1] (normalisation lives in the model).

The embedded default, ``digits``, is the UCI handwritten digits (the copy scikit-learn bundles): 1,797 real 8×8
grey-scale images of 10 classes, shipped inside floatify as ``floatify/assets/digits.safetensors`` (CC BY 4.0, see
``DIGITS-LICENSE.md`` beside it; no download). It is split 80/20 (stratified, seeded: :mod:`floatify.split`, the
split scikit-learn made), resized to the model's input size and repeated to 3 channels.
torchvision's CIFAR-10/100, SVHN, MNIST and FashionMNIST need ``download=True`` the first time;
``imagefolder:<path>`` reads your own data: ``<path>/train/<class>/*`` and ``<path>/val/<class>/*``, or one
folder ``<path>/<class>/*`` split per class (stratified, seeded; ``val_split``, default 0.1 held out), read by
:mod:`floatify.imagefolder`.

Training augmentation (the test split is never augmented). ``augment="auto"`` picks the dataset's standard:

* CIFAR-10/100: ``"crop-flip"``: random crop with padding (image_size // 8: 4 px at 32 px) + horizontal flip;
* SVHN, MNIST, FashionMNIST: ``"crop"``: the same random crop, no flip (digits change meaning when mirrored);
* the embedded digits: ``"none"``: on the 8×8 digits the crop cost 6 points of clean and 20 of robust accuracy at
  λ = 1 (``benchmarks/data_pipeline.py``, 3 seeds); ``"crop"`` (no flip) is there to ask for;
* ``imagefolder:``: ``"timm"``: timm's ``create_transform(is_training=True)`` with the model's data config
  (random-resized crop + horizontal flip); evaluation: timm's resize + centre crop (``crop_pct``). Neither
  normalises.

Any rule can be asked for by name (``"crop"`` for an image folder of digits or text, ``"none"`` for none); ``"timm"``
needs image files (``imagefolder:``).

Example:
    >>> from floatify.data import load_dataset, make_loaders
    >>> data = load_dataset("digits", image_size=32)
    >>> len(data.train), len(data.test), data.num_classes, data.augmentation
    (1437, 360, 10, 'none')
    >>> load_dataset("digits", image_size=32, augment="crop").augmentation
    'random crop 32 px, padding 4, no flip (digits change meaning when mirrored)'
    >>> train, test = make_loaders(data, 64, seed=0)
    >>> next(iter(train))[0].shape, train.num_workers
    (torch.Size([64, 3, 32, 32]), 0)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset

from floatify.imagefolder import DEFAULT_VAL_SPLIT, ImageFiles, folder_splits
from floatify.split import stratified_split

__all__ = ["DatasetBundle", "load_dataset", "default_eps", "DATASETS", "AUGMENTS", "DEFAULT_VAL_SPLIT",
           "AugmentedTensors", "random_crop_batch", "default_workers", "make_loader", "make_loaders"]

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "mnist", "fashionmnist", "imagefolder:<path>")
AUGMENTS = ("auto", "none", "crop", "crop-flip", "timm")
DIGITS_FILE = Path(__file__).parent / "assets" / "digits.safetensors"  # the embedded dataset (licence beside it)
_TORCHVISION_SETS = ("cifar10", "cifar100", "svhn", "mnist", "fashionmnist")
_FLIPPED = ("cifar10", "cifar100")  # reason: the other sets are digits (changed by mirroring) or left/right items
# reason: at 8/255 the 8×8 digits are barely perturbed (a standard model keeps ~85% under attack, so there is
# nothing to trade); at 0.1 a standard model keeps ~0-2% and PGD-AT ~60-67% (benchmarks/threat_model.py).
_DEFAULT_EPS = {"digits": 0.1}
# reason: timm's defaults for a model without a data config (its DEFAULT_CROP_PCT, 224 px, bilinear)
_DEFAULT_DATA_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.875}
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos", "random")


def default_eps(dataset: str) -> float:
    """The default L∞ training/evaluation budget for ``dataset`` (pixel units): 0.1 for digits, else 8/255.

    >>> default_eps("digits"), round(default_eps("cifar10") * 255)
    (0.1, 8)
    """
    return _DEFAULT_EPS.get(dataset.lower(), 8 / 255)


@dataclass
class DatasetBundle:
    """A dataset's train and test splits, images in [0, 1] at ``image_size``.

    ``augmentation``: one line saying what training augmentation the train split applies ("none" for none);
    ``val_split``: the share of each class held out as the test split of a single imagefolder (None otherwise).
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    image_size: int
    augmentation: str = "none"
    val_split: float | None = None


# ------------------------------------------------------------------------------------------------ augmentation


def random_crop_batch(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of the N×C×H×W batch zero-padded by ``padding`` and cropped back at its own random offset.

    The batched equivalent of torchvision's ``RandomCrop(size, padding)`` (offsets uniform in [0, 2·padding]).

    >>> x = torch.arange(16.).view(1, 1, 4, 4)
    >>> torch.equal(random_crop_batch(x, 0), x), random_crop_batch(x.repeat(5, 3, 1, 1), 1).shape
    (True, torch.Size([5, 3, 4, 4]))
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    rows = (offsets[0, :, None] + torch.arange(h))[:, None, :, None]
    cols = (offsets[1, :, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


class AugmentedTensors(TensorDataset):
    """In-memory ``(images, labels)`` whose images get :func:`random_crop_batch` each time they are read.

    A DataLoader fetches a whole batch through ``__getitems__``: one batched crop per batch, no per-image Python.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, padding: int, flip: bool = False):
        super().__init__(images, labels)
        self.padding, self.flip = padding, flip

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        images, labels = self.tensors[0][index], self.tensors[1][index]
        images = random_crop_batch(images, self.padding)
        if self.flip:
            mirrored = torch.rand(len(index)) < 0.5
            images = torch.where(mirrored[:, None, None, None], images.flip(-1), images)
        return list(zip(images.unbind(0), labels.unbind(0)))

    def __getitem__(self, index):
        return self.__getitems__([index])[0]


def _crop_padding(image_size: int) -> int:
    return max(1, image_size // 8)  # reason: CIFAR's standard 4 px at 32 px, the same share at other sizes


def _crop_description(name: str, image_size: int, flip: bool) -> str:
    mirrored = ("horizontal flip" if flip else
                "no flip (digits change meaning when mirrored)" if name in ("digits", "svhn", "mnist") else "no flip")
    return f"random crop {image_size} px, padding {_crop_padding(image_size)}, {mirrored}"


def _rule(name: str, augment: str) -> str:
    """The augmentation rule ``augment`` means for dataset ``name`` (``"auto"`` resolved to the dataset's standard)."""
    if augment != "auto":
        return augment
    if name == "digits":  # reason: measured, benchmarks/data_pipeline.py: the crop costs the 8×8 digits 6 points
        return "none"     # clean and 20 robust at λ = 1 (3 seeds); ask for it with augment="crop"
    return "timm" if name.startswith("imagefolder:") else "crop-flip" if name in _FLIPPED else "crop"


def _check_augment(augment: str) -> str:
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)} (auto: the dataset's standard training "
                         f"augmentation; none: off; crop / crop-flip: random crop with padding, without / with a "
                         f"horizontal flip; timm: timm's random-resized crop + flip, image folders only), got "
                         f"{augment!r}")
    return augment


# ------------------------------------------------------------------------------------------- built-in datasets


def _digits(image_size: int, seed: int, augment: str) -> DatasetBundle:
    from safetensors.torch import load_file

    arrays = load_file(str(DIGITS_FILE))  # tensors only: reading it runs no code
    images = arrays["images"].to(torch.float32) / 16.0  # raw values are 0..16
    labels = arrays["labels"].to(torch.long)
    train_idx, test_idx = stratified_split(labels.tolist(), test_fraction=0.2, seed=seed)
    images = F.interpolate(images[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).repeat(1, 3, 1, 1).contiguous()
    rule = _rule("digits", augment)
    if rule == "none":
        train: TensorDataset = TensorDataset(images[train_idx], labels[train_idx])
        described = "none"
    else:
        flip = rule == "crop-flip"
        train = AugmentedTensors(images[train_idx], labels[train_idx], _crop_padding(image_size), flip)
        described = _crop_description("digits", image_size, flip)
    return DatasetBundle("digits", train, TensorDataset(images[test_idx], labels[test_idx]), 10, image_size,
                         described)


def _torchvision_transforms(name: str, image_size: int, augment: str) -> tuple[Callable, Callable, str]:
    """Training and test transforms of torchvision set ``name`` (PIL image -> 3×size×size in [0, 1]), described."""
    import torchvision.transforms as T

    steps: list = [T.Resize((image_size, image_size))]
    if name in ("mnist", "fashionmnist"):
        steps.append(T.Grayscale(num_output_channels=3))
    test_transform = T.Compose(steps + [T.ToTensor()])
    rule = _rule(name, augment)
    if rule == "none":
        return test_transform, test_transform, "none"
    crop = [T.RandomCrop(image_size, padding=_crop_padding(image_size))]
    flip = [T.RandomHorizontalFlip()] if rule == "crop-flip" else []
    return (T.Compose(steps + crop + flip + [T.ToTensor()]), test_transform,
            _crop_description(name, image_size, bool(flip)))


def _torchvision(name: str, root: Path, image_size: int, download: bool, augment: str) -> DatasetBundle:
    import torchvision.datasets as tvd

    train_transform, test_transform, described = _torchvision_transforms(name, image_size, augment)
    kw = dict(root=str(root), download=download)
    try:
        if name == "svhn":
            train = tvd.SVHN(split="train", transform=train_transform, **kw)
            test, n = tvd.SVHN(split="test", transform=test_transform, **kw), 10
        else:
            cls, n = {"cifar10": (tvd.CIFAR10, 10), "cifar100": (tvd.CIFAR100, 100), "mnist": (tvd.MNIST, 10),
                      "fashionmnist": (tvd.FashionMNIST, 10)}[name]
            train, test = cls(train=True, transform=train_transform, **kw), cls(train=False, transform=test_transform,
                                                                                **kw)
    except RuntimeError as err:
        if not download:
            raise FileNotFoundError(
                f"dataset '{name}' is not under {root}: pass --download (download=True) to fetch it, "
                f"or --data-root to point at an existing copy"
            ) from err
        raise
    except OSError as err:  # reason: urllib's URLError (no network, no DNS) is an OSError without a file name
        if not download or getattr(err, "filename", None):
            raise
        reason = getattr(err, "reason", None) or err.strerror or err
        raise FileNotFoundError(
            f"cannot download dataset '{name}' (no network? {reason}); put its files under {root} (--data-root) "
            f"and drop --download"
        ) from None
    return DatasetBundle(name, train, test, n, image_size, described)


# ------------------------------------------------------------------------ image folders: the model's transforms


def _transform_config(data_config: dict | None, image_size: int | None) -> dict:
    """create_transform's keyword arguments from a model data config (see floatify.models.model_data_config)."""
    if not isinstance(data_config, (dict, type(None))):
        raise ValueError(f"data_config must be a dict like floatify.models.model_data_config(model), got "
                         f"{type(data_config).__name__}")
    config = {**_DEFAULT_DATA_CONFIG, **(data_config or {})}
    size = config["input_size"]
    if image_size is None:
        if not (isinstance(size, (list, tuple)) and len(size) == 3 and all(isinstance(v, int) for v in size)):
            raise ValueError(f"data_config input_size must be [channels, height, width], got {size!r}")
        image_size = int(size[-1])
    crop_pct, interpolation = config["crop_pct"], config["interpolation"]
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        raise ValueError(f"data_config crop_pct must be a number in (0, 1] (crop size / resize size), got "
                         f"{crop_pct!r}")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"data_config interpolation must be one of {', '.join(_INTERPOLATIONS)}, got "
                         f"{interpolation!r}")
    return {"input_size": (3, image_size, image_size), "interpolation": interpolation, "crop_pct": float(crop_pct)}


def _folder_transforms(config: dict, augment: str) -> tuple[Callable, Callable, str]:
    """timm's training and evaluation transforms without normalisation (images stay in [0, 1]), and a description."""
    import torchvision.transforms as T
    from timm.data import create_transform

    # reason: normalize=False makes timm's transforms end in a uint8 tensor; scale it to [0, 1] floats
    to_unit = T.ConvertImageDtype(torch.float32)
    test = T.Compose([create_transform(**config, is_training=False, normalize=False), to_unit])
    rule = _rule("imagefolder:", augment)
    size = config["input_size"][-1]
    if rule == "none":
        return test, test, "none"
    if rule in ("crop", "crop-flip"):  # reason: the evaluation view, then the crop rule of the built-in sets
        flip = [T.RandomHorizontalFlip()] if rule == "crop-flip" else []
        crop = T.RandomCrop(size, padding=_crop_padding(size))
        return T.Compose([test, crop, *flip]), test, _crop_description("imagefolder", size, bool(flip))
    # reason: color_jitter=None (timm's annotation omits None; its code skips the jitter): crop + flip, no colour
    train = T.Compose([create_transform(**config, is_training=True, normalize=False,
                                        color_jitter=None), to_unit])  # type: ignore[arg-type]
    return train, test, (f"timm random-resized crop {size} px (scale 0.08-1, ratio 3/4-4/3, "
                         f"{config['interpolation']}) + horizontal flip")


def _imagefolder(root: Path, image_size: int | None, seed: int, augment: str, val_split: float | None,
                 data_config: dict | None) -> DatasetBundle:
    config = _transform_config(data_config, image_size)
    classes, train, test, split = folder_splits(root, seed, val_split)
    train_transform, test_transform, described = _folder_transforms(config, augment)
    return DatasetBundle(f"imagefolder:{root}", ImageFiles(train, classes, train_transform),
                         ImageFiles(test, classes, test_transform), len(classes), config["input_size"][-1],
                         described, split)


def _check_arguments(key: str, image_size, augment: str, val_split) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8):
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    _check_augment(augment)
    if augment == "timm" and not key.startswith("imagefolder:"):
        raise ValueError(f"augment 'timm' (random-resized crop of image files) needs an imagefolder:<dir> dataset; "
                         f"for '{key}' use crop, crop-flip, auto or none")
    if val_split is None:
        return
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or not 0 < val_split < 1:
        raise ValueError(f"val_split must be a number in (0, 1) (the share of each class held out for evaluation, "
                         f"e.g. 0.1), got {val_split!r}")
    if not key.startswith("imagefolder:"):
        raise ValueError(f"val_split splits a single imagefolder:<dir>; '{key}' has its own test split: drop it")


def load_dataset(
    name: str, *, image_size: int | None = None, root: str | Path = "data", download: bool = False, seed: int = 0,
    augment: str = "auto", val_split: float | None = None, data_config: dict | None = None,
) -> DatasetBundle:
    """Load dataset ``name`` (see :data:`DATASETS`) as images in [0, 1] at ``image_size``.

    ``image_size``: default 32, or for ``imagefolder:`` the input size of ``data_config``. ``augment``: "auto"
    (the dataset's standard training augmentation, see the module docstring; ``bundle.augmentation`` says which)
    or "none". ``val_split``: for a single ``imagefolder:<dir>`` of class folders, the share of each class held out
    as the test split (stratified, ``seed``-ed; default 0.1). ``data_config``: the model's preprocessing
    (:func:`floatify.models.model_data_config`: input_size, interpolation, crop_pct) for ``imagefolder:``.

    >>> load_dataset("digits", image_size=16, augment="none").augmentation
    'none'
    """
    key = name.lower()
    _check_arguments(key, image_size, augment, val_split)
    if key.startswith("imagefolder:"):
        return _imagefolder(Path(name.split(":", 1)[1]), image_size, seed, augment, val_split, data_config)
    image_size = 32 if image_size is None else image_size
    if key == "digits":
        return _digits(image_size, seed, augment)
    if key in _TORCHVISION_SETS:
        return _torchvision(key, Path(root), image_size, download, augment)
    raise ValueError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")


# ------------------------------------------------------------------------------------------------------ loaders


def _check_workers(workers) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0 (0 loads in the main process), got {workers!r}")
    return workers


def _innermost(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def default_workers(dataset: Dataset) -> int:
    """Loader processes for ``dataset``: 0 for in-memory tensors, else min(8, CPUs - 1).

    >>> default_workers(load_dataset("digits").train)
    0
    """
    if isinstance(_innermost(dataset), TensorDataset):
        return 0  # reason: indexing in-memory tensors takes microseconds; worker processes only add start-up and IPC
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
                workers: int | None = None, device: str | torch.device = "cpu", seed: int = 0,
                distributed: bool = False, num_replicas: int | None = None, rank: int | None = None) -> DataLoader:
    """A DataLoader over ``dataset``: seeded order, ``workers`` processes, pinned memory on CUDA.

    ``workers``: default :func:`default_workers`; with workers, they persist across epochs. The order (and the
    workers' random augmentation) comes from a generator seeded with ``seed``. ``distributed=True`` shards with a
    ``DistributedSampler(shuffle, seed, drop_last)`` (``num_replicas``/``rank``: default the process group's).

    >>> loader = make_loader(load_dataset("digits").train, 100, distributed=True, num_replicas=2, rank=1)
    >>> len(loader), type(loader.sampler).__name__
    (7, 'DistributedSampler')
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    workers = default_workers(dataset) if workers is None else _check_workers(workers)
    # reason: an in-order loader in this process draws nothing of its own; without a generator it takes its base seed
    # from the global RNG as a plain DataLoader(dataset) does, so an evaluation's attacks draw what they always drew
    generator = torch.Generator().manual_seed(seed) if shuffle or workers > 0 or distributed else None
    sampler: DistributedSampler | None = None
    if distributed:
        sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else None, sampler=sampler,
                      drop_last=drop_last, num_workers=workers, generator=generator,
                      pin_memory=torch.device(device).type == "cuda", persistent_workers=workers > 0)


def make_loaders(bundle: DatasetBundle, batch_size: int, *, eval_batch_size: int | None = None,
                 workers: int | None = None, device: str | torch.device = "cpu", seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, distributed: bool = False, num_replicas: int | None = None,
                 rank: int | None = None) -> tuple[DataLoader, DataLoader]:
    """``(train, eval)`` loaders of ``bundle`` (see :func:`make_loader`); eval: in order, every point, unsharded.

    >>> train, test = make_loaders(load_dataset("digits"), 64, eval_batch_size=500)
    >>> len(train), len(test)
    (22, 1)
    """
    train = make_loader(bundle.train, batch_size, shuffle=shuffle, drop_last=drop_last, workers=workers,
                        device=device, seed=seed, distributed=distributed, num_replicas=num_replicas, rank=rank)
    test = make_loader(bundle.test, eval_batch_size or batch_size, shuffle=False, drop_last=False, workers=workers,
                       device=device, seed=seed)
    return train, test
