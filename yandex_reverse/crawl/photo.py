"""The photo file before upload: checked with Pillow, re-encoded under the upload limit."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .. import console
from ..i18n import _


def check_image(path: Path) -> str | None:
    """None if ``path`` is a readable image, else a one-line reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return _("empty file (0 bytes)")
        with Image.open(path) as im:
            im.verify()
    except UnidentifiedImageError:
        return _("not an image (Pillow cannot identify it)")
    except Image.DecompressionBombError as exc:
        return _("refused: {reason}").format(reason=console.one_line(exc))
    except (OSError, SyntaxError, ValueError) as exc:
        return _("unreadable image: {reason}").format(reason=console.one_line(exc))
    return None


def reencode_under(path: Path, limit: int, folder: Path) -> Path:
    """A temporary JPEG copy of ``path`` under ``limit`` bytes (the original untouched)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        picture = im.convert("RGB")
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".jpg", dir=folder)
    os.close(fd)
    target = Path(name)
    quality = 90
    while True:
        picture.save(target, "JPEG", quality=quality, optimize=True)
        if target.stat().st_size < limit:
            return target
        if quality > 60:
            quality -= 15
        else:
            width, height = picture.size
            picture = picture.resize((max(1, width * 3 // 4), max(1, height * 3 // 4)))
