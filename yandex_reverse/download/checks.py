"""What a received body must pass to be stored: signature, not text, a real image.

Pure functions, no I/O beyond the body itself: safe to call in any thread or
process (a worker on another machine checks the same way).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError

from ..console import one_line
from ..imageinfo import MAX_PIXELS, WEB_FORMATS, ImageError, check_pixels, open_image

# Formats Pillow reports -> (extension, MIME type).
FORMAT_FILES: dict[str, tuple[str, str]] = {
    "JPEG": (".jpg", "image/jpeg"),
    "MPO": (".jpg", "image/jpeg"),
    "PNG": (".png", "image/png"),
    "GIF": (".gif", "image/gif"),
    "WEBP": (".webp", "image/webp"),
    "BMP": (".bmp", "image/bmp"),
    "TIFF": (".tif", "image/tiff"),
    "ICO": (".ico", "image/x-icon"),
    "AVIF": (".avif", "image/avif"),
    "HEIF": (".heic", "image/heic"),
}
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"GIF87a"),
    (0, b"GIF89a"),
    (8, b"WEBP"),
    (0, b"BM"),
    (0, b"II*\x00"),
    (0, b"MM\x00*"),
    (0, b"\x00\x00\x01\x00"),  # ICO
    (4, b"ftypavif"),
    (4, b"ftypheic"),
    (4, b"ftypmif1"),
)


class FetchFailure(Exception):
    """A URL that did not give a usable image: a short ``reason`` for the summary.

    ``attempts`` and ``received`` are filled in by the fetcher (how many GETs,
    how many body bytes) so a failure carries all the ledger needs.
    """

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        retryable: bool = False,
        http_status: int | None = None,
        content_type: str | None = None,
        retry_after: float | None = None,
        skipped: bool = False,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.retryable = retryable
        self.http_status = http_status
        self.content_type = content_type
        self.retry_after = retry_after
        self.skipped = skipped
        self.attempts = 0
        self.received = 0


def sniff(head: bytes) -> bool:
    """True when the first bytes carry a known image signature."""
    if head.startswith(b"\xff\xd8\xff"):  # JPEG, most of the web: no loop
        return True
    return any(head[offset : offset + len(sig)] == sig for offset, sig in _SIGNATURES)


def looks_like_text(head: bytes, content_type: str) -> str | None:
    """A reason when the body is clearly a page or text rather than an image."""
    stripped = head.lstrip()[:64].lower()
    if stripped.startswith(b"<") and b"<svg" not in stripped:
        return "not an image: HTML page"
    if content_type in ("text/html", "application/xhtml+xml"):
        return "not an image: HTML page"
    if content_type.startswith("text/") or content_type in ("application/json",):
        return f"not an image: {content_type}"
    return None


def refuse_text(head: bytes, content_type: str) -> None:
    """Raise :class:`FetchFailure` when ``head`` is a page or text, not an image."""
    reason = looks_like_text(head, content_type)
    if reason:
        raise FetchFailure(reason, http_status=200, content_type=content_type or None)


def ends_complete(fmt: str, size: int, tail: bytes) -> bool:
    """Does the file end the way a whole file of ``fmt`` ends? (``tail``: its last bytes)."""
    if fmt in ("JPEG", "MPO"):
        return tail.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9"  # EOI, padding allowed
    if fmt == "PNG":
        return tail.endswith(b"IEND\xaeB`\x82")
    if fmt == "GIF":
        return tail.rstrip(b"\x00")[-1:] == b";"
    return False  # WebP is checked against its RIFF size; other formats are decoded


def inspect_image(source: bytes | Path) -> tuple[str, int, int]:
    """(Pillow format, width, height), or :class:`FetchFailure` with the reason.

    Pillow reads the header (only :data:`WEB_FORMATS`; above
    :data:`~yandex_reverse.imageinfo.MAX_PIXELS` it is a bomb, checked per call
    with no process-wide state, so threads cannot disturb each other); a file that ends
    as a whole file of its format ends (JPEG EOI, PNG IEND, GIF trailer, WebP
    RIFF size) is accepted without decoding. Anything else is decoded (JPEGs at
    1/8 scale, which still reads every byte of the scan), so a truncated file
    fails while a JPEG with data after its end (motion photos) passes.
    """
    if isinstance(source, bytes):
        handle: IO[bytes] | Path = io.BytesIO(source)
        size, tail, riff = len(source), source[-64:], source[4:8]
    else:
        handle = source
        size = source.stat().st_size
        with source.open("rb") as fh:
            riff = fh.read(8)[4:8]
            fh.seek(max(0, size - 64))
            tail = fh.read()
    try:
        # Only the web formats reach Pillow (an EPS sent as image/jpeg never meets
        # the EPS decoder); the pixel limit is checked here, per call, from the header.
        image = open_image(handle, max_pixels=None, formats=WEB_FORMATS)
    except ImageError as exc:
        if isinstance(exc.__cause__, UnidentifiedImageError):
            raise FetchFailure("not an image: unrecognised content") from exc
        if isinstance(
            exc.__cause__, (Image.DecompressionBombError, Image.DecompressionBombWarning)
        ):
            raise FetchFailure("refused: decompression bomb", one_line(exc, 120)) from exc
        raise FetchFailure("broken image", one_line(exc, 120)) from exc
    try:
        with image:
            fmt = image.format or ""
            width, height = image.size
            if width <= 0 or height <= 0:
                raise FetchFailure("broken image", f"size {width}x{height}")
            try:
                check_pixels((width, height), MAX_PIXELS)
            except ImageError as exc:
                raise FetchFailure("refused: decompression bomb", one_line(exc, 120)) from exc
            complete = ends_complete(fmt, size, tail)
            if fmt == "WEBP":
                complete = int.from_bytes(riff, "little") + 8 == size
            if not complete:
                if fmt in ("JPEG", "MPO"):
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
    except FetchFailure:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FetchFailure("refused: decompression bomb", one_line(exc, 120)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise FetchFailure("broken image", one_line(exc, 120)) from exc
    return fmt, width, height


def file_type(fmt: str) -> tuple[str, str]:
    """(extension, MIME type) of a Pillow format."""
    return FORMAT_FILES.get(fmt, (f".{fmt.lower() or 'img'}", f"image/{fmt.lower()}"))
