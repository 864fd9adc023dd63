"""Reading your own image folder: class folders scanned, split per class, files decoded (and checked) by PIL.

``imagefolder:<dir>`` (see :mod:`floatify.data`) reads ``<dir>/train/<class>/*`` and ``<dir>/val/<class>/*``, or one
folder ``<dir>/<class>/*`` split per class (stratified, seeded: :mod:`floatify.split`; ``val_split``, default
:data:`DEFAULT_VAL_SPLIT` held out). Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``) are skipped; any
other file PIL cannot open, an empty or single class, a stray image outside a class folder stops with one line naming
it. :class:`ImageFiles` decodes each image as RGB when it is read; :func:`check_images` decodes them all once up front,
so a damaged file stops a run before anything is written. The transforms (timm's, or a crop rule) are
:mod:`floatify.data`'s.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for name in ("cat", "dog"):
    ...     (Path(tmp.name) / name).mkdir()
    ...     for i in range(5):
    ...         Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(Path(tmp.name) / name / f"{i}.png")
    >>> classes, train, test, held_out = folder_splits(Path(tmp.name), seed=0, val_split=0.2)
    >>> classes, len(train), len(test), held_out
    (['cat', 'dog'], 8, 2, 0.2)
    >>> check_images(ImageFiles(test, classes, transform=lambda image: image), workers=0)
    2
    >>> tmp.cleanup()
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import DataLoader, Dataset, Subset

from floatify.split import stratified_split

__all__ = ["DEFAULT_VAL_SPLIT", "ImageDecodeError", "ImageFiles", "open_rgb", "check_images", "folder_splits"]

DEFAULT_VAL_SPLIT = 0.1  # share of each class held out when imagefolder:<dir> is one folder of class folders


# --------------------------------------------------------------------------------------------- decoding files


class ImageDecodeError(ValueError):
    """An image file PIL cannot decode; the message names the file and the fix, on one line.

    A DataLoader worker re-raises it in the main process as ``ImageDecodeError("Caught ImageDecodeError in
    DataLoader worker process 0. Original Traceback ...")``; the constructor keeps the original line only.

    >>> str(ImageDecodeError("Caught ImageDecodeError in worker 1.\\nTraceback\\n"
    ...                      "floatify.imagefolder.ImageDecodeError: cannot decode image a.png: bad; remove it"))
    'cannot decode image a.png: bad; remove it'
    """

    def __init__(self, message: str):
        found = re.findall(r"ImageDecodeError: (.*)", message) if "\n" in message else []
        super().__init__(found[-1].strip() if found else message)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def open_rgb(path: str | Path, draft: int | None = None):
    """The image at ``path`` as a decoded RGB PIL image (grey, RGBA, palette, CMYK ... converted).

    ``draft``: let JPEG decode at a reduced scale of at least this size (faster; still reads every byte).
    Raises :class:`ImageDecodeError` naming the file when PIL cannot read it.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if draft is not None:
                img.draft("RGB", (draft, draft))
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # reason: PIL's decode errors
        raise ImageDecodeError(f"cannot decode image {path}: {_one_line(err)}; remove or replace the file") from None


class ImageFiles(Dataset):
    """``(transform(image), label)`` for a list of ``(path, label)`` image files; ``classes`` names the labels."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], transform: Callable):
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(open_rgb(path)), label


class _DecodeOnly(Dataset):
    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> int:
        open_rgb(self.paths[index], draft=64)
        return 0


def _files_of(dataset: Dataset) -> list[str]:
    """The image file paths behind ``dataset`` (through Subsets), in its order; [] for in-memory data."""
    if isinstance(dataset, Subset):
        inner = _files_of(dataset.dataset)
        return [inner[i] for i in dataset.indices] if inner else []
    return [path for path, _ in dataset.samples] if isinstance(dataset, ImageFiles) else []


def check_images(dataset: Dataset, *, workers: int | None = None, limit: int | None = None) -> int:
    """Decode every image file behind ``dataset`` (the first ``limit``) once; returns how many were checked.

    Raises :class:`ImageDecodeError` naming the first file PIL cannot decode, so a damaged file stops a run
    before anything is written instead of in the middle of training. Runs in ``workers`` processes (default:
    :func:`~floatify.data.default_workers`); costs one decoding pass (JPEGs at reduced scale). In-memory data:
    nothing to check, 0.

    >>> from floatify.data import load_dataset
    >>> check_images(load_dataset("digits").train)
    0
    """
    paths = _files_of(dataset)[:limit]
    if not paths:
        return 0
    # reason: the loaders' worker rule is floatify.data's, and floatify.data imports this module
    from floatify.data import _check_workers, default_workers

    workers = default_workers(dataset) if workers is None else _check_workers(workers)
    loader = DataLoader(_DecodeOnly(paths), batch_size=32, num_workers=workers, collate_fn=len)
    return sum(loader)


# ------------------------------------------------------------------------------------------------ class folders


def _image_extensions() -> frozenset[str]:
    """The file extensions of every format PIL can open."""
    from PIL import Image

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")  # reason: .DS_Store, ._files, .ipynb_checkpoints are OS/tool metadata


def _class_images(folder: Path, root: Path, extensions: frozenset[str]) -> list[str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _visible(p)
                   and all(_visible(part) for part in p.relative_to(folder).parents))
    for path in files:
        if path.suffix.lower() not in extensions:
            raise ValueError(f"imagefolder: {path} is not an image file PIL reads (extension '{path.suffix}'); "
                             f"remove it or move it out of {root}")
    if not files:
        raise ValueError(f"imagefolder: class folder {folder} holds no images; add images to it or remove it")
    return [str(p) for p in files]


def _scan(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sorted folder names) and ``(path, label)`` of every image of ``root/<class>/...``."""
    extensions = _image_extensions()
    entries = sorted(p for p in root.iterdir() if _visible(p))
    folders = [p for p in entries if p.is_dir()]
    stray = [p for p in entries if p.is_file() and p.suffix.lower() in extensions]
    if stray:
        raise ValueError(f"imagefolder: {stray[0]} is not inside a class folder; move the images into "
                         f"{root}/<class>/ (one folder per class)")
    if not folders:
        raise FileNotFoundError(f"imagefolder: {root} has no class folders; expected {root}/<class>/<image> (one "
                                f"folder per class) or {root}/train/<class>/... and {root}/val/<class>/...")
    if len(folders) == 1:
        raise ValueError(f"imagefolder: {root} has a single class folder ({folders[0].name}); a classifier needs at "
                         f"least 2: add one folder per class")
    samples = [(path, label) for label, folder in enumerate(folders)
               for path in _class_images(folder, root, extensions)]
    return [p.name for p in folders], samples


def _stratified_split(samples: list[tuple[str, int]], val_split: float, seed: int,
                      root: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    try:
        train_idx, test_idx = stratified_split([label for _, label in samples], val_split, seed)
    except ValueError as err:
        raise ValueError(f"imagefolder: cannot hold out {val_split:g} of each class of {root} ({_one_line(err)}); "
                         f"add images (at least 2 per class), change --val-split, or give train/ and val/ "
                         f"folders") from None
    return [samples[i] for i in train_idx], [samples[i] for i in test_idx]


def folder_splits(root: Path, seed: int, val_split: float | None):
    """``(classes, train samples, test samples, val_split used)`` of ``root``: train/ + val/, or one folder split."""
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder: {root} is not a folder; pass imagefolder:<dir> with <dir>/<class>/"
                                f"<image>, or <dir>/train/ and <dir>/val/ holding the class folders")
    train_dir, val_dir = root / "train", root / "val"
    if not (train_dir.is_dir() or val_dir.is_dir()):
        split = DEFAULT_VAL_SPLIT if val_split is None else val_split
        classes, samples = _scan(root)
        return (classes, *_stratified_split(samples, split, seed, root), split)
    if not (train_dir.is_dir() and val_dir.is_dir()):
        missing = "val/" if train_dir.is_dir() else "train/"
        raise FileNotFoundError(f"imagefolder: {root} has {'train/' if missing == 'val/' else 'val/'} but no "
                                f"{missing}; add {root / missing}<class>/<image>, or pass a single folder of class "
                                f"folders (split with --val-split)")
    if val_split is not None:
        raise ValueError(f"imagefolder: --val-split (val_split) splits a single folder of class folders, but {root} "
                         f"has train/ and val/ already; drop --val-split")
    classes, train = _scan(train_dir)
    val_classes, test = _scan(val_dir)
    if classes != val_classes:
        raise ValueError(f"imagefolder: train/ and val/ under {root} have different classes (only in train/: "
                         f"{sorted(set(classes) - set(val_classes))}, only in val/: "
                         f"{sorted(set(val_classes) - set(classes))}); give both the same class folders")
    return classes, train, test, None
