"""File and picture fingerprints: xxHash for bytes, imagehash for pictures, a SQLite cache.

Perceptual hashes are imagehash's own functions applied to the decoded
picture, so values equal imagehash's for the same pixels. What is made
cheap is the decoding: a JPEG is decoded at reduced scale (libjpeg's DCT
scaling, grey only, at least 32 x hash size pixels a side) because the hash
looks at a 32x32 picture at most. That changes a hash by a bit or two on some
photos (measured in docs/architecture.md, bounded in the tests);
``draft=False`` decodes in full and equals imagehash bit for bit.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from ..imageinfo import ImageError, exif_orientation, open_image

if TYPE_CHECKING:
    import sqlite3

# Pillow's EXIF/ICC chatter ("Corrupt EXIF data"): real failures raise. Set
# once for the process (a ``catch_warnings`` per call is not thread-safe).
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")

METHODS = ("phash", "dhash", "ahash", "whash")
EDGE_BLOCK = 4096
_CHUNK = 1 << 20
WHOLE_AT_ONCE = 256 << 10  # up to this size a file is hashed whole, without edges first
_READ = os.O_RDONLY | getattr(os, "O_BINARY", 0)


# ----------------------------------------------------------------- bytes


def edge_hash(path: str | Path, size: int) -> bytes:
    """xxh3 of the first and last 4 KiB: cheap, and separates most same-size files."""
    fd = os.open(path, _READ)
    try:
        head = os.pread(fd, EDGE_BLOCK, 0)
        if size > EDGE_BLOCK:
            head += os.pread(fd, EDGE_BLOCK, max(EDGE_BLOCK, size - EDGE_BLOCK))
    finally:
        os.close(fd)
    return xxhash.xxh3_64_digest(head)


def full_hash(path: str | Path) -> bytes:
    """xxh3_128 of the whole file: plain ``os.read`` calls, no file object
    (at 20,000 small files the objects cost more than the reading)."""
    digest = xxhash.xxh3_128()
    fd = os.open(path, _READ)
    try:
        while block := os.read(fd, _CHUNK):
            digest.update(block)
    finally:
        os.close(fd)
    return digest.digest()


# -------------------------------------------------------------- pictures


def _hash_function(method: str):  # imported lazily: exact mode needs no numpy/scipy
    import imagehash

    return {
        "phash": imagehash.phash,
        "dhash": imagehash.dhash,
        "ahash": imagehash.average_hash,
        "whash": imagehash.whash,
    }[method]


def perceptual_hash(
    path: str, method: str, hash_size: int, draft: bool
) -> tuple[bytes | None, int, int, str | None]:
    """``(hash bytes, width, height, error)`` for one picture; never raises.

    Width and height are the displayed size (EXIF orientation applied), read
    before the reduced decode. The EXIF orientation is applied to the pixels
    before hashing, so a rotated copy hashes like its original.
    """
    import numpy as np
    from PIL import Image, ImageOps

    try:
        image = open_image(Path(path))
    except ImageError as exc:
        return None, 0, 0, str(exc)
    try:
        with image:
            width, height = image.size
            orientation = exif_orientation(image)
            if draft and image.format in ("JPEG", "MPO"):
                # 1/4 scale for 1-3 MP photos: as fast as 1/8 (Huffman decoding
                # dominates) and half the bit differences (docs/architecture.md).
                side = 32 * hash_size
                image.draft("L", (side, side))
            image.load()
            upright = ImageOps.exif_transpose(image)
            value = _hash_function(method)(upright, hash_size=hash_size)
    except Image.DecompressionBombError as exc:
        return None, 0, 0, f"refused as a decompression bomb: {exc}"
    except Exception as exc:  # truncated data, broken EXIF, odd modes
        text = " ".join(str(exc).split())[:160] or type(exc).__name__
        return None, 0, 0, f"corrupt or truncated: {text}"
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return np.packbits(value.hash.flatten()).tobytes(), width, height, None


# ----------------------------------------------------------------- cache


class HashCache:
    """Perceptual hashes kept in ``<folder>/.dedup_cache.sqlite``.

    Keyed by relative path, method, hash size and decode mode; valid while the
    file's size and mtime_ns are unchanged. A folder that cannot hold the
    cache (read-only) just runs without one.
    """

    NAME = ".dedup_cache.sqlite"

    def __init__(self, root: Path, method: str, hash_size: int, draft: bool, enabled: bool = True):
        import sqlite3  # here: exact mode has no cache

        self.key = (method, hash_size, "draft" if draft else "full")
        self.conn: sqlite3.Connection | None = None
        self.error: str | None = None
        if not enabled:
            return
        try:
            self.conn = sqlite3.connect(root / self.NAME)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS hashes (path TEXT, method TEXT, hash_size INT,"
                " decode TEXT, size INT, mtime_ns INT, hash BLOB, width INT, height INT,"
                " error TEXT, PRIMARY KEY (path, method, hash_size, decode)) WITHOUT ROWID"
            )
            self.conn.commit()
        except sqlite3.Error as exc:
            self.error = f"hash cache unavailable ({exc}); hashing everything"
            self.conn = None

    def load(self) -> dict[str, tuple[int, int, bytes | None, int, int, str | None]]:
        if self.conn is None:
            return {}
        rows = self.conn.execute(
            "SELECT path, size, mtime_ns, hash, width, height, error FROM hashes"
            " WHERE method = ? AND hash_size = ? AND decode = ?",
            self.key,
        )
        return {row[0]: tuple(row[1:]) for row in rows}  # type: ignore[misc]

    def store(
        self, rows: Iterable[tuple[str, int, int, bytes | None, int, int, str | None]]
    ) -> None:
        if self.conn is None:
            return
        try:
            with self.conn:
                self.conn.executemany(
                    "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r[0], *self.key, *r[1:]) for r in rows],
                )
        except Exception as exc:  # sqlite3.Error
            self.error = f"hash cache not written ({exc})"
            self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
