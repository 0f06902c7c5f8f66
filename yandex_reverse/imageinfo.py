"""Which files are images, and opening them safely: shared by steps 5-7.

* Only the formats the project accepts reach Pillow (``Image.open(formats=...)``):
  a file whose content is EPS, PDF or another format outside the list is
  refused whatever its name says.
* The pixel guard reads the size from the header and refuses an image above
  the limit, per call, before any pixel is decoded. It keeps no process-wide
  state (no ``warnings.catch_warnings``, which is not thread-safe, and no
  change to ``Image.MAX_IMAGE_PIXELS``), so any number of threads may open
  images at once and every bomb is refused. Pillow's own check stays on
  behind ours (``DecompressionBombError`` above twice its limit).
* Sizes come from headers (no pixel decode) with the EXIF orientation
  applied, so a portrait photo stored sideways counts as portrait.
"""

from __future__ import annotations

import functools
import operator
import os
import warnings
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

from .i18n import _

TYPE_CHECKING = False  # typing's, without importing typing at every start
if TYPE_CHECKING:
    from PIL import Image as PILImage

# Pillow is imported on first use, not with this module: Pillow and its
# plugin registry cost more than a whole exact-mode run of step 6 (which
# needs only the extensions below).

# Extension -> Pillow format, for every format the project accepts: Pillow's
# readable formats (its registry, Pillow 13) less those that are not photos
# users collect or that run external tools (EPS/PS run Ghostscript; PDF,
# FITS, HDF5, GRIB, BUFR, MPEG, WMF/EMF). tests/test_imageinfo.py checks
# this table against the installed Pillow's registry.
EXTENSION_FORMATS: dict[str, str] = {
    ".apng": "PNG", ".avif": "AVIF", ".avifs": "AVIF", ".blp": "BLP", ".bmp": "BMP",
    ".bw": "SGI", ".cur": "CUR", ".dcx": "DCX", ".dds": "DDS", ".dib": "DIB", ".flc": "FLI",
    ".fli": "FLI", ".ftc": "FTEX", ".ftu": "FTEX", ".gbr": "GBR", ".gif": "GIF", ".icb": "TGA",
    ".icns": "ICNS", ".ico": "ICO", ".iim": "IPTC", ".im": "IM", ".j2c": "JPEG2000",
    ".j2k": "JPEG2000", ".jfif": "JPEG", ".jp2": "JPEG2000", ".jpc": "JPEG2000", ".jpe": "JPEG",
    ".jpeg": "JPEG", ".jpf": "JPEG2000", ".jpg": "JPEG", ".jpx": "JPEG2000", ".msp": "MSP",
    ".pbm": "PPM", ".pcd": "PCD", ".pcx": "PCX", ".pfm": "PPM", ".pgm": "PPM", ".png": "PNG",
    ".pnm": "PPM", ".ppm": "PPM", ".psd": "PSD", ".pxr": "PIXAR", ".qoi": "QOI", ".ras": "SUN",
    ".rgb": "SGI", ".rgba": "SGI", ".sgi": "SGI", ".tga": "TGA", ".tif": "TIFF", ".tiff": "TIFF",
    ".vda": "TGA", ".vst": "TGA", ".webp": "WEBP", ".xbm": "XBM", ".xpm": "XPM",
}  # fmt: skip
# Readable by Pillow but refused (see above); the test keeps both lists true.
EXCLUDED_FORMATS = frozenset({"EPS", "PDF", "FITS", "HDF5", "GRIB", "BUFR", "MPEG", "WMF"})
# The extensions every step agreed on (the originals disagreed: 7.1 had no
# webp, 7.3 no gif); the rest of the table comes on top.
COMMON_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
IMAGE_EXTENSIONS: frozenset[str] = COMMON_EXTENSIONS | frozenset(EXTENSION_FORMATS)
# The Pillow openers a file may reach (by content, whatever its name). The
# JPEG opener also returns MPO (camera multi-picture files).
ACCEPTED_FORMATS: tuple[str, ...] = tuple(sorted(set(EXTENSION_FORMATS.values())))
# The formats a web photo comes in: what step 5 stores.
WEB_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

# Pillow's default limit (its ``MAX_IMAGE_PIXELS``), about 89 megapixels: a
# 1 GB RGB decode. A caller may pass its own per call.
MAX_PIXELS = 89_478_485

_BY_NAME = operator.attrgetter("name")  # a sort key in C: no Python call per file

# EXIF orientations 5-8 swap width and height.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


@functools.cache
def _pil() -> ModuleType:
    """PIL.Image, imported once. Pillow warns between its limit and twice it;
    we refuse those ourselves, by size, so the warning is noise (on stderr,
    once per place). This filter only silences it: no decision depends on it."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    Image.init()
    return Image


@functools.cache
def _openable(formats: tuple[str, ...]) -> list[str]:
    """``formats`` this Pillow build can open (AVIF needs libavif, for one)."""
    return [f for f in formats if f in _pil().OPEN]


class ImageError(Exception):
    """An image that cannot be used, with a one-line reason."""


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def iter_images(
    root: Path,
    *,
    recursive: bool = True,
    exclude: Iterable[Path] = (),
    skip_dir: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """Image files under ``root`` in a stable (sorted) order.

    Hidden files and folders, the ``exclude`` folders (a step's own output
    or quarantine inside the source) and subfolders for which ``skip_dir``
    says so are skipped.
    """
    for entry in iter_image_entries(root, recursive=recursive, exclude=exclude, skip_dir=skip_dir):
        yield Path(entry.path)


def iter_image_entries(
    root: Path,
    *,
    recursive: bool = True,
    exclude: Iterable[Path] = (),
    skip_dir: Callable[[Path], bool] | None = None,
) -> Iterator[os.DirEntry[str]]:
    """:func:`iter_images` as ``os.DirEntry`` objects (their ``stat`` and
    ``is_symlink`` need no path parsing: step 6 scans 20,000 files with them)."""
    excluded = {Path(p).resolve() for p in exclude}
    if Path(root).resolve() in excluded:
        return
    extensions = IMAGE_EXTENSIONS
    stack = [os.fspath(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=_BY_NAME)
        except OSError:
            continue
        subdirs: list[str] = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        sub = Path(entry.path)
                        if sub.resolve() not in excluded and not (skip_dir and skip_dir(sub)):
                            subdirs.append(entry.path)
                elif name[name.rfind(".") :].lower() in extensions and entry.is_file():
                    yield entry
            except OSError:
                continue
        stack.extend(reversed(subdirs))  # depth first, in name order, as before


class ImageInfo(namedtuple("ImageInfo", ("width", "height", "format", "mode", "orientation"))):
    """What a header says: displayed size (EXIF applied), format, mode.

    Not a dataclass nor a typing.NamedTuple: see cli.Command."""

    __slots__ = ()
    width: int
    height: int
    format: str | None
    mode: str
    orientation: int  # EXIF orientation, 1 when absent

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1_000_000


def exif_orientation(image: PILImage.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if value in range(1, 9) else 1
    except Exception:
        return 1


def check_pixels(size: tuple[int, int], max_pixels: int | None = MAX_PIXELS) -> None:
    """Refuse a size above ``max_pixels`` (``None``: no limit of ours) as a bomb."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            _(
                "refused as a decompression bomb: {width}x{height} = {pixels} pixels, limit {limit}"
            ).format(width=width, height=height, pixels=width * height, limit=max_pixels)
        )


def open_image(
    source: Path | str | object,
    *,
    max_pixels: int | None = MAX_PIXELS,
    formats: Sequence[str] | None = ACCEPTED_FORMATS,
) -> PILImage.Image:
    """``Image.open`` of a path or binary file object, header only, guarded.

    Only ``formats`` reach Pillow; an image whose header size is above
    ``max_pixels`` is refused before its pixels are decoded. Every failure is
    an :class:`ImageError` with a one-line reason. The caller decides how
    much to decode (and closes the image).
    """
    Image = _pil()
    allowed = _openable(tuple(formats)) if formats is not None else None
    try:
        image = Image.open(source, formats=allowed)  # type: ignore[arg-type]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception only where some code turned
        # warnings into errors; it is a refusal either way (above Pillow's limit).
        raise ImageError(
            _("refused as a decompression bomb: {reason}").format(reason=one_line(exc))
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(_("not an image Pillow can read")) from exc
    except FileNotFoundError as exc:
        raise ImageError(_("file not found")) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(_("unreadable: {reason}").format(reason=one_line(exc))) from exc
    try:
        check_pixels(image.size, max_pixels)
    except ImageError:
        image.close()
        raise
    return image


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception as one short line (its text, else its type)."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def read_info(path: Path, *, max_pixels: int | None = MAX_PIXELS) -> ImageInfo:
    """Size from the header only, EXIF orientation applied. Raises :class:`ImageError`."""
    image = open_image(path, max_pixels=max_pixels)
    try:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageError(_("invalid size {width}x{height}").format(width=width, height=height))
        orientation = exif_orientation(image)
        if orientation in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        return ImageInfo(width, height, image.format, image.mode, orientation)
    except ImageError:
        raise
    except Exception as exc:  # broken EXIF and the like
        raise ImageError(_("unreadable header: {reason}").format(reason=one_line(exc))) from exc
    finally:
        image.close()


def verify_image(path: Path, *, max_pixels: int | None = MAX_PIXELS) -> None:
    """Fully decode the image; raises :class:`ImageError` for truncated or corrupt data."""
    image = open_image(path, max_pixels=max_pixels)
    try:
        image.load()
    except Exception as exc:
        raise ImageError(_("corrupt or truncated: {reason}").format(reason=one_line(exc))) from exc
    finally:
        image.close()


# ------------------------------------------------------ many headers at once


def _info_or_reason(path: Path) -> ImageInfo | str:
    try:
        return read_info(path)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # one odd file never stops the run
        return _("unreadable: {reason}").format(reason=f"{type(exc).__name__}: {one_line(exc)}")


def _info_chunk(paths: list[Path]) -> list[ImageInfo | str]:
    return [_info_or_reason(path) for path in paths]


# Between processes: plain strings and tuples pickle ~10x faster than Path
# objects and dataclasses, which mattered at thousands of files per second.
_Packed = tuple[int, int, str | None, str, int] | str


def _indexed_chunk(job: tuple[int, list[str]]) -> tuple[int, list[_Packed]]:
    index, names = job
    return index, [
        (i.width, i.height, i.format, i.mode, i.orientation) if isinstance(i, ImageInfo) else i
        for i in _info_chunk([Path(name) for name in names])
    ]


def _ignore_sigint() -> None:
    # Ctrl-C is handled once, by the parent, which cancels the rest.
    import signal  # here: its enums cost a quick step's start (step 6 exact) 3 M instructions

    signal.signal(signal.SIGINT, signal.SIG_IGN)


# Below this many files a process pool costs more to start than it saves.
PARALLEL_FROM = 400


def read_infos(
    paths: Sequence[Path],
    *,
    workers: int | None = None,
    advance: Callable[[int], None] | None = None,
) -> list[ImageInfo | str]:
    """:func:`read_info` of many files, in order: an :class:`ImageInfo` or a one-line reason.

    Header parsing is Python work that holds the GIL (threads measured slower
    than one thread, see ``bench/bench_sorting.py``), so chunks of files go
    to worker processes, one per core.
    """
    paths = list(paths)
    workers = workers or os.cpu_count() or 1
    step = advance or (lambda _n: None)
    if workers <= 1 or len(paths) < PARALLEL_FROM:
        results: list[ImageInfo | str] = []
        for path in paths:
            results.append(_info_or_reason(path))
            step(1)
        return results
    size = max(16, min(512, len(paths) // (workers * 8)))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    done: list[list[ImageInfo | str] | None] = [None] * len(chunks)
    import multiprocessing

    try:
        # multiprocessing.Pool rather than ProcessPoolExecutor: its workers are
        # daemons and leaving the block terminates them, so Ctrl-C at any
        # moment (even while they start) cannot leave the parent waiting on them.
        with multiprocessing.Pool(workers, initializer=_ignore_sigint) as pool:
            jobs = ((i, [str(p) for p in chunk]) for i, chunk in enumerate(chunks))
            for index, packed in pool.imap_unordered(_indexed_chunk, jobs):
                done[index] = [x if isinstance(x, str) else ImageInfo(*x) for x in packed]
                step(len(packed))
    except OSError:  # no processes here: finish in this one
        for index, chunk in enumerate(chunks):
            if done[index] is None:
                done[index] = _info_chunk(chunk)
                step(len(chunk))
    return [info for chunk_infos in done for info in chunk_infos or ()]
