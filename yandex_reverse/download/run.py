"""The driver of step 5: work streamed from the DB into a bounded pool of tasks,
each unit's URLs tried in order, every outcome settled here and written to the ledger.

Work is read page by page; the network is limited globally and per host
(:class:`~.fetch.Fetcher`); bodies are checked in a worker thread
(:func:`~.fetch.check_body`) and settled by :class:`~.store.Store` (one file
per content); ledger writes are batched in a writer thread, off the event
loop, and flushed on exit and on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..console import console, esc, log, one_line, progress
from ..i18n import _
from .checks import FetchFailure
from .fetch import NETWORK_REASONS, Body, Candidate, Checked, Fetcher, FetchOptions, check_body
from .ledger import LedgerReader, LedgerWriter, Outcome, Unit, WorkReader, now
from .store import Store


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
    allow_private: bool = False
    executor: str = "local"  # or "ray": see ray_exec.py
    ray_address: str | None = None

    def fetch_options(self) -> FetchOptions:
        return FetchOptions(
            concurrency=self.concurrency,
            per_host=self.per_host,
            timeout=self.timeout,
            max_bytes=self.max_bytes,
            retries=self.retries,
            proxy=self.proxy,
            user_agent=self.user_agent,
            min_side=self.min_side,
            min_bytes=self.min_bytes,
            allow_private=self.allow_private,
        )


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

    @property
    def not_tried(self) -> int:
        """Units this run never reached (--limit, or a stop): neither counted nor tried."""
        seen = (
            self.satisfied_before
            + self.failed_before_retryable
            + self.failed_before_permanent
            + self.no_url
            + self.worked
        )
        return max(0, self.units - seen)


NETWORK_HINT_AFTER = 10  # network errors in a row before the hint about the connection


class Stopped(Exception):
    """The run stops: the local disk failed (``cause``); nothing more is started."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def failed_outcome(candidate: Candidate, image_id: str, exc: FetchFailure) -> Outcome:
    """The ledger outcome of a URL that gave no usable image."""
    return Outcome(
        url=candidate.url,
        image_id=image_id,
        variant_type=candidate.variant_type,
        status="skipped" if exc.skipped else "failed",
        reason=exc.reason,
        error=str(exc),
        retryable=exc.retryable,
        http_status=exc.http_status,
        content_type=exc.content_type,
        attempts=exc.attempts,
        received=exc.received,
    )


def settle(store: Store, checked: Checked, candidate: Candidate, image_id: str) -> Outcome:
    """Driver side: a checked body becomes a file (or points at one) and its ledger outcome."""
    stored, duplicate = store.settle(checked, candidate, image_id)
    body = checked.body
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
        attempts=body.attempts,
        duplicate=duplicate,
        received=body.size,
    )


A = TypeVar("A")  # what a body is settled with (the local path: its Candidate)
R = TypeVar("R")  # what settling it gives (the local path: its Outcome)


class Settler(Generic[A, R]):
    """Checks and settles received bodies in up to :attr:`THREADS` threads of its own, in batches.

    :meth:`submit` (on the event loop) queues a body; a thread that is free takes
    everything queued so far as one batch, and hands the outcomes back in one
    call: one wake-up each way per batch, not per file (a hop per file through
    the default executor made its threads and the loop fight for the GIL:
    hundreds of futex calls a file). A body whose download was cancelled
    meanwhile is not settled.
    """

    # Mostly the kernel's time (writing the file and its sidecar, the rename), with
    # the GIL released: more threads hide a write that blocks (at most the default
    # executor's count). But each thread more is one more to hand the GIL to and
    # from (each system call of a thread is a GIL hand-over, a futex wake and a
    # context switch on both sides), so a thread is added only when a body has
    # waited STUCK_AFTER seconds with none idle (a write that blocks on the disk, or
    # threads that get no CPU), not whenever all are busy, which with the loop as
    # busy as it is on 2 cores is nearly always: six threads, as that grew to, cost
    # ~0.1 ms more CPU per image than one where the writes never block.
    THREADS = min(32, (os.cpu_count() or 1) + 4)
    STUCK_AFTER = 0.2
    # Where a settle takes what it takes on tmpfs or in the page cache (~0.15 ms), it
    # is done on the loop itself: no thread, no GIL hand-over. After INLINE_SLOW_TIMES
    # settles that took over INLINE_SLOW (a disk that blocks; the first one pays for
    # Pillow's start) the rest of the run goes to the threads. A body spilled to a
    # temporary file, or over INLINE_MAX_BYTES, always goes to a thread: its checks and
    # writes grow with its size, and the loop must keep serving the other downloads.
    INLINE = True
    INLINE_SLOW = 0.005
    INLINE_SLOW_TIMES = 3
    INLINE_MAX_BYTES = 512 * 1024

    def __init__(self, work: Callable[[Body, A, str], R]) -> None:
        self.work = work
        self.loop = asyncio.get_running_loop()
        self.waiting: list[tuple[Body, A, str, asyncio.Future[R]]] = []
        self.queue: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.idle = 0
        self.waiting_since = 0.0  # when the oldest body waiting was queued
        self.inline = self.INLINE  # settled on the loop itself, until it proves slow
        self.slow = 0  # settles on the loop that took longer than INLINE_SLOW

    def submit(self, body: Body, candidate: A, image_id: str) -> asyncio.Future[R]:
        future: asyncio.Future[R] = self.loop.create_future()
        if self.inline and body.temp is None and body.size <= self.INLINE_MAX_BYTES:
            started = time.perf_counter()
            try:
                future.set_result(self.work(body, candidate, image_id))
            except Exception as exc:  # delivered to the download that waits
                future.set_exception(exc)
            if time.perf_counter() - started > self.INLINE_SLOW:
                self.slow += 1
                self.inline = self.slow < self.INLINE_SLOW_TIMES
            return future
        if not self.waiting:
            self.waiting_since = self.loop.time()
        self.waiting.append((body, candidate, image_id, future))
        if (
            not self.idle
            and len(self.threads) < self.THREADS
            and (not self.threads or self.loop.time() - self.waiting_since > self.STUCK_AFTER)
        ):
            thread = threading.Thread(target=self._run, name="settle", daemon=True)
            self.threads.append(thread)
            self.idle += 1
            thread.start()
        self._hand_over()
        return future

    def _hand_over(self) -> None:
        if self.waiting and self.idle:
            self.idle -= 1
            batch, self.waiting = self.waiting, []
            self.queue.put(batch)

    def _run(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None:
                return
            results: list[tuple[bool, Any] | None] = []
            for body, candidate, image_id, future in batch:
                if future.done():  # cancelled meanwhile: nobody records it
                    results.append(None)
                    continue
                try:
                    results.append((True, self.work(body, candidate, image_id)))
                except BaseException as exc:  # delivered to the download that waits
                    results.append((False, exc))
            try:
                self.loop.call_soon_threadsafe(self._deliver, batch, results)
            except RuntimeError:  # the loop is closed: nobody waits
                return

    def _deliver(self, batch: list[Any], results: list[tuple[bool, Any] | None]) -> None:
        self.idle += 1
        for item, result in zip(batch, results, strict=True):
            future = item[3]
            if result is None or future.done():
                continue
            if result[0]:
                future.set_result(result[1])
            else:
                future.set_exception(result[1])
        self._hand_over()

    def close(self) -> None:
        """Stop the threads (after the batch at hand; nothing waits for the rest)."""
        for waiting in self.waiting:
            waiting[3].cancel()
        self.waiting.clear()
        for _thread in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()
        self.threads.clear()


class Downloader:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.opts = settings.fetch_options()
        self.stats = Stats()
        self.inflight: dict[str, asyncio.Future[Outcome]] = {}
        self.unflushed: dict[str, Outcome] = {}  # outcomes queued but not yet committed
        # Outcomes committed after some page still at work read its ledger rows: that
        # page's rows lack them. Kept until every such page is done (bounded by pages
        # in flight, not by the run).
        self.recent: dict[str, Outcome] = {}
        self.commits: deque[tuple[int, list[Outcome]]] = deque()  # (commit number, outcomes)
        self.flushes = 0  # ledger commits seen by this loop
        self.live: Counter[int] = Counter()  # page snapshot -> its units not yet done
        self.out = settings.out.resolve()
        self.ledger = LedgerReader(settings.db_path)
        # image id -> (its sidecar lines read with its page, units of it started, not done)
        self.contexts: dict[str, tuple[list[tuple[str, object]], int]] = {}
        self.store = Store(
            self.out, self.ledger.db_dir, self.ledger.stored_with_sha, self.sidecar_context
        )
        self.advance: Callable[..., None] = lambda *a, **k: None
        self.run_started = now()
        self._ticks = 0
        self._last_tick = 0.0
        self.fetcher: Fetcher
        self.writer: LedgerWriter
        self.settler: Settler[Candidate, Outcome]
        self.fatal: OSError | None = None  # the disk error that stops the run
        self.slots: asyncio.Semaphore  # the bounded pool of units at work
        self.admitted: asyncio.Semaphore  # units started: at work, or parked
        self.started = 0  # units started
        self.tasks: set[asyncio.Task[None]] = set()
        self.network_streak = 0  # network errors in a row, across all hosts
        self.answered = False  # some host has answered with a body
        self.warned: set[str] = set()

    # ---- bookkeeping

    def _on_flushed(self, outcomes: list[Outcome]) -> None:
        self.flushes += 1
        for outcome in outcomes:
            if self.unflushed.get(outcome.url) is outcome:
                del self.unflushed[outcome.url]
            self.recent[outcome.url] = outcome
        self.commits.append((self.flushes, outcomes))
        self._forget_seen()
        self.store.forget([o.sha256 for o in outcomes if o.sha256])

    def _forget_seen(self) -> None:
        """Drop recent outcomes that every page still at work read from the ledger."""
        oldest = min(self.live) if self.live else self.flushes
        while self.commits and self.commits[0][0] <= oldest:
            for outcome in self.commits.popleft()[1]:
                if self.recent.get(outcome.url) is outcome:
                    del self.recent[outcome.url]

    def _release(self, snapshot: int) -> None:
        """A unit (or the page being read and started) no longer needs its snapshot."""
        left = self.live[snapshot] - 1
        if left > 0:
            self.live[snapshot] = left
        else:
            del self.live[snapshot]

    def sidecar_context(self, image_id: str) -> list[tuple[str, object]]:
        """A result's sidecar lines: as read with its page, else from the DB (any thread)."""
        known = self.contexts.get(image_id)
        return known[0] if known is not None else self.ledger.context(image_id)

    def _hold_context(self, unit: Unit) -> None:
        if unit.context is not None:
            held = self.contexts.get(unit.image_id)
            self.contexts[unit.image_id] = (unit.context, held[1] + 1 if held else 1)

    def _drop_context(self, unit: Unit) -> None:
        held = self.contexts.get(unit.image_id)
        if unit.context is not None and held is not None:
            if held[1] > 1:
                self.contexts[unit.image_id] = (held[0], held[1] - 1)
            else:
                del self.contexts[unit.image_id]

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

    def _ledger_state(self, url: str, unit: Unit) -> tuple[str, int, bool]:
        """(status, retryable, settled in this run) of a URL: this run's outcomes first
        (not yet committed, or committed after the unit's page was read), then the
        ledger row read with the page; no query."""
        known = self.unflushed.get(url) or self.recent.get(url)
        if known is not None:
            return known.status, int(known.retryable), True
        row = unit.states.get(url)
        if row is None:
            return "new", 0, False
        return row[0], row[1], row[0] != "pending" and row[2] >= self.run_started

    def _progress_info(self) -> str:
        elapsed = max(time.monotonic() - self.stats.started, 1e-9)
        errors = sum(self.stats.failed.values())
        return _("{mb} MB/s · errors: {n}").format(
            mb=f"{self.stats.received / elapsed / 1e6:,.1f}", n=f"{errors:,}"
        )

    def _tick(self, n: int, *, force: bool = False) -> None:
        """Advance the bar at most every 0.2 s: redrawing per file costs more than a file."""
        self._ticks += n
        now_ = time.monotonic()
        if self._ticks and (force or now_ - self._last_tick >= 0.2):
            self.advance(self._ticks, info=self._progress_info())
            self._ticks, self._last_tick = 0, now_

    def _on_attempt(self, failure: FetchFailure | None) -> None:
        """After every attempt: an offline start is said at once, a long streak of
        network errors gets a hint about the connection and --proxy."""
        if failure is None or failure.reason not in NETWORK_REASONS:
            self.network_streak = 0
            self.answered = self.answered or failure is None
            return
        self.network_streak += 1
        if not self.answered and "first" not in self.warned:
            self.warned.add("first")
            console.print(
                _(
                    "No answer from the network yet ({error}); retrying up to {n} times per URL."
                ).format(error=esc(one_line(failure, 100)), n=self.s.retries)
            )
        if self.network_streak >= NETWORK_HINT_AFTER and "streak" not in self.warned:
            self.warned.add("streak")
            if self.s.proxy:
                hint = _(
                    "{n} network errors in a row: check that this machine is online and that "
                    "the proxy {proxy} answers."
                ).format(n=self.network_streak, proxy=self.s.proxy)
            else:
                hint = _(
                    "{n} network errors in a row: check that this machine is online; behind a "
                    "proxy, pass --proxy URL (HTTP_PROXY / HTTPS_PROXY are used when set)."
                ).format(n=self.network_streak)
            console.print(f"[yellow]{esc(hint)}[/]")

    # ---- per unit

    async def handle(self, unit: Unit, holding: bool = False) -> None:
        """``holding``: the unit was started with a slot of the pool; else it takes one
        once the host of the first URL it fetches is checked."""
        try:
            got_file = False
            for candidate in unit.candidates:
                if self.fatal is not None:
                    return  # stopping: this unit stays as it was (pending or new)
                status, retryable, this_run = self._ledger_state(candidate.url, unit)
                if status == "done":
                    got_file = True
                    break
                if status == "failed" and retryable and (this_run or not self.s.retry_failed):
                    break  # transient: no worse fallback meanwhile, one retry per run
                if status in ("failed", "skipped") and not retryable:
                    continue
                if not holding:
                    # Parked until its host's address check is done (a slow DNS answer),
                    # holding no slot: the units of other hosts go on meanwhile.
                    await self.host_checked(candidate.url)
                    await self.slots.acquire()
                    holding = True
                    if self.fatal is not None:
                        return
                outcome = await self.fetch_shared(candidate, unit.image_id)
                if outcome.status == "done":
                    got_file = True
                    break
                if outcome.status == "failed" and outcome.retryable:
                    break  # may succeed later (--retry-failed): keep the best URL's turn
            if not got_file:
                self.stats.units_without_file += 1
        except Stopped:
            return
        finally:
            if holding:
                self.slots.release()
            self._drop_context(unit)
            self._release(unit.snapshot)
            self._tick(1)

    async def fetch_shared(self, candidate: Candidate, image_id: str) -> Outcome:
        """One fetch per URL even when several results share it."""
        running = self.inflight.get(candidate.url)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.inflight[candidate.url] = future
        try:
            outcome = self._record(await self.attempt(candidate, image_id))
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

    async def attempt(self, candidate: Candidate, image_id: str) -> Outcome:
        """Fetch, check and settle one URL: its outcome (not yet recorded)."""
        self.writer.pending(candidate.url, image_id, candidate.variant_type)
        body: Body | None = None
        try:
            body = await self.fetcher.fetch(candidate.url)
            return await self.settler.submit(body, candidate, image_id)
        except FetchFailure as exc:
            if body is not None:  # the body failed its checks
                exc.attempts, exc.received = body.attempts, body.size
                exc.http_status, exc.content_type = body.http_status, body.content_type or None
            return failed_outcome(candidate, image_id, exc)
        except OSError as exc:  # the local disk, not the URL: stop the run, record nothing
            raise self.stop(exc) from exc
        finally:
            if body is not None and body.temp is not None:
                body.temp.unlink(missing_ok=True)

    def stop(self, exc: OSError) -> Stopped:
        """The run stops on a disk error: the other downloads are cancelled (their URLs
        stay pending); the caller raises what this returns."""
        if self.fatal is None:
            self.fatal = exc
            log.error("stopping: %s", exc, exc_info=exc)
            current = asyncio.current_task()
            for task in self.tasks:  # the others stop now (their URLs stay pending)
                if task is not current:
                    task.cancel()
        return Stopped(exc)

    def pool_size(self) -> int:
        """Units in flight at once: enough to keep ``--concurrency`` requests busy."""
        return max(4 * self.s.concurrency, 64)

    def park_size(self) -> int:
        """Units started at once, those waiting for their host's address check included
        (a unit that waits holds no body and no connection: a few KB)."""
        return 8 * self.pool_size()

    def prime(self, unit: Unit) -> None:
        """The address check of the unit's first URL starts now (the lookup runs while
        the unit waits for its turn)."""
        if unit.candidates:
            self.fetcher.prime(unit.candidates[0].url)

    def checking(self, unit: Unit) -> bool:
        """Is the address check of the unit's first URL still under way?"""
        return bool(unit.candidates) and self.fetcher.checking(unit.candidates[0].url)

    async def host_checked(self, url: str) -> None:
        """Until the address check of ``url``'s host is done."""
        await self.fetcher.known_verdict(url)

    def _check_and_settle(self, body: Body, candidate: Candidate, image_id: str) -> Outcome:
        """In a worker thread: one hop for both halves (a remote worker splits them)."""
        return settle(self.store, check_body(body, self.opts), candidate, image_id)

    # ---- the run

    async def run(self) -> None:
        s = self.s
        reader = WorkReader(s.db_path, s.what, s.retry_failed)
        self.writer = LedgerWriter(s.db_path, self._on_flushed)
        self.settler = Settler(self._check_and_settle)
        tasks = self.tasks
        self.slots = asyncio.Semaphore(self.pool_size())  # units at work
        self.admitted = asyncio.Semaphore(self.park_size())  # units started (at work or parked)
        self.started = 0
        try:
            total = await asyncio.get_running_loop().run_in_executor(
                reader.executor, reader.count_units
            )
            self.stats.units = total
            async with Fetcher(self.opts, self.out) as self.fetcher:
                self.fetcher.on_attempt = self._on_attempt
                bar_total = min(total, s.limit) if s.limit is not None else total
                try:
                    with progress(_("Download"), bar_total) as advance:
                        self.advance = advance
                        while not reader.finished and (s.limit is None or self.started < s.limit):
                            snapshot = self.flushes  # taken before the page's rows are read
                            self.live[snapshot] += 1  # held while the page is read and started
                            try:
                                await self._start_page(reader, snapshot)
                            finally:
                                self._release(snapshot)
                            if self.writer.error is not None or self.fatal is not None:
                                break
                        if tasks:
                            ended = await asyncio.gather(*tasks, return_exceptions=True)
                            for result in ended:  # a bug in a task is not swallowed
                                if isinstance(result, Exception):
                                    raise result
                        self._tick(0, force=True)
                finally:
                    # Before the session closes: a cancelled download records nothing
                    # (its URL stays pending) and removes its temporary file.
                    for task in tasks:
                        task.cancel()
                    if tasks:
                        await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.stats.worked = self.started
            reader.close()
            self.settler.close()
            self.writer.close()
            self.ledger.close()
        if self.fatal is not None:
            raise Stopped(self.fatal)

    async def _start_page(self, reader: WorkReader, snapshot: int) -> None:
        """Read the next page of work and start its units (counted in ``started``)."""
        s = self.s
        units, counts = await reader.next_page()
        self._count_before(counts)
        if s.limit is None:
            self._tick(sum(counts.values()))
        tasks = self.tasks
        for unit in units[: s.limit - self.started if s.limit is not None else None]:
            self.prime(unit)
        for unit in units:
            if s.limit is not None and self.started >= s.limit:
                break
            await self.admitted.acquire()
            # A unit whose host is still being checked is parked (it takes its slot
            # later); the others wait here for a slot, as many at work as the pool.
            holding = not self.checking(unit)
            if holding:
                try:
                    await self.slots.acquire()
                except BaseException:
                    self.admitted.release()
                    raise
            unit.snapshot = snapshot
            self.live[snapshot] += 1
            self._hold_context(unit)
            task = asyncio.create_task(self.handle(unit, holding))
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), self.admitted.release()))
            self.started += 1

    def _count_before(self, counts: Counter[str]) -> None:
        self.stats.satisfied_before += counts["done_before"]
        self.stats.failed_before_retryable += counts["failed_retryable"]
        self.stats.failed_before_permanent += counts["failed_permanent"]
        self.stats.no_url += counts["no_url"]
