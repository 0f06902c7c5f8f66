"""Step 5 on Ray (``--executor ray``): workers fetch and check, the driver settles.

The driver is :class:`~.run.Downloader` itself: it streams the work from the
DB, tries each unit's URLs in order, counts, and is the only one that writes
the ledger and names final files. Only :meth:`~.run.Downloader.attempt`'s
"fetch and check this URL" moves to Ray:

- One long-lived Ray actor per worker CPU (:class:`FetchWorker`) holds one
  :class:`~.fetch.Fetcher` for the whole run: its HTTP session (kept-alive
  connections), its host states and its address verdicts (each host is
  resolved once per worker, not once per shard).
- URLs go into one queue per *host bucket* (a stable hash of the host); a
  bucket is sent as a shard (up to :data:`SHARD` URLs) to one worker at a
  time, so each host's URLs are on one worker at a time and ``--per-host``
  holds across the whole cluster. A worker runs up to :data:`SHARDS_PER_WORKER`
  shards at once (of different buckets), sharing its ``--concurrency``. Host
  pauses (429/503 Retry-After) travel with the bucket's next shard.
- A worker runs the same :class:`~.fetch.Fetcher` and checks as the local path
  and leaves each verified body in a temporary file in the output folder (a
  folder every node sees), its sidecar text (what the driver sent with the URL
  and what the checks found) in a second one; it returns the checked bodies
  and the failures. It touches no DB and no final name.
- The driver settles each shard's results in one thread, as the local path
  does (content dedupe, final name, the sidecar and the image renamed into
  place), and records them.
- A worker that dies is restarted by Ray and its shards are run again
  (:data:`TASK_RETRIES` times); a shard that still fails leaves its URLs
  ``pending`` for the next run, and its temporary files are removed at the
  end of the run. Since nothing is
  stored before the driver settles it, a crash of any process loses nothing
  and stores nothing twice.
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import raycluster
from ..console import console, esc, log, one_line
from ..i18n import N_, _
from ..urls import host_of
from .checks import FetchFailure
from .fetch import Body, Candidate, Checked, Fetcher, FetchOptions, HostState
from .ledger import Outcome, Unit
from .run import Downloader, Settings, Settler, failed_outcome, settle
from .store import Store, remove_temp_files, sidecar_text, temp_path

SHARD = 64  # URLs sent to a worker at once
SHARDS_PER_WORKER = 8  # shards (of different host buckets) a worker runs at once
GATHER = 0.05  # seconds a partly filled bucket waits for more URLs before it is sent
TASK_RETRIES = 3  # a shard whose worker died is run again this many times
WORKER_LOST = N_("worker lost")  # the reason of a shard lost TASK_RETRIES + 1 times


# ------------------------------------------------------------------ the worker side


# What the driver sends per URL: (url, image_id, variant_type, origin_url, sidecar context).
Job = tuple[str, str, str, str | None, list[tuple[str, object]]]


@dataclass
class ShardResult:
    """What a worker hands back: per URL a checked body (in a temp file) or the failure."""

    results: list[Checked | FetchFailure | OSError]
    sidecars: list[str | None]  # per URL: the temp file holding its sidecar text
    pauses: dict[str, float]  # host -> seconds it asked to be left alone from now


class FetchWorker:
    """A Ray actor (async): one :class:`~.fetch.Fetcher` for its whole life, no DB access."""

    def __init__(self, opts: FetchOptions, out: str) -> None:
        self.opts = opts
        self.out = Path(out)
        self.fetcher: Fetcher | None = None
        # Each body checked, spilled and its sidecar written by the local path's
        # Settler: on the event loop while that stays fast, else in batches in its
        # threads. Two hops a file through asyncio.to_thread (check, then spill) made
        # the loop and the executor's threads hand the GIL to and fro (futex calls).
        self.settler: Settler[Job, tuple[Checked, str]] | None = None

    async def ready(self) -> int:
        """Open the HTTP session (the driver waits for every worker's answer once)."""
        if self.fetcher is None:
            fetcher = Fetcher(self.opts, self.out)
            await fetcher.__aenter__()
            self.fetcher = fetcher
            self.settler = Settler(self.check)
        return os.getpid()

    def check(self, body: Body, job: Job, image_id: str) -> tuple[Checked, str]:
        """A body checked and spilled, its sidecar written (the two temporary files the
        driver renames into place); an error removes what was written."""
        assert self.fetcher is not None
        checked = self.fetcher.check_and_spill(body, job[0])
        try:
            return checked, self.write_sidecar(job, checked)
        except BaseException:
            if checked.body.temp is not None:
                checked.body.temp.unlink(missing_ok=True)
            raise

    async def fetch_shard(self, jobs: list[Job], pauses: dict[str, float]) -> ShardResult:
        """Fetch and check every URL of one host bucket; write each checked one's sidecar."""
        await self.ready()
        fetcher, settler = self.fetcher, self.settler
        assert fetcher is not None and settler is not None
        now = time.monotonic()
        for host, wait in pauses.items():
            state = fetcher.hosts.get(host)
            if state is None:
                state = fetcher.hosts[host] = HostState(asyncio.Semaphore(self.opts.per_host))
            state.resume_at = max(state.resume_at, now + wait)

        async def one(job: Job) -> tuple[Checked, str] | FetchFailure | OSError:
            try:
                body = await fetcher.fetch(job[0])
                return await settler.submit(body, job, job[1])
            except (FetchFailure, OSError) as exc:  # an OSError: the disk; the driver stops
                return exc

        urls = [job[0] for job in jobs]
        results: list[Checked | FetchFailure | OSError] = []
        sidecars: list[str | None] = []
        for result in await asyncio.gather(*(one(job) for job in jobs)):
            results.append(result[0] if isinstance(result, tuple) else result)
            sidecars.append(result[1] if isinstance(result, tuple) else None)
        now = time.monotonic()
        left = {}
        for host in {host_of(url) or "" for url in urls}:
            state = fetcher.hosts.get(host)
            if state is not None and state.resume_at > now:
                left[host] = state.resume_at - now
        return ShardResult(results, sidecars, left)

    def write_sidecar(self, job: Job, checked: Checked) -> str:
        """The sidecar text in a temporary file next to the body (the driver renames it)."""
        url, image_id, variant_type, origin_url, context = job
        text = sidecar_text(checked, Candidate(url, variant_type, origin_url), image_id, context)
        temp = temp_path(self.out, url, "-txt")
        try:
            temp.write_text(text, encoding="utf-8")
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return str(temp)


class RayStore(Store):
    """:class:`~.store.Store` that renames a worker's sidecar into place (no write here)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sidecars: dict[Path, Path] = {}  # a body's temp file -> its sidecar's

    def write_sidecar(
        self, side: Path, checked: Checked, candidate: Candidate, image_id: str
    ) -> None:
        temp = self.sidecars.pop(checked.body.temp, None) if checked.body.temp else None
        if temp is None:
            super().write_sidecar(side, checked, candidate, image_id)
        else:
            os.replace(temp, side)


@dataclass
class Pending:
    """A URL queued on the driver: what to settle its result with, and who waits."""

    candidate: Candidate
    image_id: str
    future: asyncio.Future[Outcome]


# ------------------------------------------------------------------ the driver side


class ShardDispatcher:
    """URLs in, checked bodies out: host buckets, one shard per busy bucket, sent to
    the least busy of the long-lived workers."""

    def __init__(self, downloader: RayDownloader, *, workers: int) -> None:
        opts, out = downloader.opts, downloader.out
        self.store = downloader.store
        self.context = downloader.sidecar_context
        ray = raycluster.require_ray()
        self.ray = ray
        actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=TASK_RETRIES)(FetchWorker)
        # Started now: they start up while the driver counts its work.
        self.workers = [actor.remote(opts, str(out)) for _ in range(max(1, workers))]
        for worker in self.workers:
            worker.ready.remote()
        self.load = [0] * len(self.workers)  # shards running on each worker
        self.opts = opts
        self.out = str(out)
        self.slots = SHARDS_PER_WORKER * len(self.workers)  # shards running at once
        self.buckets = 4 * self.slots  # more buckets than slots: a busy host never stalls all
        self.queues: list[deque[Pending]] = [deque() for _ in range(self.buckets)]
        self.since: list[float] = [0.0] * self.buckets  # when the oldest queued URL came
        self.busy: set[int] = set()
        self.pauses: dict[str, float] = {}  # host -> monotonic time it may be asked again
        self.running: dict[asyncio.Task[None], Any] = {}  # collector -> its Ray reference
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        self.next_bucket = 0
        self.shards = 0
        self.lost_shards = 0

    def bucket_of(self, url: str) -> int:
        return zlib.crc32((host_of(url) or "").encode("utf-8", "surrogatepass")) % self.buckets

    async def fetch_settled(self, candidate: Candidate, image_id: str) -> Outcome:
        """Fetched and checked on a Ray worker, settled here: the URL's outcome
        (:class:`FetchFailure` when it gave no usable image)."""
        future: asyncio.Future[Outcome] = self.loop.create_future()
        bucket = self.bucket_of(candidate.url)
        if not self.queues[bucket]:
            self.since[bucket] = time.monotonic()
        self.queues[bucket].append(Pending(candidate, image_id, future))
        self._wake(0.0)
        return await future

    def _wake(self, delay: float) -> None:
        if self.timer is None:
            self.timer = self.loop.call_later(delay, self._dispatch)

    def _dispatch(self) -> None:
        self.timer = None
        now = time.monotonic()
        waiting = False
        for step in range(self.buckets):
            bucket = (self.next_bucket + step) % self.buckets
            queue = self.queues[bucket]
            if bucket in self.busy or not queue:
                continue
            if len(queue) < SHARD and now - self.since[bucket] < GATHER:
                waiting = True
                continue
            if len(self.running) >= self.slots:
                break
            jobs = [queue.popleft() for _ in range(min(SHARD, len(queue)))]
            self.since[bucket] = now
            self._send(bucket, jobs)
            self.next_bucket = (bucket + 1) % self.buckets
        if waiting and len(self.running) < self.slots:
            self._wake(GATHER)

    def _send(self, bucket: int, jobs: list[Pending]) -> None:
        now = time.monotonic()
        hosts = {host_of(job.candidate.url) or "" for job in jobs}
        pauses = {h: self.pauses[h] - now for h in hosts if self.pauses.get(h, 0.0) > now}
        contexts: dict[str, list[tuple[str, object]]] = {}
        for job in jobs:
            if job.image_id not in contexts:
                contexts[job.image_id] = self.context(job.image_id)
        sent: list[Job] = [
            (job.candidate.url, job.image_id, job.candidate.variant_type,
             job.candidate.origin_url, contexts[job.image_id])
            for job in jobs
        ]  # fmt: skip
        worker = min(range(len(self.workers)), key=self.load.__getitem__)
        ref = self.workers[worker].fetch_shard.remote(sent, pauses)
        self.load[worker] += 1
        self.busy.add(bucket)
        self.shards += 1
        task = asyncio.ensure_future(self._collect(bucket, worker, ref, jobs))
        self.running[task] = ref

    async def _collect(self, bucket: int, worker: int, ref: Any, jobs: list[Pending]) -> None:
        try:
            try:
                shard: ShardResult = await ref
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # its worker died TASK_RETRIES + 1 times, or Ray failed
                log.warning("shard of %d URLs lost: %s", len(jobs), one_line(exc, 300))
                self.lost_shards += 1
                lost = FetchFailure(WORKER_LOST, one_line(exc, 120), retryable=True)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(lost)
                return
            now = time.monotonic()
            for host, wait in shard.pauses.items():
                self.pauses[host] = max(self.pauses.get(host, 0.0), now + wait)
            settled = await asyncio.to_thread(self._settle_shard, jobs, shard)
            for job, outcome in zip(jobs, settled, strict=True):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)
        finally:
            for job in jobs:  # the collector was cancelled (a stop): nobody waits for these
                if not job.future.done():
                    job.future.cancel()
            self.load[worker] -= 1
            self.busy.discard(bucket)
            self.running.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self._wake(0.0)

    def _settle_shard(self, jobs: list[Pending], shard: ShardResult) -> list[Outcome | Exception]:
        """In a thread, one hop per shard: each checked body settled as the local path does
        (its worker's sidecar renamed into place); leftovers of the others removed."""
        settled: list[Outcome | Exception] = []
        for job, result, side in zip(jobs, shard.results, shard.sidecars, strict=True):
            if isinstance(result, Exception):
                settled.append(result)
                continue
            temp = result.body.temp
            sidecar = Path(side) if side else None
            placed = False
            try:
                if job.future.done():  # its unit was cancelled: drop the body
                    settled.append(FetchFailure(WORKER_LOST, "cancelled"))
                    continue
                if temp is not None and sidecar is not None:
                    self.store.sidecars[temp] = sidecar
                outcome = settle(self.store, result, job.candidate, job.image_id)
                placed = not outcome.duplicate
                settled.append(outcome)
            except Exception as exc:  # an OSError stops the run; any other is a bug, raised
                settled.append(exc)
            finally:
                if temp is not None:
                    self.store.sidecars.pop(temp, None)
                    if not placed:
                        temp.unlink(missing_ok=True)
                if sidecar is not None and not placed:
                    sidecar.unlink(missing_ok=True)
        return settled

    async def close(self) -> None:
        """Stop what still runs (Ctrl-C, an error): cancel the tasks, wait for the collectors."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for task, ref in list(self.running.items()):
            with suppress(Exception):
                self.ray.cancel(ref)
            task.cancel()
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)
        for worker in self.workers:  # nothing of theirs is wanted any more
            with suppress(Exception):
                self.ray.kill(worker, no_restart=True)
        for queue in self.queues:
            for job in queue:
                job.future.cancel()
            queue.clear()


class RayDownloader(Downloader):
    """:class:`~.run.Downloader` with the fetch and the checks on Ray workers."""

    def __init__(self, settings: Settings, workers: int) -> None:
        super().__init__(settings)
        self.store: RayStore = RayStore(
            self.out, self.ledger.db_dir, self.ledger.stored_with_sha, self.sidecar_context
        )
        self.workers = workers
        self.dispatcher: ShardDispatcher

    async def run(self) -> None:
        self.dispatcher = ShardDispatcher(self, workers=self.workers)
        try:
            await super().run()
        finally:
            await self.dispatcher.close()
            # Bodies of shards whose worker died (or that were cancelled) are leftovers
            # now: no task runs any more, and the folder is locked for this run.
            removed = remove_temp_files(self.out)
            if removed:
                log.info("removed %d temporary file(s) of lost or cancelled shards", removed)

    def pool_size(self) -> int:
        """``--concurrency`` is per worker: keep every worker's requests busy (a unit
        waits in its bucket's queue and its shard's round trip, so more are in flight)."""
        return max(8 * self.s.concurrency, 128) * self.workers

    def park_size(self) -> int:
        """No unit waits for an address check here: as many started as at work."""
        return self.pool_size()

    def prime(self, unit: Unit) -> None:
        """Nothing: each worker checks its hosts' addresses (the driver looks nothing up)."""

    def checking(self, unit: Unit) -> bool:
        return False

    async def host_checked(self, url: str) -> None:
        """Nothing to wait for here: the worker checks the host before it fetches."""

    async def attempt(self, candidate: Candidate, image_id: str) -> Outcome:
        """The worker fetches and checks; the driver settles (same outcome as local)."""
        self.writer.pending(candidate.url, image_id, candidate.variant_type)
        try:
            return await self.dispatcher.fetch_settled(candidate, image_id)
        except FetchFailure as exc:
            return failed_outcome(candidate, image_id, exc)
        except OSError as exc:  # the shared folder's disk (here or on a worker): stop
            raise self.stop(exc) from exc


@contextmanager
def ray_downloader(settings: Settings) -> Iterator[RayDownloader]:
    """A Ray session for the run and the downloader that uses it."""
    with raycluster.session(settings.ray_address) as cluster:
        console.print(_("Executor: Ray, {cluster}").format(cluster=esc(cluster.describe())))
        yield RayDownloader(settings, workers=max(1, cluster.cpus))
