"""Image folders for the tests of floatify.imagefolder and floatify.data: class folders of small PIL-written files,
train/ + val/ layouts, and damaged files (garbage bytes, a truncated JPEG)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def colour(value: int) -> tuple[int, int, int]:
    return value, value // 2, 255 - value


def png(path: Path, value: int = 128, size: int = 8, mode: str = "RGB", bar: bool = True) -> Path:
    """An image file of one colour, with a white bar on its left unless ``bar`` is False, written with PIL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size, size), colour(value))
    if bar:
        img.paste((255, 255, 255), (0, 0, size // 4, size))
    (img.quantize(colors=4) if mode == "P" else img.convert(mode)).save(path)
    return path


def classes(root: Path, counts: dict[str, int], ext: str = "png") -> Path:
    for name, count in counts.items():
        for i in range(count):
            png(root / name / f"{i}.{ext}", value=20 * (i + 1) % 256)
    return root


def split_folder(root: Path, train: int = 4, val: int = 2) -> Path:
    classes(root / "train", {"cat": train, "dog": train})
    classes(root / "val", {"cat": val, "dog": val})
    return root


def garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG not really an image" * 3)


def truncated_jpeg(path: Path) -> None:
    buf = io.BytesIO()
    Image.effect_noise((32, 32), 60).convert("RGB").save(buf, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
