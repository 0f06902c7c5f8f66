"""Step 5: download the originals, resumable and async.

One ledger row per URL (table ``downloads``) makes every run resumable: a
re-run skips what is done, retries only what may succeed, and a URL shared by
several results is fetched once. Work is streamed from the DB page by page
into a bounded pool of tasks; the network is limited globally and per host,
and a host that answers 429/503 is paused (Retry-After in seconds or as an
HTTP-date, with jitter) without any task holding a connection slot while it
waits. Bodies are checked (status, Content-Type, magic bytes, a real decode),
written under a temporary name and renamed only when complete and valid; the
extension comes from the content received. Ledger writes are batched in a
writer thread, off the event loop, and flushed on exit and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import io
import os
import queue
import random
import re
import sqlite3
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any

import aiofiles
import aiohttp
from PIL import Image, UnidentifiedImageError

from . import db as dbmod
from .console import (
    StepFailed,
    UsageError,
    ask_choice,
    console,
    human_bytes,
    is_interactive,
    log,
    one_line,
    progress,
    setup_logging,
    table,
)
from .urls import host_of, normalize_url

DEFAULT_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
ACCEPT = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"
SOURCES = {"1": "yandex_images.db", "2": "vk_images.db"}
TEMP_PREFIX = ".dl-"
TEMP_SUFFIX = ".part"
LOCK_NAME = ".download.lock"
LOG_NAME = "download.log"
CHUNK = 64 * 1024
SPILL_AT = 1024 * 1024  # bodies up to this size stay in memory until verified
PAGE = 256  # results read from the DB at a time
MAX_HOST_WAIT = 120.0  # a host asking for a longer pause fails its URLs as retryable
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
BACKOFF_STATUS = frozenset({429, 503})
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
_SAFE = re.compile(r"[^A-Za-z0-9-]+")


# ------------------------------------------------------------------ outcomes


class FetchFailure(Exception):
    """A URL that did not give a usable image: a short ``reason`` for the summary."""

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


@dataclass
class Candidate:
    url: str
    variant_type: str  # original, preview, dups, thumb
    origin_url: str | None = None


@dataclass
class Unit:
    """One result (``originals``) or one variant (``all-variants``) and its URLs in order."""

    image_id: str
    candidates: list[Candidate]


@dataclass
class Outcome:
    url: str
    image_id: str
    variant_type: str
    status: str  # done, failed, skipped
    reason: str = ""
    error: str | None = None
    retryable: bool = False
    http_status: int | None = None
    content_type: str | None = None
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    attempts: int = 0
    duplicate: bool = False
    received: int = 0


@dataclass
class Body:
    """A body received in full: in memory, or spilled to a temporary file."""

    buffer: bytearray
    temp: Path | None
    size: int
    sha256: str
    head: bytes
    content_type: str
    http_status: int
    final_url: str


@dataclass(frozen=True)
class Stored:
    path: str  # as recorded in the ledger
    width: int
    height: int
    mime: str


@dataclass
class Settings:
    db_path: Path
    out: Path
    what: str
    limit: int | None
    retry_failed: bool
    concurrency: int
    per_host: int
    timeout: float
    max_bytes: int
    proxy: str | None
    user_agent: str
    min_side: int
    min_bytes: int
    retries: int


@dataclass
class Stats:
    """What this run did, for the progress bar and the summary."""

    units: int = 0
    satisfied_before: int = 0
    failed_before_retryable: int = 0
    failed_before_permanent: int = 0
    no_url: int = 0
    worked: int = 0
    stored: int = 0
    duplicates: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    units_without_file: int = 0
    received: int = 0
    stored_bytes: int = 0
    started: float = field(default_factory=time.monotonic)


# ------------------------------------------------------------------ checks


def sniff(head: bytes) -> bool:
    """True when the first bytes carry a known image signature."""
    return any(head[offset : offset + len(sig)] == sig for offset, sig in _SIGNATURES)


def _looks_like_text(head: bytes, content_type: str) -> str | None:
    """A reason when the body is clearly a page or text rather than an image."""
    stripped = head.lstrip()[:64].lower()
    if stripped.startswith(b"<") and b"<svg" not in stripped:
        return "not an image: HTML page"
    if content_type in ("text/html", "application/xhtml+xml"):
        return "not an image: HTML page"
    if content_type.startswith("text/") or content_type in ("application/json",):
        return f"not an image: {content_type}"
    return None


@contextmanager
def _bomb_guard() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


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

    Pillow reads the header (decompression-bomb guard on); a file that ends
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
        with _bomb_guard(), Image.open(handle) as image:
            fmt = image.format or ""
            width, height = image.size
            if width <= 0 or height <= 0:
                raise FetchFailure("broken image", f"size {width}x{height}")
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
    except UnidentifiedImageError as exc:
        raise FetchFailure("not an image: unrecognised content") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise FetchFailure("broken image", one_line(exc, 120)) from exc
    return fmt, width, height


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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
    variant = _SAFE.sub("-", variant_type)[:16] or "variant"
    return f"{safe_id(image_id)}_{variant}_{width}x{height}_{digest}{ext}"


def _now() -> str:
    """Like db.now_iso() but to the microsecond: "settled in this run" compares these."""
    return datetime.now().astimezone().isoformat(timespec="microseconds")


def _one_line_value(value: object) -> str:
    return " ".join(str(value).split()) if value not in (None, 0) else ""


# ------------------------------------------------------------------ the ledger


_FINAL_SQL = """
INSERT INTO downloads (url, image_id, variant_type, status, path, bytes, content_type, sha256,
    http_status, width, height, error, retryable, attempts, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(url) DO UPDATE SET image_id = excluded.image_id,
    variant_type = excluded.variant_type, status = excluded.status, path = excluded.path,
    bytes = excluded.bytes, content_type = excluded.content_type, sha256 = excluded.sha256,
    http_status = excluded.http_status, width = excluded.width, height = excluded.height,
    error = excluded.error, retryable = excluded.retryable,
    attempts = downloads.attempts + excluded.attempts, updated_at = excluded.updated_at
"""
_PENDING_SQL = """
INSERT INTO downloads (url, image_id, variant_type, status, updated_at)
VALUES (?, ?, ?, 'pending', ?)
ON CONFLICT(url) DO UPDATE SET status = 'pending', updated_at = excluded.updated_at
WHERE downloads.status <> 'done'
"""


class LedgerWriter:
    """Batches ledger rows into transactions in its own thread (executemany).

    ``on_flushed(urls, shas)`` is called (on the event loop) after each
    commit, so the loop can drop what it kept in memory for rows not yet in
    the DB.
    """

    FLUSH_EVERY = 0.25
    BATCH = 1000

    def __init__(self, db_path: Path, on_flushed: Callable[[list[str], list[str]], None]) -> None:
        self.db_path = db_path
        self.on_flushed = on_flushed
        self.loop = asyncio.get_running_loop()
        self.queue: queue.Queue[tuple[str, tuple[Any, ...], str | None] | None] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self.thread.start()

    def pending(self, url: str, image_id: str, variant_type: str) -> None:
        self.queue.put(("pending", (url, image_id, variant_type, _now()), None))

    def final(self, o: Outcome) -> None:
        row = (
            o.url,
            o.image_id,
            o.variant_type,
            o.status,
            o.path,
            o.size,
            o.content_type,
            o.sha256,
            o.http_status,
            o.width,
            o.height,
            o.error,
            int(o.retryable),
            o.attempts,
            _now(),
        )
        self.queue.put(("final", row, o.sha256))

    def close(self) -> None:
        """Flush everything queued and stop (safe to call twice)."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise StepFailed(f"could not write the download ledger: {one_line(self.error)}")

    def _run(self) -> None:
        conn = dbmod.connect(self.db_path, create=False, migrate_schema=False)
        try:
            stop = False
            while not stop:
                first = self.queue.get()
                batch = []
                if first is None:
                    stop = True
                else:
                    batch.append(first)
                    deadline = time.monotonic() + self.FLUSH_EVERY
                    while len(batch) < self.BATCH:
                        try:
                            item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                        except queue.Empty:
                            break
                        if item is None:
                            stop = True
                            break
                        batch.append(item)
                if batch and self.error is None:
                    try:
                        self._write(conn, batch)
                    except Exception as exc:  # reported by close(); the run goes on
                        log.exception("ledger write failed")
                        self.error = exc
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, batch: list[tuple[str, tuple, str | None]]) -> None:
        with dbmod.transaction(conn):
            run: list[tuple] = []
            kind = batch[0][0]
            for item_kind, row, _sha in batch:
                if item_kind != kind:
                    conn.executemany(_FINAL_SQL if kind == "final" else _PENDING_SQL, run)
                    run, kind = [], item_kind
                run.append(row)
            conn.executemany(_FINAL_SQL if kind == "final" else _PENDING_SQL, run)
        urls = [row[0] for kind, row, _sha in batch if kind == "final"]
        shas = [sha for kind, _row, sha in batch if kind == "final" and sha]
        with suppress(RuntimeError):  # the loop is gone at shutdown: nothing to tell
            self.loop.call_soon_threadsafe(self.on_flushed, urls, shas)


# ------------------------------------------------------------------ reading the work


class WorkReader:
    """Pages of work from the DB, read in one dedicated thread (its own connection)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="work-reader"
        )
        self.conn: sqlite3.Connection | None = None
        self.phase = "images"
        self.after = 0
        self.finished = False

    def _connection(self) -> sqlite3.Connection:
        if self.conn is None:
            self.conn = sqlite3.connect(self.settings.db_path, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 10000")
            self.conn.execute("PRAGMA query_only = ON")
        return self.conn

    def count_units(self) -> int:
        conn = self._connection()
        count = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        if self.settings.what == "all-variants":
            count += conn.execute("SELECT COUNT(*) FROM image_variants").fetchone()[0]
        return count

    async def next_page(self) -> tuple[list[Unit], Counter[str]]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._page)

    def close(self) -> None:
        def _close() -> None:
            if self.conn is not None:
                self.conn.close()

        self.executor.submit(_close).result()
        self.executor.shutdown()

    def _page(self) -> tuple[list[Unit], Counter[str]]:
        """Units that need work, and counts of the others (done before, failed before ...)."""
        conn = self._connection()
        units: list[Unit] = []
        counts: Counter[str] = Counter()
        while not units and not self.finished:
            raw = self._raw_units(conn)
            if not raw:
                continue
            states = self._ledger_states(conn, {c.url for u in raw for c in u.candidates})
            for unit in raw:
                verdict = classify(unit, states, self.settings.retry_failed)
                if verdict == "work":
                    units.append(unit)
                else:
                    counts[verdict] += 1
            if counts and not units:
                break  # let the caller count progress even on pages with no work
        return units, counts

    def _raw_units(self, conn: sqlite3.Connection) -> list[Unit]:
        if self.phase == "images":
            rows = conn.execute(
                "SELECT rowid, id, best_url, origUrl, img_href FROM images "
                "WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (self.after, PAGE),
            ).fetchall()
            if not rows:
                if self.settings.what == "all-variants":
                    self.phase, self.after = "variants", 0
                else:
                    self.finished = True
                return []
            self.after = rows[-1][0]
            if self.settings.what == "all-variants":
                units = []
                for _rowid, image_id, best_url, orig_url, img_href in rows:
                    url = _first_url(best_url, orig_url, img_href)
                    candidates = [Candidate(url, "original", orig_url)] if url else []
                    units.append(Unit(str(image_id), candidates))
                return units
            return self._originals(conn, rows)
        rows = conn.execute(
            "SELECT id, image_id, variant_type, url, origin_url FROM image_variants "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (self.after, PAGE),
        ).fetchall()
        if not rows:
            self.finished = True
            return []
        self.after = rows[-1][0]
        units = []
        for _vid, image_id, variant_type, url, origin_url in rows:
            candidates = []
            for value in (url, origin_url):
                normalized = normalize_url(value)
                if normalized and all(c.url != normalized for c in candidates):
                    candidates.append(Candidate(normalized, str(variant_type), origin_url))
            units.append(Unit(str(image_id), candidates))
        return units

    def _originals(self, conn: sqlite3.Connection, rows: list[tuple]) -> list[Unit]:
        ids = [r[1] for r in rows]
        marks = ",".join("?" * len(ids))
        variants: dict[str, list[tuple]] = {}
        for image_id, vtype, url, width, height, origin_url in conn.execute(
            "SELECT image_id, variant_type, url, width, height, origin_url FROM image_variants "
            f"WHERE image_id IN ({marks}) AND variant_type IN ('preview', 'dups')",
            ids,
        ):
            variants.setdefault(image_id, []).append(
                (vtype, url, _int(width) * _int(height), origin_url)
            )
        return [
            Unit(str(r[1]), original_candidates(r[2], r[3], r[4], variants.get(r[1], [])))
            for r in rows
        ]

    @staticmethod
    def _ledger_states(conn: sqlite3.Connection, urls: set[str]) -> dict[str, tuple[str, int]]:
        states: dict[str, tuple[str, int]] = {}
        ordered = list(urls)
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for url, status, retryable in conn.execute(
                f"SELECT url, status, retryable FROM downloads WHERE url IN ({marks})", chunk
            ):
                states[url] = (status, retryable)
        return states


def original_candidates(
    best_url: object, orig_url: object, img_href: object, variants: list[tuple]
) -> list[Candidate]:
    """A result's URLs in the order to try: the best original, then its larger copies.

    ``variants`` are (variant_type, url, area, origin_url) of its previews and
    dups; thumbnails are never used (Yandex's own small copies, not originals).
    """
    candidates: list[Candidate] = []
    seen: set[str] = set()
    origin = orig_url if isinstance(orig_url, str) else None

    def add(value: object, vtype: str, origin: str | None) -> None:
        url = normalize_url(value)
        if url and url not in seen:
            seen.add(url)
            candidates.append(Candidate(url, vtype, origin))

    for value in (best_url, orig_url, img_href):
        add(value, "original", origin)
    # The larger copies first, previews before dups of the same size.
    ordered = sorted(variants, key=lambda v: (-v[2], v[0] != "preview", v[1] or ""))
    for vtype, url, _area, variant_origin in ordered:
        add(url, vtype, variant_origin)
    for vtype, _url, _area, variant_origin in ordered:
        add(variant_origin, vtype, variant_origin)
    return candidates


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def _first_url(*values: object) -> str | None:
    return next((u for v in values if (u := normalize_url(v))), None)


def classify(unit: Unit, states: dict[str, tuple[str, int]], retry_failed: bool) -> str:
    """What a unit needs, from the ledger: work, or why not.

    ``done_before``: one of its URLs is done; ``failed_retryable``: the next URL
    failed transiently earlier (only ``--retry-failed`` tries it again, and no
    worse fallback is taken meanwhile); ``failed_permanent``: every URL failed
    for good; ``no_url``: nothing fetchable at all.
    """
    if not unit.candidates:
        return "no_url"
    for candidate in unit.candidates:
        status, retryable = states.get(candidate.url, ("new", 0))
        if status == "done":
            return "done_before"
        if status in ("new", "pending"):
            return "work"
        if status == "failed" and retryable:
            return "work" if retry_failed else "failed_retryable"
    return "failed_permanent"


# ------------------------------------------------------------------ downloading


@dataclass
class HostState:
    sem: asyncio.Semaphore
    resume_at: float = 0.0
    strikes: int = 0
    users: int = 0


class Downloader:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.stats = Stats()
        self.hosts: dict[str, HostState] = {}
        self.inflight: dict[str, asyncio.Future[Outcome]] = {}
        self.unflushed: dict[str, Outcome] = {}  # outcomes queued but not yet committed
        # sha256 -> the file being or already stored with that content (until flushed);
        # read and written by the storing threads, hence the lock.
        self.sha_claims: dict[str, concurrent.futures.Future[Stored | None]] = {}
        self.claims_lock = threading.Lock()
        self.db_dir = settings.db_path.resolve().parent
        self.out = settings.out.resolve()
        # Shared by worker threads (queries never run on the loop), one at a time.
        self.reader_conn = sqlite3.connect(
            settings.db_path, isolation_level=None, check_same_thread=False
        )
        self.reader_lock = threading.Lock()
        self.reader_conn.execute("PRAGMA busy_timeout = 10000")
        self.reader_conn.execute("PRAGMA query_only = ON")
        self.advance: Callable[..., None] = lambda *a, **k: None
        self.run_started = _now()
        self._ticks = 0
        self._last_tick = 0.0
        self.global_sem: asyncio.Semaphore
        self.session: aiohttp.ClientSession
        self.writer: LedgerWriter

    # ---- bookkeeping

    def _on_flushed(self, urls: list[str], shas: list[str]) -> None:
        for url in urls:
            self.unflushed.pop(url, None)
        with self.claims_lock:
            for sha in shas:
                claim = self.sha_claims.get(sha)
                if claim is not None and claim.done():
                    self.sha_claims.pop(sha, None)

    def _record(self, outcome: Outcome) -> Outcome:
        self.unflushed[outcome.url] = outcome
        self.writer.final(outcome)
        self.stats.received += outcome.received
        if outcome.status == "done":
            if outcome.duplicate:
                self.stats.duplicates += 1
            else:
                self.stats.stored += 1
                self.stats.stored_bytes += outcome.size or 0
        elif outcome.status == "skipped":
            self.stats.skipped[outcome.reason] += 1
        else:
            self.stats.failed[outcome.reason] += 1
            log.info("failed %s: %s", outcome.url, outcome.error)
        return outcome

    async def _ledger_state(self, url: str) -> tuple[str, int, bool]:
        """(status, retryable, settled in this run) of a URL, unflushed outcomes first."""
        known = self.unflushed.get(url)
        if known is not None:
            return known.status, int(known.retryable), True
        row = await asyncio.to_thread(
            self._query, "SELECT status, retryable, updated_at FROM downloads WHERE url = ?", url
        )
        if row is None:
            return "new", 0, False
        return row[0], row[1], row[0] != "pending" and (row[2] or "") >= self.run_started

    def _query(self, sql: str, *params: object) -> tuple | None:
        with self.reader_lock:
            return self.reader_conn.execute(sql, params).fetchone()

    def _stored_with_sha(self, sha: str) -> Stored | None:
        row = self._query(
            "SELECT path, width, height, content_type FROM downloads "
            "WHERE sha256 = ? AND status = 'done' AND path IS NOT NULL LIMIT 1",
            sha,
        )
        if row and (self.db_dir / row[0]).is_file():
            return Stored(row[0], row[1] or 0, row[2] or 0, row[3] or "")
        return None

    def _host(self, host: str) -> HostState:
        state = self.hosts.get(host)
        if state is None:
            state = self.hosts[host] = HostState(asyncio.Semaphore(self.s.per_host))
        state.users += 1
        return state

    def _release_host(self, host: str, state: HostState) -> None:
        state.users -= 1
        if state.users == 0 and state.resume_at <= time.monotonic():
            self.hosts.pop(host, None)

    def _progress_info(self) -> str:
        elapsed = max(time.monotonic() - self.stats.started, 1e-9)
        errors = sum(self.stats.failed.values())
        return f"{self.stats.received / elapsed / 1e6:,.1f} MB/s · {errors:,} errors"

    # ---- per unit

    async def handle(self, unit: Unit) -> None:
        try:
            got_file = False
            for candidate in unit.candidates:
                status, retryable, this_run = await self._ledger_state(candidate.url)
                if status == "done":
                    got_file = True
                    break
                if status == "failed" and retryable and (this_run or not self.s.retry_failed):
                    break  # transient: no worse fallback meanwhile, one retry per run
                if status in ("failed", "skipped") and not retryable:
                    continue
                outcome = await self.fetch_shared(candidate, unit.image_id)
                if outcome.status == "done":
                    got_file = True
                    break
                if outcome.status == "failed" and outcome.retryable:
                    break  # may succeed later (--retry-failed): keep the best URL's turn
            if not got_file:
                self.stats.units_without_file += 1
        finally:
            self._tick(1)

    def _tick(self, n: int, *, force: bool = False) -> None:
        """Advance the bar at most every 0.2 s: redrawing per file costs more than a file."""
        self._ticks += n
        now = time.monotonic()
        if self._ticks and (force or now - self._last_tick >= 0.2):
            self.advance(self._ticks, info=self._progress_info())
            self._ticks, self._last_tick = 0, now

    async def fetch_shared(self, candidate: Candidate, image_id: str) -> Outcome:
        """One fetch per URL even when several results share it."""
        running = self.inflight.get(candidate.url)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.inflight[candidate.url] = future
        try:
            outcome = self._record(await self.fetch(candidate, image_id))
            future.set_result(outcome)
            return outcome
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            self.inflight.pop(candidate.url, None)

    async def fetch(self, candidate: Candidate, image_id: str) -> Outcome:
        """Retries with exponential backoff for transient failures; never for 404/410."""
        url = candidate.url
        host = host_of(url) or ""
        state = self._host(host)
        self.writer.pending(url, image_id, candidate.variant_type)
        attempts = 0
        try:
            while True:
                wait = state.resume_at - time.monotonic()
                if wait > MAX_HOST_WAIT:
                    return self._failed(
                        candidate,
                        image_id,
                        FetchFailure(
                            "host asks to wait",
                            f"{wait:.0f} s (Retry-After)",
                            retryable=True,
                            http_status=429,
                        ),
                        attempts,
                    )
                if wait > 0:
                    await asyncio.sleep(wait)  # holding no slot
                    continue
                body: Body | None = None
                failure: FetchFailure | None = None
                async with self.global_sem, state.sem:
                    if state.resume_at > time.monotonic():
                        continue  # the host said "slow down" while we queued
                    attempts += 1
                    try:
                        body = await self._get(url)
                    except FetchFailure as exc:
                        failure = exc
                if body is not None:
                    state.strikes = 0
                    try:
                        return await self._finish(candidate, image_id, body, attempts)
                    except FetchFailure as exc:
                        return self._failed(candidate, image_id, exc, attempts, body)
                assert failure is not None
                if failure.http_status in BACKOFF_STATUS:
                    state.strikes += 1
                    delay = failure.retry_after
                    if delay is None:
                        delay = min(60.0, 2.0**state.strikes)
                    delay *= 1 + random.uniform(0.05, 0.25)  # jitter: not all at once
                    state.resume_at = max(state.resume_at, time.monotonic() + delay)
                if not failure.retryable or attempts > self.s.retries:
                    return self._failed(candidate, image_id, failure, attempts)
                if failure.http_status not in BACKOFF_STATUS:
                    base = min(30.0, 0.5 * 2 ** (attempts - 1))
                    await asyncio.sleep(base * random.uniform(0.5, 1.0))
        finally:
            self._release_host(host, state)

    def _failed(
        self,
        candidate: Candidate,
        image_id: str,
        exc: FetchFailure,
        attempts: int,
        body: Body | None = None,
    ) -> Outcome:
        return Outcome(
            url=candidate.url,
            image_id=image_id,
            variant_type=candidate.variant_type,
            status="skipped" if exc.skipped else "failed",
            reason=exc.reason,
            error=str(exc),
            retryable=exc.retryable,
            http_status=exc.http_status if body is None else body.http_status,
            content_type=exc.content_type if body is None else body.content_type or None,
            attempts=attempts,
            received=body.size if body is not None else 0,
        )

    async def _get(self, url: str) -> Body:
        """One GET, the body streamed and hashed; :class:`FetchFailure` on any problem."""
        temp: Path | None = None
        handle = None
        try:
            async with self.session.get(url, proxy=self.s.proxy, max_redirects=10) as resp:
                ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if resp.status != 200:
                    raise FetchFailure(
                        f"HTTP {resp.status}",
                        resp.reason or "",
                        retryable=resp.status in RETRYABLE_STATUS,
                        http_status=resp.status,
                        content_type=ctype or None,
                        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                    )
                declared = resp.content_length
                if declared is not None and declared > self.s.max_bytes:
                    raise FetchFailure(
                        "too large",
                        f"Content-Length {declared:,} > --max-bytes {self.s.max_bytes:,}",
                        http_status=200,
                        content_type=ctype,
                    )
                digest = None  # bodies kept in memory are hashed in the storing thread
                buffer = bytearray()
                head = b""
                size = 0
                async for chunk in resp.content.iter_chunked(CHUNK):
                    if len(head) < 64:
                        head = (head + chunk)[:64]
                        if len(head) >= 64 and not sniff(head):
                            self._refuse_text(head, ctype)
                    size += len(chunk)
                    if size > self.s.max_bytes:
                        raise FetchFailure(
                            "too large",
                            f"more than --max-bytes {self.s.max_bytes:,}",
                            http_status=200,
                            content_type=ctype,
                        )
                    buffer += chunk
                    if digest is not None:
                        digest.update(chunk)
                    if len(buffer) >= SPILL_AT:
                        if digest is None:
                            digest = hashlib.sha256(buffer)
                        if handle is None:
                            temp = self._temp_path(url)
                            handle = await aiofiles.open(temp, "wb")
                        await handle.write(bytes(buffer))
                        buffer.clear()
                if not sniff(head):
                    self._refuse_text(head, ctype)
                if handle is not None:
                    await handle.close()
                    handle = None
                sha = digest.hexdigest() if digest is not None else ""
                body = Body(buffer, temp, size, sha, head, ctype, 200, str(resp.url))
                temp = None  # the body owns it now
                return body
        except FetchFailure:
            raise
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise FetchFailure(
                "timeout", f"no complete answer in {self.s.timeout:g} s", retryable=True
            ) from exc
        except aiohttp.TooManyRedirects as exc:
            raise FetchFailure("too many redirects") from exc
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise FetchFailure("invalid URL", one_line(exc, 120)) from exc
        except aiohttp.ClientPayloadError as exc:
            text = repr(exc)
            if "Reset" in text or "reset" in text:
                raise FetchFailure("connection reset", "during the body", retryable=True) from exc
            raise FetchFailure("truncated body", one_line(exc, 120), retryable=True) from exc
        except (aiohttp.ClientConnectionResetError, ConnectionResetError) as exc:
            raise FetchFailure("connection reset", retryable=True) from exc
        except aiohttp.ClientProxyConnectionError as exc:
            raise FetchFailure("proxy unreachable", one_line(exc, 120), retryable=True) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise FetchFailure("connection closed", "by the server", retryable=True) from exc
        except aiohttp.ClientResponseError as exc:
            raise FetchFailure(
                "bad HTTP response", one_line(exc, 120), http_status=exc.status
            ) from exc
        except aiohttp.ClientError as exc:
            raise FetchFailure("network error", one_line(exc, 120), retryable=True) from exc
        except OSError as exc:
            raise FetchFailure("disk error", one_line(exc, 120), retryable=True) from exc
        finally:
            if handle is not None:
                with suppress(OSError):
                    await handle.close()
            if temp is not None:
                temp.unlink(missing_ok=True)

    @staticmethod
    def _refuse_text(head: bytes, ctype: str) -> None:
        reason = _looks_like_text(head, ctype)
        if reason:
            raise FetchFailure(reason, http_status=200, content_type=ctype or None)

    def _temp_path(self, url: str, kind: str = "") -> Path:
        digest = hashlib.md5(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return self.out / f"{TEMP_PREFIX}{digest}-{os.getpid()}{kind}{TEMP_SUFFIX}"

    async def _finish(
        self, candidate: Candidate, image_id: str, body: Body, attempts: int
    ) -> Outcome:
        """Deduplicate by content, verify, apply the filters, store; the ledger outcome."""
        try:
            if body.size < self.s.min_bytes:
                raise FetchFailure(
                    f"smaller than --min-bytes {self.s.min_bytes:,}",
                    f"{body.size:,} bytes",
                    skipped=True,
                )
            stored, duplicate = await asyncio.to_thread(self._settle, candidate, image_id, body)
            return Outcome(
                url=candidate.url,
                image_id=image_id,
                variant_type=candidate.variant_type,
                status="done",
                http_status=body.http_status,
                content_type=stored.mime,
                path=stored.path,
                size=body.size,
                sha256=body.sha256,
                width=stored.width,
                height=stored.height,
                attempts=attempts,
                duplicate=duplicate,
                received=body.size,
            )
        finally:
            if body.temp is not None:
                body.temp.unlink(missing_ok=True)

    def _settle(self, candidate: Candidate, image_id: str, body: Body) -> tuple[Stored, bool]:
        """In a worker thread: hash, then point at a file with the same content or store.

        Returns (where the content is, whether it was there already). Two
        threads with the same content meet at the claim: the second waits for
        the first and records its file.
        """
        if not body.sha256:
            body.sha256 = hashlib.sha256(body.buffer).hexdigest()
        sha = body.sha256
        with self.claims_lock:
            claim = self.sha_claims.get(sha)
            mine: concurrent.futures.Future[Stored | None] | None = None
            if claim is None:
                mine = self.sha_claims[sha] = concurrent.futures.Future()
        if claim is not None:
            stored = claim.result()
            if stored is not None:
                return stored, True
            return self._store(candidate, image_id, body), False  # the first failed its checks
        assert mine is not None
        try:
            stored = self._stored_with_sha(sha)
            duplicate = stored is not None
            if stored is None:
                stored = self._store(candidate, image_id, body)
        except BaseException:
            mine.set_result(None)
            with self.claims_lock:
                self.sha_claims.pop(sha, None)
            raise
        mine.set_result(stored)
        return stored, duplicate

    def _store(self, candidate: Candidate, image_id: str, body: Body) -> Stored:
        """In a worker thread: decode check, the name from the content, temp file, rename."""
        temp = body.temp
        if temp is not None and body.buffer:
            with temp.open("ab") as handle:
                handle.write(body.buffer)
        fmt, width, height = inspect_image(temp if temp is not None else bytes(body.buffer))
        if self.s.min_side and min(width, height) < self.s.min_side:
            raise FetchFailure(
                f"smaller than --min-side {self.s.min_side}", f"{width}x{height}", skipped=True
            )
        ext, mime = FORMAT_FILES.get(fmt, (f".{fmt.lower() or 'img'}", f"image/{fmt.lower()}"))
        name = file_name(image_id, candidate.variant_type, width, height, candidate.url, ext)
        final = self.out / name
        if final.parent != self.out:  # cannot happen with safe names; never write outside
            raise FetchFailure("unsafe file name", name)
        if temp is None:
            temp = self._temp_path(candidate.url)
            try:
                temp.write_bytes(body.buffer)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        sidecar = "".join(
            f"{key}: {_one_line_value(value)}\n"
            for key, value in (
                ("url", candidate.url),
                ("origin_url", candidate.origin_url),
                ("image_id", image_id),
                ("variant_type", candidate.variant_type),
                ("width", width),
                ("height", height),
                ("final_url", body.final_url),
            )
        )
        side_temp = self._temp_path(candidate.url, "-txt")
        try:
            side_temp.write_text(sidecar, encoding="utf-8")
            os.replace(side_temp, final.with_suffix(".txt"))
            os.replace(temp, final)
        finally:
            side_temp.unlink(missing_ok=True)
            if temp is not body.temp:
                temp.unlink(missing_ok=True)
        try:
            recorded = final.relative_to(self.db_dir).as_posix()
        except ValueError:
            recorded = str(final)
        return Stored(recorded, width, height, mime)

    # ---- the run

    async def run(self) -> None:
        s = self.s
        self.global_sem = asyncio.Semaphore(s.concurrency)
        reader = WorkReader(s)
        self.writer = LedgerWriter(s.db_path, self._on_flushed)
        timeout = aiohttp.ClientTimeout(
            total=s.timeout, connect=min(10.0, s.timeout), sock_read=s.timeout
        )
        connector = aiohttp.TCPConnector(limit=s.concurrency, limit_per_host=0, ttl_dns_cache=300)
        headers = {"User-Agent": s.user_agent, "Accept": ACCEPT}
        tasks: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(max(4 * s.concurrency, 64))  # bounded pool of tasks
        started = 0
        try:
            total = await asyncio.get_running_loop().run_in_executor(
                reader.executor, reader.count_units
            )
            self.stats.units = total
            async with aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                headers=headers,
                trust_env=s.proxy is None,
            ) as self.session:
                bar_total = min(total, s.limit) if s.limit is not None else total
                try:
                    with progress("Download", bar_total) as advance:
                        self.advance = advance
                        while not reader.finished and (s.limit is None or started < s.limit):
                            units, counts = await reader.next_page()
                            self._count_before(counts)
                            if s.limit is None:
                                self._tick(sum(counts.values()))
                            for unit in units:
                                if s.limit is not None and started >= s.limit:
                                    break
                                await slots.acquire()
                                task = asyncio.create_task(self.handle(unit))
                                tasks.add(task)
                                task.add_done_callback(
                                    lambda t: (tasks.discard(t), slots.release())
                                )
                                started += 1
                            if self.writer.error is not None:
                                break
                        if tasks:
                            await asyncio.gather(*tasks)
                        self._tick(0, force=True)
                finally:
                    # Before the session closes: a cancelled download records nothing
                    # (its URL stays pending) and removes its temporary file.
                    for task in tasks:
                        task.cancel()
                    if tasks:
                        await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.stats.worked = started
            reader.close()
            self.writer.close()
            self.reader_conn.close()

    def _count_before(self, counts: Counter[str]) -> None:
        self.stats.satisfied_before += counts["done_before"]
        self.stats.failed_before_retryable += counts["failed_retryable"]
        self.stats.failed_before_permanent += counts["failed_permanent"]
        self.stats.no_url += counts["no_url"]


# ------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="5_Download_async.py",
        description=(
            "Download the images found by Yandex (step 5). Resumable: a re-run skips what is "
            "done and retries only what may succeed."
        ),
    )
    parser.add_argument(
        "--db",
        type=Path,
        help="source DB (asked on a terminal: 1 yandex_images.db, 2 vk_images.db; "
        "default without a terminal: yandex_images.db)",
    )
    parser.add_argument(
        "--out", type=Path, help="download folder (default: the DB's name without .db)"
    )
    parser.add_argument(
        "--what",
        choices=("originals", "all-variants"),
        help="originals: one file per result, the best URL first and the other copies as "
        "fallbacks (default); all-variants: every URL of every result, as the original script",
    )
    parser.add_argument("--limit", type=int, help="try at most N results (a trial run)")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="also retry earlier failures that may succeed (timeouts, 5xx, 429, resets)",
    )
    parser.add_argument("--concurrency", type=int, default=40, help="downloads at once (40)")
    parser.add_argument("--per-host", type=int, default=4, help="downloads at once per host (4)")
    parser.add_argument(
        "--timeout", type=float, default=40.0, help="seconds for one attempt of one URL (40)"
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=50 * 1024 * 1024,
        help="refuse bodies larger than this (50 MiB)",
    )
    parser.add_argument("--retries", type=int, default=3, help="retries of transient failures (3)")
    parser.add_argument("--proxy", help="HTTP proxy URL (default: HTTP_PROXY/HTTPS_PROXY if set)")
    parser.add_argument("--user-agent", default=DEFAULT_USER_AGENT, help="User-Agent header")
    parser.add_argument(
        "--min-side", type=int, default=0, help="skip images whose shorter side is below N px"
    )
    parser.add_argument("--min-bytes", type=int, default=0, help="skip files smaller than N bytes")
    return parser


def resolve_settings(args: argparse.Namespace) -> Settings:
    if args.db is None:
        choice = ask_choice(
            "Choose image source",
            [("1", "yandex_images.db -> yandex_images/"), ("2", "vk_images.db -> vk_images/")],
            flag="--db",
            default="1" if not is_interactive() else None,
        )
        args.db = Path(SOURCES[choice])
        if args.what is None:
            args.what = ask_choice(
                "What to download",
                [
                    ("originals", "one original per result (fallbacks: its other copies)"),
                    ("all-variants", "every copy of every result (as the original script)"),
                ],
                flag="--what",
                default="originals",
            )
    db_path = Path(args.db).expanduser()
    if not db_path.is_file():
        raise StepFailed(f"database not found: {db_path} (run 2_XHRtoDB.py first)")
    for name in ("concurrency", "per_host", "max_bytes"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must not be negative")
    if args.retries < 0 or args.min_side < 0 or args.min_bytes < 0:
        raise UsageError("--retries, --min-side and --min-bytes must not be negative")
    if args.proxy and normalize_url(args.proxy) is None:
        raise UsageError(f"--proxy must be an http(s) URL, not {args.proxy!r}")
    out = Path(args.out).expanduser() if args.out else db_path.with_suffix("")
    if out.resolve() == db_path.resolve():
        raise UsageError("--out must be a folder, not the DB itself")
    return Settings(
        db_path=db_path,
        out=out,
        what=args.what or "originals",
        limit=args.limit,
        retry_failed=args.retry_failed,
        concurrency=args.concurrency,
        per_host=args.per_host,
        timeout=args.timeout,
        max_bytes=args.max_bytes,
        proxy=args.proxy,
        user_agent=args.user_agent,
        min_side=args.min_side,
        min_bytes=args.min_bytes,
        retries=args.retries,
    )


def remove_temp_files(out: Path) -> int:
    """Temporary files a crashed run left (never a final name)."""
    removed = 0
    for path in out.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        with suppress(OSError):
            path.unlink()
            removed += 1
    return removed


@contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """One download per folder at a time (temp files of a live run are not leftovers)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one run at a time by convention
        yield
        return
    with (out / LOCK_NAME).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise StepFailed(f"another download is running into {out}") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def print_summary(settings: Settings, stats: Stats) -> None:
    elapsed = max(time.monotonic() - stats.started, 1e-9)
    fetched = (
        stats.stored + stats.duplicates + sum(stats.failed.values()) + sum(stats.skipped.values())
    )
    unit = "results" if settings.what == "originals" else "results and variants"
    rows: list[tuple[str, Any]] = [
        (f"{unit} in the DB", stats.units),
        ("had a file from an earlier run", stats.satisfied_before),
        ("tried in this run", stats.worked),
        ("  ended without a file", stats.units_without_file),
        ("URLs fetched", fetched),
        ("  downloaded (new files)", stats.stored),
        ("  same content as a file on disk", stats.duplicates),
        ("  failed", sum(stats.failed.values())),
    ]
    rows += [(f"    {reason}", n) for reason, n in stats.failed.most_common()]
    rows.append(("  skipped", sum(stats.skipped.values())))
    rows += [(f"    {reason}", n) for reason, n in stats.skipped.most_common()]
    if stats.failed_before_retryable:
        rows.append(("failed earlier, may succeed (--retry-failed)", stats.failed_before_retryable))
    if stats.failed_before_permanent:
        rows.append(("failed earlier for good (every URL)", stats.failed_before_permanent))
    if stats.no_url:
        rows.append(("no usable URL", stats.no_url))
    rows += [
        ("received", human_bytes(stats.received)),
        ("stored", human_bytes(stats.stored_bytes)),
        ("time", f"{elapsed:,.1f} s"),
        ("rate", f"{fetched / elapsed:,.1f} files/s, {stats.received / elapsed / 1e6:,.2f} MB/s"),
    ]
    console.print(table("Download summary", ("", ""), rows))


def ledger_totals(db_path: Path) -> str:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        counts = dict(conn.execute("SELECT status, COUNT(*) FROM downloads GROUP BY status"))
        retryable = conn.execute(
            "SELECT COUNT(*) FROM downloads WHERE status = 'failed' AND retryable"
        ).fetchone()[0]
    finally:
        conn.close()
    return (
        f"Ledger: {counts.get('done', 0):,} done, {counts.get('failed', 0):,} failed "
        f"({retryable:,} may succeed with --retry-failed), {counts.get('skipped', 0):,} skipped, "
        f"{counts.get('pending', 0):,} pending"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = resolve_settings(args)
    try:
        dbmod.connect(settings.db_path, create=False).close()  # migrate (backup first) if needed
    except (dbmod.SchemaError, sqlite3.DatabaseError) as exc:
        raise StepFailed(str(exc)) from exc
    settings.out.mkdir(parents=True, exist_ok=True)
    setup_logging(settings.out / LOG_NAME)
    with folder_lock(settings.out):
        leftovers = remove_temp_files(settings.out)
        console.print(
            f"Source: {settings.db_path}  ->  {settings.out}/  ({settings.what}, "
            f"{settings.concurrency} at once, {settings.per_host} per host"
            + (f", proxy {settings.proxy}" if settings.proxy else "")
            + ")"
        )
        if leftovers:
            console.print(f"Removed {leftovers} temporary file(s) left by an interrupted run.")
        downloader = Downloader(settings)
        # The loop thread releases the GIL for every socket call, hash and query;
        # with the default 5 ms switch interval it then waits behind the
        # verifier and ledger threads (a convoy). A short interval keeps it moving.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            asyncio.run(downloader.run())
        finally:
            sys.setswitchinterval(switch)
            print_summary(settings, downloader.stats)
            console.print(ledger_totals(settings.db_path))
    return 0
