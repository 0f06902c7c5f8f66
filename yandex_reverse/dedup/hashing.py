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

from ..imageinfo import ImageError, exif_orientation, open_image

TYPE_CHECKING = False  # typing's, without importing typing (exact mode's start counts)
if TYPE_CHECKING:
    import sqlite3
    from types import ModuleType

# Pillow's EXIF/ICC chatter ("Corrupt EXIF data"): real failures raise. Set
# once for the process (a ``catch_warnings`` per call is not thread-safe).
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")

METHODS = ("phash", "dhash", "ahash", "whash")
HEAD = 4096  # the first block: what jdupes compares before it hashes whole files
READ_BUFFER = 4 << 20  # the rest of a file is read in one call up to this size
_OPEN_AT_ONCE = 64  # files of one group kept open between their head and their rest
_READ = os.O_RDONLY | getattr(os, "O_BINARY", 0)
_PREADV = getattr(os, "preadv", None)  # Unix; elsewhere lseek and readv/read


# ----------------------------------------------------------------- bytes


def identical_files(
    paths: list[str], size: int, buffer: bytearray | None = None
) -> tuple[list[list[int]], list[tuple[int, OSError]]]:
    """Which of ``paths`` (all ``size`` bytes, as scanned) hold the same bytes.

    Returns the groups of two or more (as indices into ``paths``) and the
    files that could not be read. Like jdupes: the first 4 KiB of each file
    first, compared byte for byte; only files whose first block ties with
    another's are read on, and then only from where the first block ended
    (each byte is read once), their rest compared by xxh3_128. A small group
    keeps its files open between the two reads; a big one opens them again,
    so that a folder of thousands of same-size files never runs out of file
    descriptors. A file read in full in the first block (up to 4 KiB) is
    never opened again.

    First blocks are sorted into buckets by their xxh3_64 (a dict keyed by
    the 4 KiB bytes themselves spent most of its time in Python's SipHash of
    each key), then compared byte for byte within a bucket. Two files tied
    on their first block (the usual duplicate) are compared byte for byte
    rather than hashed (:func:`_same_pair`). ``buffer``: a scratch buffer the
    rests are read into (one per thread, reused from group to group: a fresh
    ``bytes`` per file costs an allocation and its page faults); made here
    when not given.
    """
    errors: list[tuple[int, OSError]] = []
    keep_open = len(paths) <= _OPEN_AT_ONCE and size > HEAD
    # xxh3_64 of the first block -> [(first block, [(index, fd), ...]), ...]
    buckets: dict[int, list[tuple[bytes, list[tuple[int, int]]]]] = {}
    # A few files share one bucket: comparing their blocks costs less than hashing them.
    head_key = _one_bucket if len(paths) <= _FEW else _xxhash().xxh3_64_intdigest
    for index, path in enumerate(paths):
        try:
            fd = os.open(path, _READ)
        except OSError as exc:
            errors.append((index, exc))
            continue
        try:
            head = os.read(fd, HEAD)
            while len(head) < min(size, HEAD) and (more := os.read(fd, HEAD - len(head))):
                head += more  # a short read (not on local files): the block must be whole
        except OSError as exc:
            os.close(fd)
            errors.append((index, exc))
            continue
        if not keep_open:
            os.close(fd)
            fd = -1
        key = head_key(head)
        bucket = buckets.get(key)
        if bucket is None:
            buckets[key] = [(head, [(index, fd)])]
            continue
        for known, members in bucket:
            if known == head:
                members.append((index, fd))
                break
        else:
            bucket.append((head, [(index, fd)]))
    groups: list[list[int]] = []
    for bucket in buckets.values():
        for _head, tied in bucket:
            if len(tied) == 1 or size <= HEAD:
                for _index, fd in tied:
                    if fd >= 0:
                        os.close(fd)
                if len(tied) > 1:
                    groups.append([index for index, _fd in tied])
                continue
            if buffer is None:
                buffer = bytearray(min(2 * (size - HEAD + 1), READ_BUFFER))
            if len(tied) == 2 and 2 * (size - HEAD + 1) <= len(buffer):
                same = _same_pair(paths, tied, size, buffer, errors)
                if same is not None:
                    if same:
                        groups.append([index for index, _fd in tied])
                    continue
                tied = [(index, -1) for index, _fd in tied]  # closed there: opened again
            rests: dict[bytes, list[int]] = {}
            for index, fd in tied:
                try:
                    digest = _rest_hash(paths[index], fd, size, buffer)
                except OSError as exc:
                    errors.append((index, exc))
                    continue
                rests.setdefault(digest, []).append(index)
            groups.extend(same for same in rests.values() if len(same) > 1)
    return groups, errors


_FEW = 4  # size groups this small put every first block in one bucket


def _one_bucket(_head: bytes) -> int:
    return 0


def _same_pair(
    paths: list[str],
    tied: list[tuple[int, int]],
    size: int,
    buffer: bytearray,
    errors: list[tuple[int, OSError]],
) -> bool | None:
    """Do the two files of ``tied`` (same size, same first block) hold the same rest?

    Two files need no hash: each rest is read in one read (the rest and a
    byte more, to see a file that grew) into its half of ``buffer``, and the
    two are compared byte for byte: a third of the work of hashing both.
    None when a file has grown since the scan: the caller hashes them, as it
    does larger groups. A file that cannot be read goes to ``errors``. Both
    descriptors are closed here, whatever the answer.
    """
    want = size - HEAD
    view = memoryview(buffer)
    halves = (view[: want + 1], view[want + 1 : 2 * want + 2])
    reads = []
    for (index, fd), into in zip(tied, halves, strict=True):
        try:
            if fd < 0:
                fd = os.open(paths[index], _READ)
            try:
                reads.append(_pread_into(fd, into, HEAD))
            finally:
                os.close(fd)
        except OSError as exc:
            errors.append((index, exc))
            reads.append(-1)
    got, got_other = reads
    if got < 0 or got_other < 0:
        return False
    if got > want or got_other > want:  # grown since the scan
        return None
    # startswith compares in place (memcmp); a slice of each half would copy both first
    return got == got_other and buffer.startswith(halves[1][:got])


def _rest_hash(path: str, fd: int, size: int, buffer: bytearray) -> bytes:
    """xxh3_128 of the file from byte 4096 on (``fd`` is open already, or -1).

    Read with ``preadv`` into ``buffer``: one read when the rest and a byte
    more fit (the byte more sees a file that grew), else in buffer-sized
    pieces.
    """
    xxhash = _xxhash()
    if fd < 0:
        fd = os.open(path, _READ)
    try:
        view = memoryview(buffer)
        want = size - HEAD
        if want < len(buffer):
            got = _pread_into(fd, view[: want + 1], HEAD)
            if got <= want:
                return xxhash.xxh3_128_digest(view[:got])
            offset, digest = HEAD + got, xxhash.xxh3_128(view[:got])
        else:
            offset, digest = HEAD, xxhash.xxh3_128()
        while got := _pread_into(fd, view, offset):
            digest.update(view[:got])
            offset += got
        return digest.digest()
    finally:
        os.close(fd)


def _xxhash() -> ModuleType:
    """``xxhash``, imported at the first group that needs a hash: groups of up
    to four files whose first blocks tie two by two (the usual duplicates)
    are compared byte for byte and never need it (0.4 ms of a start)."""
    import xxhash

    return xxhash


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Bytes read into ``view`` from ``offset`` (``os.preadv`` where it exists)."""
    if _PREADV is not None:
        return _PREADV(fd, [view], offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.readv(fd, [view]) if hasattr(os, "readv") else _read_copy(fd, view)


def _read_copy(fd: int, view: memoryview) -> int:
    block = os.read(fd, len(view))
    view[: len(block)] = block
    return len(block)


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
