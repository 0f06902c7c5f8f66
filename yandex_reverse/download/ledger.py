"""Step 5's ledger: one row per URL in the pipeline DB (table ``downloads``), and the
work read from the DB page by page.

The ledger makes every run resumable: a re-run skips what is done, retries
only what may succeed, and a URL shared by several results is fetched once.
Only the driver writes it, in batches, from :class:`LedgerWriter`'s thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import db as dbmod
from ..console import StepFailed, log, one_line
from ..i18n import _
from ..urls import normalize_url
from .fetch import Candidate
from .store import Stored

PAGE = 256  # results read from the DB at a time


@dataclass
class Unit:
    """One result (``originals``) or one variant (``all-variants``) and its URLs in order.

    ``states``: the ledger rows (status, retryable, updated_at) of its page's URLs as
    read with the page (shared by the page's units); ``snapshot``: how many ledger
    commits the driver had seen when that page was read (what those rows may lack).
    """

    image_id: str
    candidates: list[Candidate]
    states: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    snapshot: int = 0
    # The sidecar lines of its result (query photo, source page, title), read with the
    # page: see :meth:`LedgerReader.context`; None when not read (then asked per file).
    context: list[tuple[str, object]] | None = None


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


def now() -> str:
    """Like db.now_iso() but to the microsecond: "settled in this run" compares these."""
    return datetime.now().astimezone().isoformat(timespec="microseconds")


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

    Rows are gathered on the event loop and handed to the thread as one batch
    every :attr:`FLUSH_EVERY` seconds (or :attr:`BATCH` rows): one wake-up of
    the thread per batch, not per row (a wake per row made the writer fight
    the loop for the GIL on every file). ``on_flushed(outcomes)`` is called (on
    the event loop) after each commit with the outcomes it wrote, so the loop
    can drop what it kept in memory for rows not yet in the DB. Rows are
    stamped (``updated_at``) once per batch, in the writer's thread: the time
    they reach the ledger. :meth:`pending` and :meth:`final` are called on the
    loop; :meth:`close` hands over what is gathered and waits for the commit.
    """

    FLUSH_EVERY = 0.25
    BATCH = 1000

    def __init__(self, db_path: Path, on_flushed: Callable[[list[Outcome]], None]) -> None:
        self.db_path = db_path
        self.on_flushed = on_flushed
        self.loop = asyncio.get_running_loop()
        # rows gathered on the loop: (kind, row without updated_at, the outcome of a final row)
        self.rows: list[tuple[str, tuple[Any, ...], Outcome | None]] = []
        self.timer: asyncio.TimerHandle | None = None
        # batches handed to the thread, or None: stop
        self.queue: queue.SimpleQueue[list[tuple[str, tuple[Any, ...], Outcome | None]] | None] = (
            queue.SimpleQueue()
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self.thread.start()

    def _add(self, item: tuple[str, tuple[Any, ...], Outcome | None]) -> None:
        self.rows.append(item)
        if len(self.rows) >= self.BATCH:
            self._hand_over()
        elif self.timer is None:
            self.timer = self.loop.call_later(self.FLUSH_EVERY, self._hand_over)

    def _hand_over(self) -> None:
        """The rows gathered so far go to the writer thread as one batch."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.rows:
            self.queue.put(self.rows)
            self.rows = []

    def pending(self, url: str, image_id: str, variant_type: str) -> None:
        self._add(("pending", (url, image_id, variant_type), None))

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
        )
        self._add(("final", row, o))

    def close(self) -> None:
        """Flush everything gathered and stop (safe to call twice)."""
        if self.thread.is_alive():
            self._hand_over()
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise StepFailed(
                _("could not write the download ledger: {error}").format(error=one_line(self.error))
            )

    def _run(self) -> None:
        conn = dbmod.connect(self.db_path, create=False, migrate_schema=False)
        try:
            stop = False
            while not stop:
                first = self.queue.get()
                if first is None:
                    break
                batch = list(first)
                while len(batch) < self.BATCH:  # batches that queued meanwhile: one commit
                    try:
                        more = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch.extend(more)
                if batch and self.error is None:
                    try:
                        self._write(conn, batch)
                    except Exception as exc:  # reported by close(); the run goes on
                        log.exception("ledger write failed")
                        self.error = exc
        finally:
            conn.close()

    def _write(
        self, conn: sqlite3.Connection, batch: list[tuple[str, tuple, Outcome | None]]
    ) -> None:
        stamp = (now(),)
        # A pending row followed by its URL's final row in the same batch changes
        # nothing the transaction commits: it is left out.
        later: set[str] = set()  # URLs with a final row further on
        kept = []
        for item in reversed(batch):
            if item[0] == "final":
                later.add(item[1][0])
            elif item[1][0] in later:
                continue
            kept.append(item)
        batch = kept[::-1]
        with dbmod.transaction(conn):
            run: list[tuple] = []
            kind = batch[0][0]
            for item_kind, row, _outcome in batch:
                if item_kind != kind:
                    conn.executemany(_FINAL_SQL if kind == "final" else _PENDING_SQL, run)
                    run, kind = [], item_kind
                run.append(row + stamp)
            conn.executemany(_FINAL_SQL if kind == "final" else _PENDING_SQL, run)
        outcomes = [outcome for _kind, _row, outcome in batch if outcome is not None]
        with suppress(RuntimeError):  # the loop is gone at shutdown: nothing to tell
            self.loop.call_soon_threadsafe(self.on_flushed, outcomes)


class LedgerReader:
    """Point queries on the ledger from worker threads: one read-only connection per
    thread, so the checking threads never queue behind one another's queries."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.db_dir = db_path.resolve().parent
        self.local = threading.local()
        self.lock = threading.Lock()  # guards the list of connections
        self.conns: list[sqlite3.Connection] = []

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA query_only = ON")
            with self.lock:
                self.conns.append(conn)
            self.local.conn = conn
        return conn

    def query(self, sql: str, *params: object) -> tuple | None:
        return self._conn().execute(sql, params).fetchone()

    def stored_with_sha(self, sha: str) -> Stored | None:
        """A file this ledger records with that content, if it is still on disk."""
        row = self.query(
            "SELECT path, width, height, content_type FROM downloads "
            "WHERE sha256 = ? AND status = 'done' AND path IS NOT NULL LIMIT 1",
            sha,
        )
        if row and (self.db_dir / row[0]).is_file():
            return Stored(row[0], row[1] or 0, row[2] or 0, row[3] or "")
        return None

    def context(self, image_id: str) -> list[tuple[str, object]]:
        """Where a result was found, for its sidecar: the query photo(s), source page, title.

        :func:`page_contexts` reads the same for a page of results at once."""
        queries = self.query(
            "SELECT group_concat(query, ', ') FROM "
            "(SELECT query FROM query_results WHERE image_id = ? ORDER BY query)",
            image_id,
        )
        page = self.query(
            "SELECT coalesce(snippet_url, url), title FROM images WHERE id = ?", image_id
        )
        return [
            ("query_photo", queries[0] if queries else None),
            ("source_page", page[0] if page else None),
            ("title", page[1] if page else None),
        ]

    def close(self) -> None:
        with self.lock:
            for conn in self.conns:
                conn.close()
            self.conns.clear()


def ledger_totals(db_path: Path) -> tuple[dict[str, int], int]:
    """(rows per status, failed rows that may succeed with --retry-failed)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        counts = dict(conn.execute("SELECT status, COUNT(*) FROM downloads GROUP BY status"))
        retryable = conn.execute(
            "SELECT COUNT(*) FROM downloads WHERE status = 'failed' AND retryable"
        ).fetchone()[0]
    finally:
        conn.close()
    return counts, retryable


# ------------------------------------------------------------------ reading the work


class WorkReader:
    """Pages of work from the DB, read in one dedicated thread (its own connection)."""

    def __init__(self, db_path: Path, what: str, retry_failed: bool) -> None:
        self.db_path = db_path
        self.what = what
        self.retry_failed = retry_failed
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="work-reader"
        )
        self.conn: sqlite3.Connection | None = None
        self.phase = "images"
        self.after = 0
        self.finished = False

    def _connection(self) -> sqlite3.Connection:
        if self.conn is None:
            self.conn = sqlite3.connect(self.db_path, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 10000")
            self.conn.execute("PRAGMA query_only = ON")
        return self.conn

    def count_units(self) -> int:
        conn = self._connection()
        count = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        if self.what == "all-variants":
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
                verdict = classify(unit, states, self.retry_failed)
                if verdict == "work":
                    unit.states = states
                    units.append(unit)
                else:
                    counts[verdict] += 1
            if units:
                contexts = page_contexts(conn, {u.image_id for u in units})
                for unit in units:
                    unit.context = contexts.get(unit.image_id)
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
                if self.what == "all-variants":
                    self.phase, self.after = "variants", 0
                else:
                    self.finished = True
                return []
            self.after = rows[-1][0]
            if self.what == "all-variants":
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
    def _ledger_states(conn: sqlite3.Connection, urls: set[str]) -> dict[str, tuple[str, int, str]]:
        states: dict[str, tuple[str, int, str]] = {}
        ordered = list(urls)
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for url, status, retryable, updated_at in conn.execute(
                f"SELECT url, status, retryable, updated_at FROM downloads WHERE url IN ({marks})",
                chunk,
            ):
                states[url] = (status, retryable, updated_at or "")
        return states


def page_contexts(
    conn: sqlite3.Connection, image_ids: set[str]
) -> dict[str, list[tuple[str, object]]]:
    """:meth:`LedgerReader.context` of many results in two queries (per 500 ids).

    The same lines: the query photos sorted and joined with ", " (None when
    none), the first images row's source page and title (None when no row).
    """
    queries: dict[str, list[str]] = {}
    pages: dict[str, tuple[object, object]] = {}
    ordered = sorted(image_ids)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for image_id, query in conn.execute(
            f"SELECT image_id, query FROM query_results WHERE image_id IN ({marks}) "
            "AND query IS NOT NULL ORDER BY image_id, query",
            chunk,
        ):
            queries.setdefault(str(image_id), []).append(str(query))
        for image_id, page, title in conn.execute(
            f"SELECT id, coalesce(snippet_url, url), title FROM images WHERE id IN ({marks}) "
            "ORDER BY rowid",
            chunk,
        ):
            pages.setdefault(str(image_id), (page, title))
    contexts: dict[str, list[tuple[str, object]]] = {}
    for image_id in ordered:
        found = queries.get(image_id)
        page, title = pages.get(image_id, (None, None))
        contexts[image_id] = [
            ("query_photo", ", ".join(found) if found else None),
            ("source_page", page),
            ("title", title),
        ]
    return contexts


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


def classify(unit: Unit, states: dict[str, tuple[str, int, str]], retry_failed: bool) -> str:
    """What a unit needs, from the ledger: work, or why not.

    ``done_before``: one of its URLs is done; ``failed_retryable``: the next URL
    failed transiently earlier (only ``--retry-failed`` tries it again, and no
    worse fallback is taken meanwhile); ``failed_permanent``: every URL failed
    for good; ``no_url``: nothing fetchable at all.
    """
    if not unit.candidates:
        return "no_url"
    for candidate in unit.candidates:
        status, retryable, _updated = states.get(candidate.url, ("new", 0, ""))
        if status == "done":
            return "done_before"
        if status in ("new", "pending"):
            return "work"
        if status == "failed" and retryable:
            return "work" if retry_failed else "failed_retryable"
    return "failed_permanent"
