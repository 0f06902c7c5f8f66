"""Files on disk, shared by every step: atomic writes, placing a file without
ever overwriting (with its sidecars), temporary names, and a folder lock.
(shutil and filecmp are imported where used: step 6's exact mode needs
neither, and every millisecond of its start counts against jdupes.)

A file is written under a temporary name in its folder and renamed, so an
interrupted run never leaves a half-written file under a final name.
"""

from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

TYPE_CHECKING = False  # typing's, without importing typing (step 6's exact mode's start counts)
if TYPE_CHECKING:
    from contextlib import AbstractContextManager

# Files that travel with an image of the same stem (step 5 writes .txt).
SIDECAR_EXTENSIONS = (".txt", ".json", ".xmp")


def sidecars_of(path: Path) -> list[Path]:
    """Files next to ``path`` with the same stem and a sidecar extension."""
    return [
        side
        for ext in SIDECAR_EXTENSIONS
        if (side := path.with_suffix(ext)) != path and side.is_file()
    ]


# ----------------------------------------------------------- placing files


def temp_file(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty ``.<name>.<random>.part`` in ``folder``, open for writing.

    Created exclusively, with the usual permissions (0666 less the umask;
    ``mkstemp`` would leave 0600). Returns the descriptor and the path.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = folder / f".{name}.{os.urandom(4).hex()}.part"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """All of ``data`` to the descriptor ``fd`` (a short write, on a full pipe, a signal or
    a nearly full disk, is followed by the rest)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def same_content(a: Path, b: Path) -> bool:
    import filecmp

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
    import shutil

    fd, tmp = temp_file(target.parent, target.name)
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


class Placed(namedtuple("Placed", ("source", "target", "status", "sidecars"), defaults=((),))):
    """Where a file went. ``status``: moved, copied, already (identical file there).

    Not a dataclass nor a typing.NamedTuple: see cli.Command."""

    __slots__ = ()
    source: Path
    target: Path
    status: str
    sidecars: tuple[Path, ...]


def free_targets(dest_dir: Path, name: str) -> Iterator[Path]:
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
    for candidate in free_targets(dest_dir, source.name):
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
    import shutil

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


class Locked(OSError):
    """Another process holds the lock."""


def exclusive_lock(path: Path, *, per_process: bool = False) -> AbstractContextManager[None]:
    """Hold an advisory lock on ``path`` (created if missing) for the block.

    Raises :class:`Locked` at once when another process holds it. The lock
    goes with the process (a killed run leaves no stale lock). Windows has no
    advisory locks here: the block runs unlocked there.

    ``per_process``: a POSIX record lock (``lockf``) instead of ``flock``.
    Forked children (a process pool started inside the block) do not inherit
    it, so workers left behind by a killed run cannot keep it held.
    """
    from contextlib import contextmanager  # here: step 6's exact mode needs no contextlib

    return contextmanager(_exclusive_lock)(path, per_process)


def _exclusive_lock(path: Path, per_process: bool) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:
        yield
        return
    with Path(path).open("a") as handle:
        lock = fcntl.lockf if per_process else fcntl.flock
        try:
            lock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise Locked(f"locked by another run: {path}") from exc
        try:
            yield
        finally:
            lock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------- pipeline outputs

# A folder a step of the pipeline wrote (7.x sorted folders, step 6's
# quarantine) holds this file, so that no later step takes it for input.
OUTPUT_MARKER = ".yandex-reverse-output"
# Names the pipeline gives its output folders (also before markers existed).
OUTPUT_NAMES = frozenset({"_duplicates", "sorted"})
# Step 6 keeps the journal of its moves here, in its quarantine.
QUARANTINE_JOURNALS = ".dedup_runs"


def mark_output(folder: Path, step: str) -> None:
    """Mark ``folder`` as written by ``step`` (created if missing; idempotent)."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / OUTPUT_MARKER
    if not marker.exists():
        atomic_write_text(marker, f"written by the pipeline's step {step}\n")


def is_pipeline_output(folder: Path) -> bool:
    """Did a step of the pipeline write ``folder`` (marker or reserved name)?"""
    return (
        folder.name in OUTPUT_NAMES
        or (folder / OUTPUT_MARKER).is_file()
        or (folder / QUARANTINE_JOURNALS).is_dir()
    )


def is_within(path: Path, folder: Path) -> bool:
    """Is ``path`` ``folder`` or inside it? Lexical: both absolute and normalised."""
    try:
        return os.path.commonpath([path, folder]) == str(folder)
    except ValueError:  # one relative, or different drives
        return False
