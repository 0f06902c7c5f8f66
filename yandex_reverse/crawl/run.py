"""The run: a pool of ``--max-tabs`` tabs takes the queries from a queue; each query is
checked, searched (retried after a solved captcha or a too-large upload), recorded in the
progress file and reported; Ctrl-C ends the tabs cleanly so the summary is still printed."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .. import console, i18n
from ..console import esc
from ..i18n import _
from .browser_session import BrowserSession, Tab
from .errors import CaptchaHit, Stopped, TooLarge, is_connect_error, log_failure
from .gate import Gate
from .job import QueryJob
from .photo import check_image, reencode_under
from .progress import PROGRESS_FILE, STATUS_LABELS, Outcome, Progress
from .queries import Query
from .settings import UPLOAD_LIMIT, Options

CONNECT_STOP_AFTER = 3  # the first N searches all fail to connect: stop the run


class Crawler:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.base_url = opts.base_url
        self.gate = Gate(opts.backoff, opts.max_captchas)
        self.progress = Progress(opts.xhr_dir / PROGRESS_FILE)
        self.interrupted = False
        self.switched_host = False

    def switch_host(self) -> bool:
        """yandex.com "under construction": go on with yandex.ru (one line, once)."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        if not host.endswith("yandex.com"):
            return False
        new_host = host[: -len("yandex.com")] + "yandex.ru"
        netloc = parts.netloc.replace(host, new_host, 1)
        old = self.base_url
        self.base_url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        if not self.switched_host:
            self.switched_host = True
            console.console.print(
                _("{old} says it is under construction: using {new}").format(
                    old=esc(old), new=esc(self.base_url)
                )
            )
        return True

    async def process(self, query: Query, tab: Tab) -> Outcome:
        if query.path is not None:
            reason = await asyncio.to_thread(check_image, query.path)
            if reason:
                log_failure(query.name, "check photo", reason)
                stat = query.path.stat()
                self.progress.record(
                    query.name,
                    status="not an image",
                    reason=reason,
                    size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns,
                )
                return Outcome(query.name, "not an image", stage="check photo", reason=reason)
        upload: Path | None = None
        try:
            if query.path is not None and query.path.stat().st_size >= UPLOAD_LIMIT:
                upload = await asyncio.to_thread(
                    reencode_under, query.path, UPLOAD_LIMIT, self.opts.xhr_dir
                )
            attempts = 1 if self.opts.headless else 3
            for attempt in range(attempts):
                try:
                    outcome = await self.attempt(query, tab, upload, last=attempt == attempts - 1)
                except TooLarge:
                    if upload is not None or query.path is None:
                        reason = _("the upload refused the photo as too large, even re-encoded")
                        self.progress.record(
                            query.name, status="failed", stage="upload", error=reason
                        )
                        return Outcome(query.name, "failed", stage="upload", reason=reason)
                    limit = min(UPLOAD_LIMIT, query.path.stat().st_size // 2)
                    upload = await asyncio.to_thread(
                        reencode_under, query.path, limit, self.opts.xhr_dir
                    )
                    outcome = await self.attempt(query, tab, upload, last=True)
                if outcome is not None:
                    return outcome
            raise AssertionError("unreachable")
        finally:
            if upload is not None:
                upload.unlink(missing_ok=True)

    async def attempt(
        self, query: Query, tab: Tab, upload: Path | None, *, last: bool
    ) -> Outcome | None:
        job = QueryJob(self, query, upload)
        page = await asyncio.wait_for(tab.page(), self.opts.timeout)
        keep = False
        try:
            end = await asyncio.wait_for(job.run(page), self.opts.tab_timeout)
            keep = True
        except TooLarge:
            raise
        except CaptchaHit as exc:
            if not self.opts.headless and not last and await self.wait_for_solution(page):
                return None  # solved by the user: start this query again
            pause = self.gate.hit()
            log_failure(query.name, job.stage, f"captcha at {exc}")
            self.progress.record(query.name, status="captcha", stage=job.stage)
            why = _("captcha")
            if pause:
                why = _("captcha; new tabs wait {seconds} s").format(seconds=f"{pause:g}")
            return Outcome(query.name, "captcha", stage=job.stage, reason=why)
        except (Exception, asyncio.TimeoutError) as exc:
            if isinstance(exc, asyncio.TimeoutError):
                exc = TimeoutError(
                    _("gave up after {seconds} s").format(seconds=f"{self.opts.tab_timeout:g}")
                )
            elif is_connect_error(exc):
                self.gate.cannot_connect(min(CONNECT_STOP_AFTER, self.total))
            log_failure(query.name, job.stage, exc)
            reason = console.one_line(exc).split("Call log:")[0].strip()
            self.progress.record(query.name, status="failed", stage=job.stage, error=reason)
            return Outcome(
                query.name, "failed", bad_files=job.bad_files, stage=job.stage, reason=reason
            )
        finally:
            job.detach(page)
            if not keep:
                await tab.drop()  # after a failure or a captcha, the next search gets a new page
        self.gate.ok()
        results = len(set().union(*job.pages.values())) if job.pages else 0
        out = Outcome(
            query.name, "done", len(job.pages), results, job.sites or 0, end, job.bad_files
        )
        record: dict[str, Any] = {"status": "done"}
        if query.path is not None:
            stat = query.path.stat()
            record.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        else:
            record["url"] = query.url
        record.update(
            tabs=list(self.opts.tabs),
            xhr_files=out.xhr_files,
            results=results,
            pages=sorted(job.pages),
            end=end,
            bad_files=job.bad_files,
        )
        if job.sites is not None:
            record["sites"] = job.sites
        self.progress.record(query.name, **record)
        return out

    async def wait_for_solution(self, page: Any) -> bool:
        """Headed: let the user solve the captcha in the tab, then go on."""
        console.console.print(
            "[yellow]" + _("Captcha: solve it in the browser window…") + "[/yellow]"
        )
        sel = self.opts.selectors
        try:
            await page.wait_for_url(
                lambda u: not urlsplit(u).path.startswith(sel["captcha_path"]),
                timeout=self.opts.captcha_wait * 1000,
            )
        except Exception:
            return False
        return True

    async def worker(
        self, session: BrowserSession, index: int, queue: asyncio.Queue[Query], done: Any
    ) -> None:
        """The ``index``-th tab: take queries one after another, pausing --delay between two."""
        tab = Tab(session, index)
        try:
            await self.work(tab, queue, done)
        finally:
            await tab.drop()

    async def work(self, tab: Tab, queue: asyncio.Queue[Query], done: Any) -> None:
        first = True
        while True:
            try:
                query = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            low, high = self.opts.delay
            if not first and high > 0:
                await asyncio.sleep(random.uniform(low, high))
            first = False
            try:
                await self.gate.wait()
            except Stopped:
                why = (
                    _("stopped: no connection")
                    if self.gate.stopped == "connect"
                    else _("stopped after captchas")
                )
                done(Outcome(query.name, "not started", reason=why))
                continue
            try:
                outcome = await self.process(query, tab)
            except Exception as exc:  # the tab itself broke: this query failed, the run goes on
                log_failure(query.name, "open tab", exc)
                reason = console.one_line(exc).split("Call log:")[0].strip()
                self.progress.record(query.name, status="failed", stage="open tab", error=reason)
                outcome = Outcome(query.name, "failed", stage="open tab", reason=reason)
            done(outcome)

    async def run(self, todo: list[Query]) -> list[Outcome]:
        opts = self.opts
        self.total = len(todo)
        outcomes: list[Outcome] = []
        loop = asyncio.get_running_loop()
        async with BrowserSession(opts) as session:
            queue: asyncio.Queue[Query] = asyncio.Queue()
            for query in todo:
                queue.put_nowait(query)
            with console.progress(_("Queries"), total=len(todo)) as advance:

                def done(outcome: Outcome) -> None:
                    outcomes.append(outcome)
                    advance(info=outcome.name)
                    self.report(outcome)

                tasks = [
                    asyncio.ensure_future(self.worker(session, index, queue, done))
                    for index in range(min(max(1, opts.max_tabs), len(todo)))
                ]

                def interrupt() -> None:
                    self.interrupted = True
                    for task in tasks:
                        task.cancel()

                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(signal.SIGINT, interrupt)
                try:
                    await asyncio.gather(*tasks, return_exceptions=True)
                finally:
                    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                        loop.remove_signal_handler(signal.SIGINT)
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        finished = {o.name for o in outcomes}
        for query in todo:
            if query.name not in finished:
                status = "interrupted" if self.interrupted else "not started"
                outcomes.append(Outcome(query.name, status))
        return outcomes

    def report(self, outcome: Outcome) -> None:
        if outcome.status in ("failed", "captcha", "not an image"):
            color = "yellow" if outcome.status == "captcha" else "red"
            status = i18n._(STATUS_LABELS[outcome.status])  # marked with N_() above
            console.console.print(
                f"[{color}]{esc(status)}[/{color}] {esc(outcome.name)} "
                f"({esc(outcome.stage)}): {esc(outcome.reason)}"
            )
