"""Image files on disk, shared by steps 5-7: walking folders, reading sizes
safely, sidecars, and moving or copying without ever overwriting.

Pillow's decompression-bomb guard stays on: a refused image is a reason, not a
crash. Sizes come from headers (no pixel decode) with the EXIF orientation
applied, so a portrait photo stored sideways counts as portrait.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# The formats every step accepts (the originals disagreed: 7.1 had no webp,
# 7.3 no gif). Pillow's other readable formats are added below.
COMMON_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
# Readable by Pillow but not photos users collect, or needing external tools.
_EXCLUDED = frozenset(
    {
        ".eps",
        ".ps",
        ".pdf",
        ".fit",
        ".fits",
        ".h5",
        ".hdf",
        ".grib",
        ".bufr",
        ".mpeg",
        ".mpg",
        ".emf",
        ".wmf",
    }
)


def _pillow_extensions() -> frozenset[str]:
    Image.init()
    return frozenset(
        ext.lower()
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and ext.lower() not in _EXCLUDED
    )


IMAGE_EXTENSIONS: frozenset[str] = COMMON_EXTENSIONS | _pillow_extensions()
# Files that travel with an image of the same stem (step 5 writes .txt).
SIDECAR_EXTENSIONS = (".txt", ".json", ".xmp")

# EXIF orientations 5-8 swap width and height.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


class ImageError(Exception):
    """An image that cannot be used, with a one-line reason."""


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def iter_images(
    root: Path, *, recursive: bool = True, exclude: Iterable[Path] = ()
) -> Iterator[Path]:
    """Image files under ``root`` in a stable (sorted) order.

    Hidden files and folders and the ``exclude`` folders (a step's own output
    or quarantine inside the source) are skipped.
    """
    root = Path(root)
    excluded = {Path(p).resolve() for p in exclude}
    if root.resolve() in excluded:
        return
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    subdirs: list[Path] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                if recursive and path.resolve() not in excluded:
                    subdirs.append(path)
            elif entry.is_file() and is_image(path):
                yield path
        except OSError:
            continue
    for sub in subdirs:
        yield from iter_images(sub, recursive=True, exclude=excluded)


@dataclass(frozen=True)
class ImageInfo:
    """What a header says: displayed size (EXIF applied), format, mode."""

    width: int
    height: int
    format: str | None
    mode: str
    orientation: int  # EXIF orientation, 1 when absent

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1_000_000


def exif_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if value in range(1, 9) else 1
    except Exception:
        return 1


def open_image(path: Path) -> Image.Image:
    """``Image.open`` with every failure (bomb guard included) as :class:`ImageError`.

    The pixels are not decoded yet; the caller decides how much to decode.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image Pillow can read") from exc
    except FileNotFoundError as exc:
        raise ImageError("file not found") from exc
    except OSError as exc:
        raise ImageError(f"unreadable: {exc}") from exc


def read_info(path: Path) -> ImageInfo:
    """Size from the header only, EXIF orientation applied. Raises :class:`ImageError`."""
    image = open_image(path)
    try:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageError(f"invalid size {width}x{height}")
        orientation = exif_orientation(image)
        if orientation in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        return ImageInfo(width, height, image.format, image.mode, orientation)
    except ImageError:
        raise
    except Exception as exc:  # broken EXIF and the like
        raise ImageError(f"unreadable header: {exc}") from exc
    finally:
        image.close()


def verify_image(path: Path) -> None:
    """Fully decode the image; raises :class:`ImageError` for truncated or corrupt data."""
    image = open_image(path)
    try:
        image.load()
    except Exception as exc:
        raise ImageError(f"corrupt or truncated: {exc}") from exc
    finally:
        image.close()


def sidecars_of(path: Path) -> list[Path]:
    """Files next to ``path`` with the same stem and a sidecar extension."""
    return [
        side
        for ext in SIDECAR_EXTENSIONS
        if (side := path.with_suffix(ext)) != path and side.is_file()
    ]


# ----------------------------------------------------------- placing files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name in the same folder, then rename.

    The file gets the usual permissions (``mkstemp`` alone would leave 0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def same_content(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _claim(target: Path, source: Path, *, copy: bool) -> bool:
    """Put ``source`` at ``target`` only if ``target`` is free (never overwrites).

    A hard link is atomic and fails if the name exists. A move links the
    source itself (same file system); a copy, or a move across file systems,
    copies the data to a temporary name first and links that.
    """
    if not copy:
        try:
            os.link(source, target)
            return True
        except FileExistsError:
            return False
        except OSError:
            pass
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        shutil.copy2(source, tmp)
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        except OSError:
            # No hard links at all (some network/FAT file systems): exclusive create.
            try:
                with open(target, "xb") as out, open(tmp, "rb") as src:
                    shutil.copyfileobj(src, out)
                shutil.copystat(tmp, target)
                return True
            except FileExistsError:
                return False
    finally:
        Path(tmp).unlink(missing_ok=True)


@dataclass(frozen=True)
class Placed:
    """Where a file went. ``status``: moved, copied, already (identical file there)."""

    source: Path
    target: Path
    status: str
    sidecars: tuple[Path, ...] = ()


def _free_targets(dest_dir: Path, name: str) -> Iterator[Path]:
    stem, suffix = os.path.splitext(name)
    yield dest_dir / name
    counter = 1
    while True:
        yield dest_dir / f"{stem}_{counter}{suffix}"
        counter += 1


def place_file(source: Path, dest_dir: Path, *, mode: str, dry_run: bool = False) -> Placed:
    """Move or copy ``source`` (and its sidecars) into ``dest_dir``, never overwriting.

    Re-runnable: if a file with identical content already sits under the same
    name (or a ``_N`` variant of it), nothing is copied again; a move then just
    removes the source, whose content is safe at the target. A different file
    under the same name gets the next free ``name_N``.
    """
    if mode not in ("move", "copy"):
        raise ValueError(f"mode must be move or copy, not {mode!r}")
    dest_dir = Path(dest_dir)
    for candidate in _free_targets(dest_dir, source.name):
        if candidate.exists():
            if same_content(source, candidate):
                if not dry_run and mode == "move" and candidate.resolve() != source.resolve():
                    sides = _place_sidecars(source, candidate, mode)
                    source.unlink()
                    return Placed(source, candidate, "already", sides)
                return Placed(source, candidate, "already")
            continue
        if dry_run:
            return Placed(source, candidate, "moved" if mode == "move" else "copied")
        dest_dir.mkdir(parents=True, exist_ok=True)
        if not _claim(candidate, source, copy=mode == "copy"):
            continue  # another worker took the name a moment ago
        sides = _place_sidecars(source, candidate, mode)
        if mode == "move":
            source.unlink()
            return Placed(source, candidate, "moved", sides)
        return Placed(source, candidate, "copied", sides)
    raise AssertionError("unreachable")


def _place_sidecars(source: Path, target: Path, mode: str) -> tuple[Path, ...]:
    placed: list[Path] = []
    for side in sidecars_of(source):
        side_target = target.with_suffix(side.suffix)
        if side_target.exists():
            if same_content(side, side_target):
                if mode == "move":
                    side.unlink()
                placed.append(side_target)
            continue  # never overwrite a sidecar that says something else
        if mode == "move":
            try:
                os.link(side, side_target)
                side.unlink()
            except OSError:
                shutil.move(side, side_target)
        else:
            shutil.copy2(side, side_target)
        placed.append(side_target)
    return tuple(placed)
