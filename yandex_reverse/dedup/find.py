"""Finding duplicate groups: byte-exact, perceptual and by file name.

Each finder returns :class:`Group` objects whose first member is the one to
keep, and never reads more than it must: exact mode reads 8 KiB of files
that share a size and whole files only when those still tie; perceptual mode
decodes each picture once, at reduced scale, in a process pool, and reuses
cached hashes of unchanged files.
"""

from __future__ import annotations

import functools
import gc
import os
import re
import time
from array import array
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from stat import S_ISLNK, S_ISREG

from ..console import progress, progress_shown
from ..fsutil import is_pipeline_output, write_all
from ..i18n import _
from ..imageinfo import IMAGE_EXTENSIONS, ImageError, iter_image_entries, read_info
from . import hashing

TYPE_CHECKING = False  # typing's, without importing typing (exact mode's start counts)
if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from typing import Any

KEEP_RULES = ("best", "largest", "oldest", "newest", "first")


def ticking(label: str, total: int | None = None) -> AbstractContextManager[Callable[..., None]]:
    """A progress bar updated at most ten times a second: per-file redraws cost
    more than hashing a cached file. ``tick()`` counts one, ``tick(n)`` n.

    Without a bar, a context that yields a tick doing nothing (not even a
    clock read per file), and no ``contextlib`` (0.3 ms of exact mode's start)."""
    if not progress_shown():
        return _NO_TICKS
    from contextlib import contextmanager

    return contextmanager(_ticking)(label, total)


class _NoTicks:
    def __enter__(self) -> Callable[..., None]:
        return _no_tick

    def __exit__(self, *exc_info: object) -> None:
        return None


def _no_tick(n: int = 1) -> None:
    return None


_NO_TICKS = _NoTicks()


def _ticking(label: str, total: int | None) -> Iterator[Callable[..., None]]:
    with progress(label, total) as advance:
        pending, last = 0, time.monotonic()

        def tick(n: int = 1) -> None:
            nonlocal pending, last
            pending += n
            now = time.monotonic()
            if now - last >= 0.1:
                advance(pending)
                pending, last = 0, now

        yield tick
        if pending:
            advance(pending)


def without_gc(function: Callable) -> Callable:
    """Run ``function`` with the cyclic garbage collector paused.

    The scan and the exact grouping make tens of thousands of small objects
    (entries, tuples, lists) and no cycles; each 700 of them started a
    collection that walked them all again: 8 % of exact mode's instructions
    on 20,000 files. Reference counting still frees everything at once.
    """

    @functools.wraps(function)
    def paused(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():
            return function(*args, **kwargs)
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            gc.enable()

    return paused


class Entry:
    """One image file as scanned (a hard-linked file appears once).

    Plain classes with slots, not dataclasses: ``dataclasses`` imports
    ``inspect`` (and it ``ast``, ``dis``, ``tokenize``), a noticeable part of
    exact mode's start on 2,000 files.
    """

    __slots__ = (
        "_path",
        "content",
        "hash",
        "height",
        "mtime_ns",
        "name",
        "order",
        "rel",
        "size",
        "width",
    )

    def __init__(self, name: str, rel: str, size: int, mtime_ns: int, order: int) -> None:
        self.name = name  # the full path as text; ``path`` makes the Path when needed
        self.rel = rel
        self.size = size
        self.mtime_ns = mtime_ns
        self.order = order  # position in the sorted walk, for --keep first
        self.width = 0
        self.height = 0
        self.hash: bytes | None = None
        self.content = -1  # exact-group id: same id = same bytes
        self._path: Path | None = None

    def __repr__(self) -> str:
        return f"Entry({self.rel!r}, {self.size})"

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = Path(self.name)
        return self._path


class Member:
    __slots__ = ("distance", "entry", "match")

    def __init__(self, entry: Entry, match: str, distance: int | None = None) -> None:
        self.entry = entry
        self.match = match  # "kept", "exact", "similar" or "filename"
        self.distance = distance  # Hamming distance to the kept file


class Group:
    __slots__ = ("kind", "members")

    def __init__(self, kind: str, members: list[Member]) -> None:
        self.kind = kind  # "exact", "similar" or "filename"
        self.members = members  # members[0] is kept

    @property
    def kept(self) -> Entry:
        return self.members[0].entry

    @property
    def removed(self) -> list[Member]:
        return self.members[1:]


class Scan:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: list[Entry] = []
        self.files = 0  # files scanned (a hard-linked file once): len(entries) unless shared_sizes
        self.hard_links: list[tuple[str, str]] = []  # (path, same inode as)
        self.unreadable: list[tuple[str, str]] = []  # (path, reason)
        self.hashed = 0
        self.cached = 0
        self.notes: list[str] = []


@without_gc
def scan(
    root: Path,
    *,
    recursive: bool,
    exclude: Iterable[Path],
    shared_sizes: bool = False,
    workers: int = 1,
) -> Scan:
    """Every image under ``root`` with its size and mtime; one file reached by two
    names (hard link, symlink) is counted once.

    A symlink is never an entry (never kept, moved or deleted): it is listed
    with the file it reaches. Folders another step of the pipeline wrote
    (:func:`fsutil.is_pipeline_output`: 7.x sorted folders, quarantines) are
    not scanned, and each is named in ``notes``.

    ``shared_sizes`` (exact mode): ``entries`` holds only the files whose size
    another file has, the only ones that can be duplicates (or hard links) of
    each other; ``files`` still counts them all. Every file is still walked
    and stat'ed once, but the rest of the work (its relative path, its inode,
    an :class:`Entry`) is done for those only: on 20,000 files of which
    6,400 share a size, that was half of the scan.
    """
    result = Scan(root)
    links: list[tuple[str, str]] = []
    prefix = len(str(root).rstrip(os.sep)) + 1

    def skip_dir(path: Path) -> bool:
        if is_pipeline_output(path):
            result.notes.append(
                _("not scanned (written by the pipeline): {path}").format(path=path)
            )
            return True
        return False

    with ticking(_("Scanning")) as advance:
        if shared_sizes:
            known = _scan_shared(
                result, root, recursive, exclude, skip_dir, links, advance, workers
            )
        else:
            walk = iter_image_entries(root, recursive=recursive, exclude=exclude, skip_dir=skip_dir)
            known = _scan_all(result, walk, links, prefix, advance)
    for rel, name in links:
        try:
            st = os.stat(name)
            target = known(st) or os.path.realpath(name)
        except OSError:
            target = _("(dangling symlink)")
        result.hard_links.append((rel, target))
    return result


def _cannot_stat(exc: OSError) -> str:
    return _("cannot stat: {reason}").format(reason=exc.strerror or exc)


def _scan_all(
    result: Scan,
    walk: Iterable[os.DirEntry[str]],
    links: list[tuple[str, str]],
    prefix: int,
    advance: Callable[[], None],
) -> Callable[[os.stat_result], str | None]:
    """Every file an :class:`Entry`; returns: the path of the scanned file a
    stat result is of, or None."""
    inodes: dict[tuple[int, int], str] = {}
    entries = result.entries
    for item in walk:
        name = item.path
        rel = name[prefix:].replace(os.sep, "/")  # Path.relative_to is the slow part
        try:
            if item.is_symlink():
                links.append((rel, name))
                continue
            st = item.stat(follow_symlinks=False)
        except OSError as exc:
            result.unreadable.append((rel, _cannot_stat(exc)))
            continue
        inode = (st.st_dev, st.st_ino)
        if inode in inodes:  # a hard link of a file already seen
            result.hard_links.append((rel, inodes[inode]))
            continue
        inodes[inode] = rel
        entries.append(Entry(name, rel, st.st_size, st.st_mtime_ns, len(entries)))
        advance()
    result.files = len(entries)
    return lambda st: inodes.get((st.st_dev, st.st_ino))


def _scan_shared(
    result: Scan,
    root: Path,
    recursive: bool,
    exclude: Iterable[Path],
    skip_dir: Callable[[Path], bool],
    links: list[tuple[str, str]],
    advance: Callable[..., None],
    workers: int,
) -> Callable[[os.stat_result], str | None]:
    """:func:`_scan_all` for exact mode: an :class:`Entry` only for a file whose
    size another file has; ``result.files`` counts them all.

    The same files as :func:`imageinfo.iter_image_entries` (the tests hold the
    two to it), found more cheaply. First the listings alone
    (:func:`_list_images`: names, no ``os.DirEntry`` kept, no sorting), then
    one ``lstat`` per name into 64-bit arrays (:func:`_lstat_files`;
    its file type tells a file from a symlink), shared with forked
    processes when there are many (the ``lstat`` calls are most of the
    scan); no stat result is kept (keeping 20,000 cost more than the calls).
    Sizes are counted, and only the files of a shared size are sorted into
    walk order and made entries; hard links, which have their file's size,
    are found among them. Unreadable files, symlinks and entries come out in
    the order of the sorted walk, as in :func:`_scan_all`.
    """
    excluded = {Path(p).resolve() for p in exclude}
    if Path(root).resolve() in excluded:
        return lambda st: None
    folders, names = _list_images(root, recursive, excluded, skip_dir)
    count = len(names)
    spans = [(count * k // workers, count * (k + 1) // workers) for k in range(workers)]
    if count < _FORK_STATS or not hasattr(os, "fork"):
        spans = [(0, count)]
    parent = os.getpid()

    def stat_span(span: tuple[int, int]) -> tuple:
        # Only the first span (always done here) ticks: a forked child draws no
        # progress (the bar's lock may have been held at the fork), and the other
        # spans are counted when they come back, whoever did them.
        tick = advance if span == spans[0] and os.getpid() == parent else lambda n=1: None
        return _lstat_files(folders, names, tick, span)

    done = dict(_forked(stat_span, spans, len(spans)))
    sizes, mtimes, devices, inodes_of = array("q"), array("q"), array("Q"), array("Q")
    marks: list[tuple[int, str | None]] = []  # (file number, why unreadable; None: a symlink)
    late: dict[int, int] = {}  # file number -> an mtime_ns past 64 bits
    for k, (start, _stop) in enumerate(spans):
        got_sizes, got_mtimes, got_devices, got_inodes, got_marks, got_late = done[k]
        before = len(sizes)
        sizes.frombytes(got_sizes)
        mtimes.frombytes(got_mtimes)
        devices.frombytes(got_devices)
        inodes_of.frombytes(got_inodes)
        if k:
            advance(len(sizes) - before - sizes[before:].count(-1))  # a child's files
        marks += [(start + i, why) for i, why in got_marks]
        late.update((start + i, value) for i, value in got_late)
    counts = Counter(sizes)
    counts.pop(-1, None)  # not a file, or not stat'ed
    starts = [folder[2] for folder in folders]

    def rel_of(i: int) -> str:
        return folders[bisect_right(starts, i) - 1][1] + names[i]

    for i, why in sorted(marks, key=lambda mark: _walk_key(folders, starts, names, mark[0])):
        if why is None:
            links.append((rel_of(i), folders[bisect_right(starts, i) - 1][0] + names[i]))
        else:
            result.unreadable.append((rel_of(i), why))
    order = sorted(
        [
            (k, names[i], i)
            for k, (_path, _rel, start, stop) in enumerate(folders)
            for i in range(start, stop)
            if counts[sizes[i]] > 1
        ]
    )
    inodes: dict[tuple[int, int], str] = {}
    entries = result.entries
    for k, name, i in order:  # walk order: (folder number, name)
        path, rel, _start, _stop = folders[k]
        rel += name
        inode = (devices[i], inodes_of[i])
        if inode in inodes:  # a hard link of a file before it
            result.hard_links.append((rel, inodes[inode]))
            continue
        inodes[inode] = rel
        mtime_ns = late.get(i, mtimes[i]) if late else mtimes[i]
        entries.append(Entry(path + name, rel, sizes[i], mtime_ns, len(entries)))
    result.files = count - sizes.count(-1) - len(result.hard_links)
    alone: dict[int, int] = {}  # size -> its one file; made for the first symlink

    def known(st: os.stat_result) -> str | None:
        if counts[st.st_size] > 1:
            return inodes.get((st.st_dev, st.st_ino))
        if not alone:
            alone.update((size, i) for i, size in enumerate(sizes) if counts[size] == 1)
        i = alone.get(st.st_size, -1)
        if i < 0 or (devices[i], inodes_of[i]) != (st.st_dev, st.st_ino):
            return None
        return rel_of(i)

    return known


def _walk_key(
    folders: list[tuple[str, str, int, int]], starts: list[int], names: list[str], i: int
) -> tuple[int, str]:
    return bisect_right(starts, i) - 1, names[i]


# Fewer files than this are stat'ed here alone: a fork and the results' way
# back (about 2 ms) cost more than half their lstat calls.
_FORK_STATS = 4096
# Folders listed through a descriptor, files stat'ed relative to it (Unix):
# the kernel resolves one name per file, not the whole path again.
_BY_FD = os.scandir in os.supports_fd and os.stat in os.supports_dir_fd
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _list_images(
    root: Path, recursive: bool, excluded: set[Path], skip_dir: Callable[[Path], bool]
) -> tuple[list[tuple[str, str, int, int]], list[str]]:
    """The names that may be image files under ``root``, as
    :func:`imageinfo.iter_image_entries` walks (hidden names skipped, folders
    depth first in name order, symlinked folders not followed), from the
    listings alone: the file type a listing gives tells a folder, and the
    ``lstat`` that follows tells a file from a symlink (or anything else).

    Returns the folders (path and relative path, each ending in a separator,
    and the range of ``names`` that are theirs), and the names, each
    folder's in listing order. A folder that cannot be listed is left out.
    """
    sep = os.sep
    extensions = IMAGE_EXTENSIONS
    folders: list[tuple[str, str, int, int]] = []
    names: list[str] = []
    top = os.fspath(root)
    stack = [(top if top.endswith(sep) else top + sep, "")]
    while stack:
        folder, rel = stack.pop()
        start = len(names)
        subdirs: list[str] = []
        fd = None
        try:
            if _BY_FD:  # a subfolder replaced by a symlink since its parent's listing: not followed
                fd = os.open(folder, _DIR_FLAGS | (_NO_FOLLOW if folders else 0))
            listing = os.scandir(folder if fd is None else fd)
        except OSError:
            if fd is not None:
                os.close(fd)
            continue
        try:
            with listing:
                for item in listing:
                    name = item.name
                    if name.startswith("."):
                        continue
                    try:
                        if item.is_dir(follow_symlinks=False):
                            if recursive:
                                subdirs.append(name)
                        elif name[name.rfind(".") :].lower() in extensions:
                            names.append(name)
                    except OSError:
                        continue
        finally:
            if fd is not None:
                os.close(fd)
        folders.append((folder, rel, start, len(names)))
        todo = []
        for name in sorted(subdirs):
            sub = Path(folder + name)
            if sub.resolve() not in excluded and not skip_dir(sub):
                todo.append((f"{folder}{name}{sep}", f"{rel}{name}/"))
        stack.extend(reversed(todo))  # depth first, in name order
    return folders, names


def _lstat_files(
    folders: list[tuple[str, str, int, int]],
    names: list[str],
    advance: Callable[..., None],
    span: tuple[int, int],
) -> tuple[bytes, bytes, bytes, bytes, list[tuple[int, str | None]], list[tuple[int, int]]]:
    """Size, mtime_ns, device and inode of names ``span[0]`` to ``span[1]``
    (``lstat``: a symlink is not followed), as the bytes of four 64-bit
    arrays (no int object kept per file, and a forked child sends them back
    as they are). A name that is not a regular file has size -1, and so has
    one that cannot be stat'ed; the fifth list holds, numbered from
    ``span[0]``, the reason of each of those, or None for a symlink to a
    regular file (what ``os.DirEntry.is_file`` lets through). Other kinds of
    file (folders, fifos, dangling links) are left out, as the walk leaves
    them. The last list: mtimes past 64 bits (after 2262), numbered alike.
    A folder with a few files or more is opened once and its files stat'ed
    relative to it."""
    sizes, mtimes, devices, inodes = array("q"), array("q"), array("Q"), array("Q")
    marks: list[tuple[int, str | None]] = []
    late: list[tuple[int, int]] = []
    stat = os.stat
    lo, hi = span
    for number, (path, _rel, start, stop) in enumerate(folders):
        first, last = max(start, lo), min(stop, hi)
        if first >= last:
            continue
        fd, base = None, path
        if _BY_FD and last - first >= 8:
            try:
                fd = os.open(path, _DIR_FLAGS | (_NO_FOLLOW if number else 0))
                base = ""
            except OSError:
                pass
        try:
            for i in range(first, last):
                try:
                    st = stat(base + names[i], dir_fd=fd, follow_symlinks=False)
                except OSError as exc:
                    st = None
                    marks.append((i - lo, _cannot_stat(exc)))
                if st is None or not S_ISREG(st.st_mode):
                    if st is not None and S_ISLNK(st.st_mode) and _reaches_file(path + names[i]):
                        marks.append((i - lo, None))
                    sizes.append(-1)
                    mtimes.append(0)
                    devices.append(0)
                    inodes.append(0)
                    continue
                mtime_ns = st.st_mtime_ns
                if not -_INT64 <= mtime_ns < _INT64:
                    late.append((i - lo, mtime_ns))
                    mtime_ns = 0
                sizes.append(st.st_size)
                mtimes.append(mtime_ns)
                devices.append(st.st_dev)
                inodes.append(st.st_ino)
                advance()
        finally:
            if fd is not None:
                os.close(fd)
    return sizes.tobytes(), mtimes.tobytes(), devices.tobytes(), inodes.tobytes(), marks, late


_INT64 = 1 << 63


def _reaches_file(path: str) -> bool:
    try:
        return S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


# ----------------------------------------------------------------- keeping


_VARIANT_SCORES = (("preview", 100), ("full", 100), ("dups", 50), ("thumb", 10))


def variant_score(name: str) -> int:
    """The original's rank of downloader variants: preview/full > other > dups > thumb."""
    lower = name.lower()
    return next((score for word, score in _VARIANT_SCORES if word in lower), 25)


def keep_key(rule: str, *, by_name: bool = False) -> Callable[[Entry], tuple]:
    """Sort key putting the file to keep first.

    best (default): highest resolution, then (filename mode) best variant,
    then largest file, then shortest path.
    """
    tail: Callable[[Entry], tuple] = lambda e: (len(e.rel), e.rel)  # noqa: E731
    if rule == "largest":
        return lambda e: (-e.size, -e.pixels, *tail(e))
    if rule == "oldest":
        return lambda e: (e.mtime_ns, *tail(e))
    if rule == "newest":
        return lambda e: (-e.mtime_ns, *tail(e))
    if rule == "first":
        return lambda e: (e.order,)
    if by_name:
        return lambda e: (-e.pixels, -variant_score(e.path.name), -e.size, *tail(e))
    return lambda e: (-e.pixels, -e.size, *tail(e))


# ------------------------------------------------------------------- exact


@without_gc
def exact_groups(found: Scan, workers: int) -> list[list[Entry]]:
    """Byte-identical files: same size, then the same first 4 KiB, then the
    same xxh3_128 of the rest (:func:`hashing.identical_files`).

    Files are read as little as jdupes reads them: a file of a size no other
    file has is never opened, and one whose first block differs from every
    other of its size is read no further. Zero-byte files are never
    duplicates of anything worth keeping; they are left alone (as jdupes
    does). Groups of one size are shared among a few threads.
    """
    by_size: dict[int, list[Entry]] = defaultdict(list)
    for entry in found.entries:
        if entry.size > 0:
            by_size[entry.size].append(entry)
    tied = [group for group in by_size.values() if len(group) > 1]
    if not tied:
        return []
    from _thread import get_ident  # built in: no import cost

    buffers: dict[int, bytearray] = {}

    def split(groups: list[list[Entry]]) -> list[tuple[list[list[int]], list[tuple[int, str]]]]:
        """Per group: its identical files and its unreadable ones (positions in it)."""
        out = []
        # One read buffer per thread, reused for all its groups (grown when short):
        # room for two rests (a pair is compared, not hashed).
        most = max(group[0].size for group in groups) - hashing.HEAD + 1
        rest = min(2 * most, hashing.READ_BUFFER)
        buffer = buffers.get(get_ident())
        if rest > 1 and (buffer is None or len(buffer) < rest):
            buffer = buffers[get_ident()] = bytearray(rest)
        for group in groups:
            same, errors = hashing.identical_files([e.name for e in group], group[0].size, buffer)
            bad = (
                [
                    (i, _("unreadable: {reason}").format(reason=str(exc.strerror or exc)))
                    for i, exc in errors
                ]
                if errors
                else []
            )
            out.append((same, bad))
        return out

    files = sum(len(g) for g in tied)
    # A few parts per thread, not one task per group: a hand-off costs more
    # than reading a small file. Interleaved, so each part gets big and small.
    parts = max(1, min(len(tied), files // 64, 4 * workers)) if workers > 1 else 1
    # At most this many seconds of work (an upper bound: every byte read, at
    # about 3 us a file and 5 GB/s) is done here alone: a fork costs some
    # 10 ms of CPU (copy-on-write page faults) and a few of wall time.
    if files * 3e-6 + sum(len(g) * g[0].size for g in tied) / 5e9 < _FORK_WORK:
        parts = 1
    chunks = [tied[i::parts] for i in range(parts)]
    done: list[list[Entry]] = []
    if hasattr(os, "fork"):
        results = _forked(split, chunks, min(workers, parts))
    else:  # threads, where there is no fork (Windows)
        numbered = lambda n: (n, split(chunks[n]))  # noqa: E731
        results = _threaded(numbered, list(range(parts)), min(workers, parts))
    with ticking(_("Comparing files"), parts) as advance:
        for number, part in results:
            for group, (same, bad) in zip(chunks[number], part, strict=True):
                if same:  # most groups of a size are files that differ
                    done.extend([group[i] for i in indices] for indices in same)
                if bad:
                    found.unreadable.extend((group[i].rel, reason) for i, reason in bad)
            advance()
    done.sort(key=lambda g: g[0].order)  # the same groups, in the same order, whatever the threads
    for number, group in enumerate(done):
        for entry in group:
            entry.content = number
    return done


_FORK_WORK = 0.005


def _forked(work: Callable[[Any], Any], items: list, processes: int) -> Iterator[tuple[int, Any]]:
    """``(position, work(item))`` for each of ``items``, shared among ``processes``
    processes: this one and forked children, each taking every n-th item.

    Reading and comparing files is Python between syscalls, so threads wait on
    each other for the GIL (two were slower than one); two processes are not,
    and on 20,000 files they halved the comparing. A child sends its results
    (made of ints and text only) back through a pipe with ``marshal`` (built
    in: no import) and leaves with ``os._exit``. A child that fails or dies
    (killed, out of memory) costs nothing but time: its items are done here.
    Ctrl-C here kills the children.
    """
    if processes <= 1 or len(items) <= 1:
        yield from enumerate(map(work, items))
        return
    import marshal

    children: list[tuple[int, int, list[int]]] = []  # (pid, read end, positions)
    try:
        for k in range(1, processes):
            mine = list(range(k, len(items), processes))
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: its share, then out, whatever happens
                code = 1
                try:
                    os.close(read_end)
                    write_all(write_end, marshal.dumps([work(items[i]) for i in mine]))
                    code = 0
                finally:
                    os._exit(code)
            os.close(write_end)
            children.append((pid, read_end, mine))
        for i in range(0, len(items), processes):
            yield i, work(items[i])
        while children:
            pid, read_end, mine = children[0]
            with open(read_end, "rb", closefd=False) as pipe:
                data = pipe.read()
            _, status = os.waitpid(pid, 0)
            del children[0]
            os.close(read_end)
            try:
                results = marshal.loads(data) if status == 0 else None
            except (EOFError, ValueError, TypeError):
                results = None
            if results is None or len(results) != len(mine):
                results = [work(items[i]) for i in mine]  # the child failed: done here
            yield from zip(mine, results, strict=True)
    finally:
        for pid, read_end, _mine in children:  # only when stopped early (Ctrl-C, an error)
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass
            try:
                os.close(read_end)
            except OSError:
                pass


def _threaded(work: Callable[[Any], Any], items: list, threads: int) -> Iterator[Any]:
    """``work(item)`` for each of ``items`` on ``threads`` threads; the results
    as each is ready (any order). An error in a thread is raised here.

    Plain threads and a ``SimpleQueue``, not ``concurrent.futures``: that
    package imports ``logging`` and more, a tenth of the start of exact mode,
    for what these few lines do. Daemon threads: Ctrl-C is not held up by
    a thread in the middle of a big file.
    """
    if threads <= 1 or len(items) <= 1:
        yield from map(work, items)
        return
    import threading

    try:
        from _queue import SimpleQueue  # what queue.SimpleQueue is, without queue's imports
    except ImportError:  # not CPython
        from queue import SimpleQueue

    todo = iter(items)  # a list iterator's next() is atomic: the threads share it
    results: SimpleQueue = SimpleQueue()

    def run() -> None:
        try:
            for item in todo:
                results.put((True, work(item)))
        except BaseException as exc:  # handed to the caller, who raises it
            results.put((False, exc))

    for _n in range(threads):
        threading.Thread(target=run, daemon=True).start()
    for _n in range(len(items)):
        ok, value = results.get()
        if not ok:
            raise value
        yield value


# ----------------------------------------------------------------- similar


def hash_pictures(
    found: Scan,
    entries: list[Entry],
    *,
    method: str,
    hash_size: int,
    draft: bool,
    workers: int,
    use_cache: bool,
) -> None:
    """Fill ``entry.hash``/size for ``entries``; failures go to ``found.unreadable``."""
    cache = hashing.HashCache(found.root, method, hash_size, draft, enabled=use_cache)
    if cache.error:
        found.notes.append(cache.error)
    known = cache.load()
    todo: list[Entry] = []
    for entry in entries:
        hit = known.get(entry.rel)
        if hit and hit[0] == entry.size and hit[1] == entry.mtime_ns:
            _apply(found, entry, hit[2], hit[3], hit[4], hit[5])
            found.cached += 1
        else:
            todo.append(entry)
    args = [(e.name, method, hash_size, draft) for e in todo]
    pending: list[tuple] = []
    results: Iterable[tuple]
    pool = None
    if workers > 1 and len(todo) > 2 * workers:
        from concurrent.futures import ProcessPoolExecutor

        from ..imageinfo import _ignore_sigint

        # Started before the progress bar's thread; workers leave Ctrl-C to us.
        pool = ProcessPoolExecutor(workers, initializer=_ignore_sigint)
        results = pool.map(_hash_star, args, chunksize=max(1, min(8, len(todo) // (8 * workers))))
    else:
        results = map(_hash_star, args)
    with ticking(_("Perceptual hashing"), len(todo)) as advance:
        try:
            for entry, (value, width, height, error) in zip(todo, results, strict=True):
                _apply(found, entry, value, width, height, error)
                found.hashed += 1
                pending.append((entry.rel, entry.size, entry.mtime_ns, value, width, height, error))
                if len(pending) >= 500:
                    cache.store(pending)
                    pending.clear()
                advance()
        finally:
            cache.store(pending)
            cache.close()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    if cache.error and cache.error not in found.notes:
        found.notes.append(cache.error)


def _hash_star(args: tuple) -> tuple:
    return hashing.perceptual_hash(*args)


def _apply(found: Scan, entry: Entry, value, width, height, error) -> None:
    if error:
        found.unreadable.append((entry.rel, error))
        return
    entry.hash, entry.width, entry.height = value, width, height


def similar_groups(
    found: Scan,
    exact: list[list[Entry]],
    *,
    method: str,
    hash_size: int,
    threshold: int,
    keep: str,
    draft: bool,
    workers: int,
    use_cache: bool,
) -> list[Group]:
    """Connected components of "distance <= threshold" (plus byte-identical files).

    In ``both`` mode ``exact`` holds the byte-identical groups: only one file
    of each is decoded, the others share its hash.
    """
    import numpy as np

    from . import index

    followers = {id(e) for group in exact for e in group[1:]}
    to_hash = [e for e in found.entries if id(e) not in followers]
    hash_pictures(
        found,
        to_hash,
        method=method,
        hash_size=hash_size,
        draft=draft,
        workers=workers,
        use_cache=use_cache,
    )
    for group in exact:
        for entry in group[1:]:
            entry.hash, entry.width, entry.height = group[0].hash, group[0].width, group[0].height
    nodes = [e for e in found.entries if e.hash is not None or e.content >= 0]
    position = {id(e): n for n, e in enumerate(nodes)}
    hashed = [n for n, e in enumerate(nodes) if e.hash is not None]
    packed = index.pack([nodes[n].hash for n in hashed])  # type: ignore[misc]
    with progress(_("Searching the hash index"), 1) as advance:
        pi, pj, _dist = index.close_pairs(packed, threshold, nbits=hash_size * hash_size)
        advance()
    rows = np.asarray(hashed, dtype=np.int64)
    edge_i = [rows[pi]] if len(pi) else []
    edge_j = [rows[pj]] if len(pj) else []
    for group in exact:  # byte copies belong together even when undecodable
        first = position[id(group[0])]
        others = [position[id(e)] for e in group[1:]]
        edge_i.append(np.full(len(others), first, dtype=np.int64))
        edge_j.append(np.asarray(others, dtype=np.int64))
    if not edge_i:
        return []
    labels = index.components(len(nodes), np.concatenate(edge_i), np.concatenate(edge_j))
    members: dict[int, list[Entry]] = defaultdict(list)
    for node, label in enumerate(labels):
        members[int(label)].append(nodes[node])
    groups: list[Group] = []
    key = keep_key(keep)
    for group in members.values():
        if len(group) < 2:
            continue
        group.sort(key=key)
        kept = group[0]
        out = [Member(kept, "kept", 0 if kept.hash else None)]
        for entry in group[1:]:
            same = entry.content >= 0 and entry.content == kept.content
            distance = None
            if entry.hash is not None and kept.hash is not None:
                distance = sum(
                    bin(a ^ b).count("1") for a, b in zip(entry.hash, kept.hash, strict=True)
                )
            out.append(Member(entry, "exact" if same else "similar", distance))
        kind = "exact" if all(m.match == "exact" for m in out[1:]) else "similar"
        groups.append(Group(kind, out))
    return _ordered(groups)


@without_gc
def exact_to_groups(exact: list[list[Entry]], keep: str) -> list[Group]:
    key = keep_key(keep)
    groups = []
    for group in exact:
        group = sorted(group, key=key)
        groups.append(
            Group(
                "exact", [Member(group[0], "kept", 0)] + [Member(e, "exact", 0) for e in group[1:]]
            )
        )
    return _ordered(groups)


def _ordered(groups: list[Group]) -> list[Group]:
    return sorted(groups, key=lambda g: (-len(g.members), g.kept.rel))


# ---------------------------------------------------------------- filename

_NAME_PREFIX = re.compile(r"^([^_]+)_")


def name_prefix(name: str) -> str | None:
    """The image id before the first ``_`` (the downloader's ``{image_id}_{variant}_{W}x{H}_{hash}``)."""
    match = _NAME_PREFIX.match(os.path.splitext(name)[0])
    return match.group(1) if match else None


def filename_groups(found: Scan, *, keep: str, workers: int) -> list[Group]:
    """Files sharing the image-id prefix; sizes read from headers (EXIF applied)."""
    by_prefix: dict[str, list[Entry]] = defaultdict(list)
    for entry in found.entries:
        prefix = name_prefix(entry.path.name)
        if prefix:
            by_prefix[prefix].append(entry)
    candidates = [e for group in by_prefix.values() if len(group) > 1 for e in group]

    def one(entry: Entry) -> tuple[Entry, str | None]:
        try:
            info = read_info(entry.path)
        except ImageError as exc:
            return entry, str(exc)
        entry.width, entry.height = info.width, info.height
        return entry, None

    from concurrent.futures import ThreadPoolExecutor

    bad: set[int] = set()
    with (
        ticking(_("Reading sizes"), len(candidates)) as advance,
        ThreadPoolExecutor(max(1, workers)) as pool,
    ):
        for entry, error in pool.map(one, candidates):
            if error:
                found.unreadable.append((entry.rel, error))
                bad.add(id(entry))
            advance()
    key = keep_key(keep, by_name=True)
    groups = []
    for group in by_prefix.values():
        usable = sorted((e for e in group if id(e) not in bad), key=key)
        if len(usable) > 1:
            groups.append(
                Group(
                    "filename",
                    [Member(usable[0], "kept")] + [Member(e, "filename") for e in usable[1:]],
                )
            )
    return _ordered(groups)
