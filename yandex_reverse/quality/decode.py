"""Reading images for step 7.3: header first, then pixels as pyiqa's own loader
gives them, EXIF applied and shrunk to ``--max-side`` in memory (in worker threads)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..console import one_line
from ..imageinfo import ImageError, open_image


@dataclass
class Task:
    """One image to score: where it is and the size it will have after shrinking."""

    path: Path
    filename: str
    file_size: int
    mtime_ns: int
    width: int = 0
    height: int = 0
    format: str | None = None
    mode: str | None = None
    target: tuple[int, int] = (0, 0)  # (width, height) after --max-side


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size after shrinking the longer side to ``max_side`` (never enlarging)."""
    longest = max(width, height)
    if max_side <= 0 or longest <= max_side:
        return width, height
    factor = max_side / longest
    return max(1, round(width * factor)), max(1, round(height * factor))


def read_header(task: Task, max_side: int) -> None:
    """Fill in the size as shown (EXIF applied), format, mode and target size from the
    file's header; a file that is no image raises :class:`ImageError`."""
    with open_image(task.path) as image:
        width, height = image.size
        if _orientation(image) in (5, 6, 7, 8):
            width, height = height, width
        task.width, task.height = width, height
        task.format, task.mode = image.format, image.mode
    task.target = target_size(width, height, max_side)


def decode(path: Path, max_side: int) -> Any:
    """Pixels as pyiqa's own loader gives them (RGB, CHW float 0..1), EXIF applied and
    shrunk to ``max_side`` in memory. JPEGs much larger than needed are decoded at
    reduced scale first (``draft``), which is where most of the decode time goes."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    image = open_image(path)
    try:
        width, height = image.size
        swap = _orientation(image) in (5, 6, 7, 8)
        shown = (height, width) if swap else (width, height)
        want = target_size(*shown, max_side)
        if want != shown and image.format == "JPEG":
            stored_want = (want[1], want[0]) if swap else want
            image.draft("RGB", stored_want)
        try:
            image.load()
            image = ImageOps.exif_transpose(image) or image
        except Exception as exc:
            raise ImageError(f"corrupt or truncated: {one_line(exc)}") from exc
        image = image.convert("RGB")
        if image.size != want:
            image = image.resize(want, Image.Resampling.LANCZOS)
        array = np.asarray(image)
    finally:
        image.close()
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous().float().div(255)


def _orientation(image: Any) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
        return int(value) if value in range(1, 9) else 1
    except Exception:
        return 1


class DecodeSet:
    """Item i is task i decoded (or its one-line error), ready for the metrics."""

    def __init__(self, tasks: Sequence[Task], max_side: int, musiq_opts: dict | None) -> None:
        self.tasks = tasks
        self.max_side = max_side
        self.musiq_opts = musiq_opts

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        task = self.tasks[index]
        try:
            image = decode(task.path, self.max_side)
        except ImageError as exc:
            return {"index": index, "error": str(exc)}
        except Exception as exc:  # any decoder failure is a reason, not a crash
            return {"index": index, "error": f"unreadable: {one_line(exc)}"}
        item: dict[str, Any] = {"index": index, "image": image}
        if self.musiq_opts is not None:
            from .metrics import musiq_patches

            item["patches"] = musiq_patches(image, self.musiq_opts)
        return item
