"""Where step 5's files go: names from the content, temporary files, the folder lock,
and :class:`Store`, which settles a checked body (one file per content) on the driver.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..console import StepFailed
from ..fsutil import write_all
from ..i18n import _
from .checks import FetchFailure

if TYPE_CHECKING:
    from .fetch import Candidate, Checked

TEMP_PREFIX = ".dl-"
TEMP_SUFFIX = ".part"
LOCK_NAME = ".download.lock"
DB_LOCK_SUFFIX = ".download.lock"  # .<db name>.download.lock next to the DB
_SAFE = re.compile(r"[^A-Za-z0-9-]+")
# Linux: a file with no name (O_TMPFILE) is written, then linked to its final
# name through /proc/self/fd (linkat with AT_SYMLINK_FOLLOW, no privilege): one
# name created, no temporary name, no rename. Elsewhere, or where the folder's
# file system refuses it, a temporary file and a rename.
_O_TMPFILE: int = getattr(os, "O_TMPFILE", 0)
_FD_DIR = "/proc/self/fd"
_O_BINARY: int = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_NO_TMPFILE = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL, errno.ENOSYS}
)  # no O_TMPFILE in this kernel or file system; errors that say nothing of the disk
_fd_dir: tuple[int, int] | None = None  # (pid, descriptor of /proc/self/fd) of this process
_fd_dir_lock = threading.Lock()


def fd_dir() -> int:
    """This process's open /proc/self/fd (os.link given a folder descriptor calls linkat,
    which follows the /proc link with AT_SYMLINK_FOLLOW; without one it calls link(2),
    which does not). Opened again in a forked child, whose descriptors are its own."""
    global _fd_dir
    held = _fd_dir
    pid = os.getpid()
    if held is not None and held[0] == pid:
        return held[1]
    with _fd_dir_lock:
        if _fd_dir is None or _fd_dir[0] != pid:
            _fd_dir = (pid, os.open(_FD_DIR, os.O_RDONLY | os.O_DIRECTORY))
        return _fd_dir[1]


@dataclass(frozen=True)
class Stored:
    path: str  # as recorded in the ledger
    width: int
    height: int
    mime: str


def safe_id(image_id: str) -> str:
    """The image id as a file-name prefix: no ``_`` (step 6 splits on it), bounded."""
    cleaned = _SAFE.sub("-", image_id).strip("-") or "noid"
    if len(cleaned) > 80:
        digest = hashlib.md5(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = f"{cleaned[:71]}-{digest}"
    return cleaned


def file_name(image_id: str, variant_type: str, width: int, height: int, url: str, ext: str) -> str:
    """``{image_id}_{variant_type}_{W}x{H}_{md5(url)[:8]}{ext}`` in safe characters."""
    digest = hashlib.md5(url.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe_id(image_id)}_{variant_part(variant_type)}_{width}x{height}_{digest}{ext}"


def variant_part(variant_type: str) -> str:
    """The variant type as it appears in a file name."""
    return _SAFE.sub("-", variant_type)[:16] or "variant"


def recorded_path(final: Path, db_dir: Path) -> str:
    """A stored file's path as the ledger records it: relative to the DB's folder if inside."""
    try:
        return final.relative_to(db_dir).as_posix()
    except ValueError:
        return str(final)


def write_file(path: Path, data: bytes | bytearray | memoryview) -> None:
    """``data`` in ``path``, created or emptied: what ``Path.write_bytes`` does, in three
    system calls (open, write, close) where a Python file object adds an fstat, an ioctl
    (is it a terminal?) and an lseek or two."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | _O_BINARY, 0o666)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def temp_path(out: Path, url: str, kind: str = "") -> Path:
    """A temporary name in ``out`` for ``url`` (this process's; never a final name)."""
    digest = hashlib.md5(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return out / f"{TEMP_PREFIX}{digest}-{os.getpid()}{kind}{TEMP_SUFFIX}"


def remove_temp_files(out: Path) -> int:
    """Temporary files a crashed run left (never a final name)."""
    removed = 0
    for path in out.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        with suppress(OSError):
            path.unlink()
            removed += 1
    return removed


@contextmanager
def _exclusive(lock_path: Path, note: str, busy: Callable[[str], str]) -> Iterator[None]:
    """An advisory lock held for the run; ``busy(what the holder wrote)`` is the refusal."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one run at a time by convention
        yield
        return
    with lock_path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            raise StepFailed(busy(handle.read().strip())) from exc
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(note)
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def folder_lock(out: Path) -> contextlib.AbstractContextManager[None]:
    """One download per folder at a time (temp files of a live run are not leftovers)."""
    return _exclusive(
        out / LOCK_NAME,
        f"{os.getpid()}\n",
        lambda _held: _("another download is running into {out}").format(out=out),
    )


def db_claim(db_path: Path, out: Path) -> contextlib.AbstractContextManager[None]:
    """One download per DB at a time, whatever its folder: the ledger decides what is
    fetched, so two runs on one DB would fetch the same URLs into two folders."""
    lock = db_path.resolve().parent / f".{db_path.name}{DB_LOCK_SUFFIX}"

    def busy(held: str) -> str:
        where = held.split("\n", 1)[-1].strip() or _("another folder")
        return _("another download is running from {db} (into {out}); wait for it to end").format(
            db=db_path, out=where
        )

    return _exclusive(lock, f"{os.getpid()}\n{out.resolve()}\n", busy)


def _one_line_value(value: object) -> str:
    return " ".join(str(value).split()) if value not in (None, 0) else ""


def sidecar_text(
    checked: Checked, candidate: Candidate, image_id: str, context: list[tuple[str, object]]
) -> str:
    """The ``.txt`` next to a stored image: where it came from, one ``key: value`` a line."""
    return "".join(
        f"{key}: {_one_line_value(value)}\n"
        for key, value in (
            ("url", candidate.url),
            ("origin_url", candidate.origin_url),
            ("image_id", image_id),
            ("variant_type", candidate.variant_type),
            ("width", checked.width),
            ("height", checked.height),
            ("final_url", checked.body.final_url),
            *context,
        )
    )


class Store:
    """Puts checked bodies under their final names, one file per content (driver side).

    ``known(sha256)`` answers from the ledger whether a file with that content
    is already stored. Two threads with the same content meet at a claim: the
    second waits for the first and records its file. :meth:`forget` drops
    claims once the ledger holds them.
    """

    def __init__(
        self,
        out: Path,
        db_dir: Path,
        known: Callable[[str], Stored | None],
        context: Callable[[str], list[tuple[str, object]]] = lambda image_id: [],
    ) -> None:
        self.out = out.resolve()
        self.db_dir = db_dir
        self.known = known
        self.context = context  # query photo, source page, title: extra sidecar lines
        self.claims: dict[str, concurrent.futures.Future[Stored | None]] = {}
        self.claims_lock = threading.Lock()
        # Unnamed files while they work here; the first refusal turns them off for the run.
        self.unnamed = bool(_O_TMPFILE) and os.path.isdir(_FD_DIR)

    def forget(self, shas: list[str]) -> None:
        with self.claims_lock:
            for sha in shas:
                claim = self.claims.get(sha)
                if claim is not None and claim.done():
                    self.claims.pop(sha, None)

    def settle(self, checked: Checked, candidate: Candidate, image_id: str) -> tuple[Stored, bool]:
        """In a worker thread: point at a file with the same content, or store it.

        Returns (where the content is, whether it was there already).
        """
        sha = checked.body.sha256
        with self.claims_lock:
            claim = self.claims.get(sha)
            mine: concurrent.futures.Future[Stored | None] | None = None
            if claim is None:
                mine = self.claims[sha] = concurrent.futures.Future()
        if claim is not None:
            stored = claim.result()
            if stored is not None:
                return stored, True
            return self.place(checked, candidate, image_id), False  # the first one failed
        assert mine is not None
        try:
            stored = self.known(sha)
            duplicate = stored is not None
            if stored is None:
                stored = self.place(checked, candidate, image_id)
        except BaseException:
            mine.set_result(None)
            with self.claims_lock:
                self.claims.pop(sha, None)
            raise
        mine.set_result(stored)
        return stored, duplicate

    def place(self, checked: Checked, candidate: Candidate, image_id: str) -> Stored:
        """The name from the content, the sidecar, then the image, put in place in one step."""
        body = checked.body
        name = file_name(
            image_id, candidate.variant_type, checked.width, checked.height, candidate.url,
            checked.ext,
        )  # fmt: skip
        final = self.out / name
        if final.parent != self.out:  # cannot happen with safe names; never write outside
            raise FetchFailure("unsafe file name", name)
        # The image is whole before it gets its final name: written to a file with
        # no name (O_TMPFILE) and linked to it, or to a temporary file and renamed.
        # Either way one step, so it is whole under its final name. The sidecar is
        # written in place, before the image: until that step it is a sidecar
        # without its image, which the next run's reconcile removes (a kill can
        # leave no image without its sidecar). A kill before the link leaves
        # nothing of an unnamed file.
        temp = body.temp
        own_temp = temp is None
        unnamed = None  # the descriptor of the unnamed file
        side = final.with_suffix(".txt")
        side_written = placed = False
        try:
            if own_temp:
                unnamed = self.write_unnamed(body.buffer)
                if unnamed is None:
                    temp = temp_path(self.out, candidate.url)
                    write_file(temp, body.buffer)
            side_written = True
            self.write_sidecar(side, checked, candidate, image_id)
            if unnamed is not None:
                self.link_unnamed(unnamed, final, candidate.url)
            else:
                assert temp is not None
                os.replace(temp, final)
            placed = True
        finally:
            if unnamed is not None:
                os.close(unnamed)
            if not placed:
                if side_written:
                    side.unlink(missing_ok=True)
                if own_temp and temp is not None:
                    temp.unlink(missing_ok=True)
        return Stored(
            recorded_path(final, self.db_dir), checked.width, checked.height, checked.mime
        )

    def write_unnamed(self, data: bytes | bytearray | memoryview) -> int | None:
        """``data`` in a file of the output folder that has no name yet: its descriptor,
        or None where such files are not supported (then a temporary file is used)."""
        if not self.unnamed:
            return None
        try:
            fd = os.open(self.out, _O_TMPFILE | os.O_WRONLY, 0o666)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
            self.unnamed = False
            return None
        try:
            write_all(fd, data)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def link_unnamed(self, fd: int, final: Path, url: str) -> None:
        """The unnamed file ``fd`` under ``final``; an existing file of that name is
        replaced in one step, as the rename did."""
        source, where = str(fd), fd_dir()
        try:
            os.link(source, final, src_dir_fd=where)
            return
        except FileExistsError:
            pass
        temp = temp_path(self.out, url)
        temp.unlink(missing_ok=True)
        os.link(source, temp, src_dir_fd=where)
        try:
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def write_sidecar(
        self, side: Path, checked: Checked, candidate: Candidate, image_id: str
    ) -> None:
        """The sidecar under its final name (a Ray driver renames a worker's one into place)."""
        text = sidecar_text(checked, candidate, image_id, self.context(image_id))
        if os.linesep != "\n":  # as a text-mode write had it
            text = text.replace("\n", os.linesep)
        write_file(side, text.encode("utf-8"))
