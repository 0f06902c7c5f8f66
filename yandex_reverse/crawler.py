"""Step 1: upload each query photo to Yandex Images, open "Похожие", save every result page.

For each photo a browser tab opens the start page, uploads the photo, opens
the "similar" tab and loads every result (scroll, then "Показать ещё" until
the end). The server-rendered first page is saved from its ``data-state`` as
``XHR/<photo>_xhr_000.json``; every ``serpList/fetch`` answer as
``..._xhr_<p>.json`` (``p`` = the page the XHR asked for), atomically. The
tab waits on events (a response, the button's state), never on fixed sleeps.
``XHR/.progress.json`` records finished photos so a re-run skips them.
Selectors live in ``selectors.json``; ``--selectors FILE`` overrides them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from . import console, serp
from .browser import BrowserNotFound, find_browser
from .cli import add_common_flags
from .console import StepFailed, UsageError, log
from .db import now_iso
from .fsutil import atomic_write_text

DEFAULT_SELECTORS = Path(__file__).with_name("selectors.json")
QUERY_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
PROGRESS_FILE = ".progress.json"
ERRORS_FILE = "errors.log"
DEFAULT_BASE_URL = "https://yandex.ru/images/"
DEFAULT_BACKOFF = (60.0, 300.0, 600.0)
END_GRACE_S = 2.0  # how long a page with no "more" button may take to show one
SNIPPET_CHARS = 5000  # as the original: the start of a bad body is kept
LAUNCH_ARGS = (
    "--disable-blink-features=AutomationControlled",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--mute-audio",
)

# "error" when the error notice shows, "gone" when no visible "more" button is
# left, "ready" when it can be clicked; falsy (keep waiting) while it is busy.
_SETTLE_JS = """([more, err]) => {
  if (document.querySelector(err)) return 'error';
  const b = [...document.querySelectorAll(more)].find(x => x.getClientRects().length > 0);
  if (!b) return 'gone';
  return b.disabled || b.getAttribute('aria-disabled') === 'true' ? false : 'ready';
}"""
_SHOWN_JS = """([more, err]) => !!document.querySelector(err) ||
  [...document.querySelectorAll(more)].some(x => x.getClientRects().length > 0)"""


class CaptchaHit(Exception):
    """Yandex answered with a captcha."""


class StageError(Exception):
    """A step of the flow failed in a way worth one clear line."""


class Stopped(Exception):
    """The run stopped (too many captchas in a row) before this photo started."""


# ----------------------------------------------------------------- settings


def load_selectors(path: Path | None) -> dict[str, str]:
    """The default selectors, with a user's file laid over them (unknown keys refused)."""
    selectors = json.loads(DEFAULT_SELECTORS.read_text(encoding="utf-8"))
    if path is not None:
        try:
            user = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--selectors {path}: {console.one_line(exc)}") from exc
        if not isinstance(user, dict):
            raise UsageError(f"--selectors {path}: expected a JSON object")
        unknown = sorted(k for k in user if k not in selectors and not k.startswith("_"))
        if unknown:
            raise UsageError(f"--selectors {path}: unknown keys {', '.join(unknown)}")
        selectors.update({k: v for k, v in user.items() if isinstance(v, str)})
    return {k: v for k, v in selectors.items() if not k.startswith("_")}


def find_queries(folder: Path) -> list[Path]:
    """The query photos: top level of ``folder``, as the original (plus .png/.webp)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in QUERY_EXTENSIONS
    )


@dataclass
class Options:
    images: Path
    xhr_dir: Path
    max_tabs: int = 10
    headless: bool = True
    base_url: str = DEFAULT_BASE_URL
    selectors: dict[str, str] = field(default_factory=lambda: load_selectors(None))
    force: bool = False
    browser: str | None = None
    timeout: float = 30.0
    tab_timeout: float = 600.0
    max_captchas: int = 3
    backoff: tuple[float, ...] = DEFAULT_BACKOFF
    captcha_wait: float = 600.0


class Progress:
    """``XHR/.progress.json``: one record per query photo (hidden: step 2 skips it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.images: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                self.images = json.loads(path.read_text(encoding="utf-8")).get("images", {})
            except (OSError, ValueError, AttributeError):
                log.warning("progress file %s unreadable; starting afresh", path)

    def done(self, path: Path) -> bool:
        """Finished, and the photo is still the one that was searched (same size and mtime)."""
        record = self.images.get(path.name, {})
        if record.get("status") != "done":
            return False
        stat = path.stat()
        return (
            record.get("size", stat.st_size) == stat.st_size
            and record.get("mtime_ns", stat.st_mtime_ns) == stat.st_mtime_ns
        )

    def record(self, name: str, **fields: Any) -> None:
        self.images[name] = {**fields, "updated": now_iso()}
        payload = {"version": 1, "images": self.images}
        atomic_write_text(self.path, json.dumps(payload, ensure_ascii=False, indent=2))


class CaptchaGate:
    """Pauses new tabs after a captcha (backoff ladder) and stops after K in a row."""

    def __init__(self, backoff: tuple[float, ...], max_in_row: int) -> None:
        self.backoff = backoff or DEFAULT_BACKOFF
        self.max_in_row = max_in_row
        self.in_row = 0
        self.resume_at = 0.0
        self.stopped = False

    async def wait(self) -> None:
        while True:
            if self.stopped:
                raise Stopped
            delay = self.resume_at - time.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(delay)

    def hit(self) -> float:
        self.in_row += 1
        if self.in_row >= self.max_in_row:
            self.stopped = True
            return 0.0
        pause = self.backoff[min(self.in_row - 1, len(self.backoff) - 1)]
        self.resume_at = max(self.resume_at, time.monotonic() + pause)
        return pause

    def ok(self) -> None:
        self.in_row = 0


@dataclass
class Outcome:
    name: str
    status: str  # done | failed | captcha | not started
    xhr_files: int = 0
    results: int = 0
    end: str = ""
    bad_files: int = 0
    stage: str = ""
    reason: str = ""


def log_failure(name: str, stage: str, exc: BaseException | str) -> None:
    """One block in ``errors.log``, as the original: file, stage, type, message, traceback."""
    if isinstance(exc, BaseException):
        kind, message = type(exc).__name__, str(exc)
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    else:
        kind, message, trace = "Error", exc, ""
    log.error(
        "\nFile: %s\nStage: %s\nType: %s\nMessage: %s\nTraceback:\n%s%s",
        name,
        stage,
        kind,
        message,
        trace or "(none)\n",
        "-" * 60,
    )


# ----------------------------------------------------------------- one photo


class ImageJob:
    """The flow for one query photo in one tab; response bodies are read as they come."""

    def __init__(self, crawler: Crawler, path: Path) -> None:
        self.crawler = crawler
        self.opts = crawler.opts
        self.sel = crawler.opts.selectors
        self.path = path
        self.name = path.name
        self.stage = "start"
        self.pages: dict[int, set[str]] = {}
        self.bad_files = 0
        self.fetches = 0
        self.end_404 = False
        self.captcha = False
        self.tasks: list[asyncio.Task[None]] = []

    # ---------------------------------------------- recognising responses

    def is_fetch(self, url: str) -> bool:
        parts = urlsplit(url)
        if self.sel["xhr_path"] not in parts.path or self.sel["xhr_format"] not in parts.query:
            return False
        key = self.sel["xhr_key"]
        return quote(key, safe="") in parts.query or key in unquote(parts.query)

    def is_captcha_url(self, url: str) -> bool:
        return urlsplit(url).path.startswith(self.sel["captcha_path"])

    def on_response(self, response: Any) -> None:
        if self.is_captcha_url(response.url):
            self.captcha = True
        with contextlib.suppress(Exception):
            if self.sel["captcha_header"].lower() in response.headers:
                self.captcha = True
        if self.is_fetch(response.url):
            self.fetches += 1
            self.tasks.append(asyncio.ensure_future(self.capture(response)))

    async def capture(self, response: Any) -> None:
        """Save one serpList/fetch answer (read now: after navigation it is gone)."""
        query = parse_qs(urlsplit(response.url).query)
        try:
            page = int(query.get("p", ["0"])[0])
        except ValueError:
            page = 900 + self.fetches
        stem = f"{self.name}_xhr_{page:03d}"
        status = response.status
        if status == 404:  # a 404 (empty body) is the normal end of the results
            self.end_404 = True
            return
        try:
            body = await response.body()
        except Exception as exc:
            self.bad_files += 1
            log_failure(self.name, f"read XHR p={page}", exc)
            return
        ctype = response.headers.get("content-type", "")
        xhr_dir = self.opts.xhr_dir
        if not 200 <= status < 300:
            log_failure(self.name, f"XHR p={page}", f"HTTP {status} from {response.url}")
            return
        if not body.strip():
            self.bad_files += 1
            log_failure(self.name, f"XHR p={page}", f"empty body from {response.url}")
            return
        text = body.decode("utf-8", errors="replace")
        if "json" not in ctype.lower():
            self.bad_files += 1
            note = f"URL: {response.url}\nStatus: {status}\nContent-Type: {ctype}\n\n{text[:SNIPPET_CHARS]}"
            atomic_write_text(xhr_dir / f"{stem}_NOT_JSON.txt", note)
            log_failure(self.name, f"XHR p={page}", f"not JSON ({ctype or 'no content type'})")
            return
        try:
            data = json.loads(text)
        except ValueError as exc:
            self.bad_files += 1
            atomic_write_text(xhr_dir / f"{stem}_CORRUPT_JSON.txt", text[:SNIPPET_CHARS])
            log_failure(self.name, f"XHR p={page}", exc)
            return
        if isinstance(data, dict) and data.get("type") == "captcha":
            self.captcha = True
            return
        self.save(page, data)

    def save(self, page: int, data: Any) -> None:
        path = self.opts.xhr_dir / f"{self.name}_xhr_{page:03d}.json"
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2))
        try:
            self.pages[page] = set(serp.find_entities(data))
        except serp.FormatError:
            self.pages[page] = set()

    # ---------------------------------------------- the flow

    async def check_captcha(self, page: Any) -> None:
        if self.captcha or self.is_captcha_url(page.url):
            raise CaptchaHit(page.url)
        with contextlib.suppress(Exception):
            if await page.locator(self.sel["captcha"]).count():
                raise CaptchaHit(page.url)

    async def run(self, page: Any) -> str:
        """Upload, open "similar", save everything; return how the results ended."""
        sel = self.sel
        page.on("response", self.on_response)
        self.stage = "open start page"
        await page.goto(self.opts.base_url, wait_until="domcontentloaded")
        await self.check_captcha(page)
        cookie = page.locator(sel["cookie_accept"])
        if await cookie.count():
            with contextlib.suppress(Exception):
                await cookie.first.click(timeout=2000)

        self.stage = "open upload panel"
        await page.locator(sel["camera_button"]).first.click()
        await page.locator(sel["upload_panel"]).first.wait_for(state="visible")

        self.stage = "upload"
        await page.locator(sel["file_input"]).first.set_input_files(self.path)
        await self.wait_upload(page)
        await self.check_captcha(page)

        self.stage = "open similar"
        await page.locator(sel["similar_tab"]).first.click()
        await page.wait_for_url(
            lambda u: sel["similar_url_marker"] in u or self.is_captcha_url(u),
            wait_until="domcontentloaded",
        )
        await self.check_captcha(page)

        self.stage = "first page"
        root = page.locator(sel["data_state"]).first
        await root.wait_for(state="attached")
        raw = await root.get_attribute("data-state") or ""
        try:
            self.save(0, json.loads(raw))
        except ValueError as exc:
            self.bad_files += 1
            atomic_write_text(
                self.opts.xhr_dir / f"{self.name}_xhr_000_CORRUPT_JSON.txt", raw[:SNIPPET_CHARS]
            )
            log_failure(self.name, self.stage, exc)

        self.stage = "load more"
        end = await self.load_all(page)
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.check_captcha(page)
        return end

    async def wait_upload(self, page: Any) -> None:
        """Wait for the search page, a captcha, or the upload error, whichever comes."""
        sel = self.sel
        nav = asyncio.ensure_future(
            page.wait_for_url(
                lambda u: sel["search_path"] in urlsplit(u).path or self.is_captcha_url(u),
                wait_until="domcontentloaded",
            )
        )
        err = asyncio.ensure_future(
            page.locator(sel["upload_error"]).first.wait_for(state="attached")
        )
        done, pending = await asyncio.wait({nav, err}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if err in done and err.exception() is None:
            text = ""
            with contextlib.suppress(Exception):
                text = await page.locator(sel["upload_error"]).first.locator("..").inner_text()
            raise StageError(
                f"Yandex refused the upload{': ' + text.strip() if text.strip() else ''}"
            )
        nav.result()

    async def load_all(self, page: Any) -> str:
        """Scroll, then click "Показать ещё" until the button goes, an error, or a 404."""
        args = [self.sel["more_button"], self.sel["error_end"]]
        timeout_ms = self.opts.timeout * 1000
        await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        idle_clicks = 0
        first = True
        while True:
            await self.check_captcha(page)
            if self.end_404:
                return "404"
            try:
                handle = await page.wait_for_function(_SETTLE_JS, arg=args, timeout=timeout_ms)
                state = await handle.json_value()
            except Exception:
                await self.check_captcha(page)
                raise
            if self.end_404:
                return "404"
            if state == "error":
                return "error"
            if state == "gone":
                await self.check_captcha(page)
                if not (first and self.fetches == 0):
                    return "button"
                # the live page may show the button only after a scroll-load
                try:
                    await page.wait_for_function(_SHOWN_JS, arg=args, timeout=END_GRACE_S * 1000)
                except Exception:
                    if self.fetches == 0:
                        return "button"
                first = False
                continue
            first = False
            before = self.fetches
            try:
                async with page.expect_response(lambda r: self.is_fetch(r.url), timeout=timeout_ms):
                    await page.locator(self.sel["more_button"]).first.click()
            except Exception:
                await self.check_captcha(page)
                if self.fetches == before:
                    idle_clicks += 1
                    if idle_clicks >= 3:
                        raise StageError("the 'more' button does nothing") from None
                    continue
            idle_clicks = 0


# ----------------------------------------------------------------- the run


class Crawler:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.gate = CaptchaGate(opts.backoff, opts.max_captchas)
        self.progress = Progress(opts.xhr_dir / PROGRESS_FILE)

    async def process(self, path: Path, new_page: Any, sem: asyncio.Semaphore) -> Outcome:
        async with sem:
            try:
                await self.gate.wait()
            except Stopped:
                return Outcome(path.name, "not started", reason="stopped after captchas")
            attempts = 1 if self.opts.headless else 3
            for attempt in range(attempts):
                outcome = await self.attempt(path, new_page, last=attempt == attempts - 1)
                if outcome is not None:
                    return outcome
            raise AssertionError("unreachable")

    async def attempt(self, path: Path, new_page: Any, *, last: bool) -> Outcome | None:
        job = ImageJob(self, path)
        page, close = await asyncio.wait_for(new_page(), self.opts.timeout)
        try:
            end = await asyncio.wait_for(job.run(page), self.opts.tab_timeout)
        except CaptchaHit as exc:
            if not self.opts.headless and not last and await self.wait_for_solution(page):
                return None  # solved by the user: start this photo again
            pause = self.gate.hit()
            log_failure(path.name, job.stage, f"captcha at {exc}")
            self.progress.record(path.name, status="captcha", stage=job.stage)
            why = "captcha" + (f"; new tabs wait {pause:g} s" if pause else "")
            return Outcome(path.name, "captcha", stage=job.stage, reason=why)
        except (Exception, asyncio.TimeoutError) as exc:
            if isinstance(exc, asyncio.TimeoutError):
                exc = TimeoutError(f"gave up after {self.opts.tab_timeout:g} s")
            log_failure(path.name, job.stage, exc)
            reason = console.one_line(exc).split("Call log:")[0].strip()
            self.progress.record(path.name, status="failed", stage=job.stage, error=reason)
            return Outcome(
                path.name, "failed", bad_files=job.bad_files, stage=job.stage, reason=reason
            )
        finally:
            # Closing a tab that was sent to a captcha page mid-upload can hang in
            # Chromium: give up after a few seconds (the browser closes it at the end).
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(close(), min(5.0, self.opts.timeout))
        self.gate.ok()
        results = len(set().union(*job.pages.values())) if job.pages else 0
        out = Outcome(path.name, "done", len(job.pages), results, end, job.bad_files)
        stat = path.stat()
        self.progress.record(
            path.name,
            status="done",
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            xhr_files=out.xhr_files,
            results=results,
            pages=sorted(job.pages),
            end=end,
            bad_files=job.bad_files,
        )
        return out

    async def wait_for_solution(self, page: Any) -> bool:
        """Headed: let the user solve the captcha in the tab, then go on."""
        console.console.print("[yellow]Captcha: solve it in the browser window…[/yellow]")
        sel = self.opts.selectors
        try:
            await page.wait_for_url(
                lambda u: not urlsplit(u).path.startswith(sel["captcha_path"]),
                timeout=self.opts.captcha_wait * 1000,
            )
        except Exception:
            return False
        return True

    async def run(self, todo: list[Path]) -> list[Outcome]:
        from playwright.async_api import async_playwright

        opts = self.opts
        try:
            executable = find_browser(opts.browser, headless=opts.headless)
        except BrowserNotFound as exc:
            raise StepFailed(str(exc)) from exc
        args = list(LAUNCH_ARGS)
        if opts.headless:
            args.append("--blink-settings=imagesEnabled=false")  # thumbnails are not needed
        # Full Chromium stalls tabs that share a context; headless-shell does not.
        separate = not opts.headless or (
            executable is not None and "headless" not in executable.name.lower()
        )
        async with async_playwright() as pw:
            try:
                browser = await pw.chromium.launch(
                    executable_path=str(executable) if executable else None,
                    headless=opts.headless,
                    args=args,
                )
            except Exception as exc:
                hint = ""
                if not opts.headless and not os.environ.get("DISPLAY"):
                    hint = " (--headed needs a display: run under xvfb-run or a desktop session)"
                reason = console.one_line(exc).split("Call log:")[0].split("Browser logs:")[0]
                raise StepFailed(f"cannot start the browser: {reason.strip()}{hint}") from exc
            agent = (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{browser.version} Safari/537.36"
            )
            context_args = {
                "locale": "ru-RU",
                "viewport": {"width": 1366, "height": 900},
                "user_agent": agent,
            }
            shared = None if separate else await browser.new_context(**context_args)

            async def new_page() -> tuple[Any, Any]:
                context = shared or await browser.new_context(**context_args)
                page = await context.new_page()
                page.set_default_timeout(opts.timeout * 1000)
                return page, (page.close if shared else context.close)

            sem = asyncio.Semaphore(max(1, opts.max_tabs))
            tasks = [asyncio.ensure_future(self.process(p, new_page, sem)) for p in todo]
            outcomes = []
            try:
                with console.progress("Images", total=len(todo)) as advance:
                    for future in asyncio.as_completed(tasks):
                        outcome = await future
                        outcomes.append(outcome)
                        advance(info=outcome.name)
                        self.report(outcome)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await browser.close()
        return outcomes

    def report(self, outcome: Outcome) -> None:
        if outcome.status in ("failed", "captcha"):
            color = "red" if outcome.status == "failed" else "yellow"
            console.console.print(
                f"[{color}]{outcome.status}[/{color}] {outcome.name} ({outcome.stage}): {outcome.reason}"
            )


# ----------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="1_Parse_XHR_Async.py",
        description=(
            "Upload each photo (.jpg/.jpeg/.png/.webp) of a folder to Yandex Images, open "
            "'Похожие' (similar) and save every result page as JSON in XHR/."
        ),
    )
    p.add_argument(
        "--images", type=Path, default=Path("."), help="folder of query photos (default: .)"
    )
    p.add_argument("--xhr-dir", type=Path, default=Path("XHR"), help="output folder (default: XHR)")
    p.add_argument("--max-tabs", type=int, default=10, help="tabs at once (default: 10)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--headless", dest="headless", action="store_true", default=True, help="no window (default)"
    )
    mode.add_argument(
        "--headed",
        dest="headless",
        action="store_false",
        help="show the browser; captchas can be solved by hand",
    )
    p.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        help=f"Yandex Images start page (default: {DEFAULT_BASE_URL})",
    )
    p.add_argument("--selectors", type=Path, help="JSON file overriding selectors.json entries")
    p.add_argument("--force", action="store_true", help="redo photos already finished")
    p.add_argument(
        "--browser", help="Chromium executable (default: found automatically; or CHROMIUM_PATH)"
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds one page action may take (default: 30)"
    )
    p.add_argument(
        "--tab-timeout", type=float, default=600.0, help="seconds one photo may take (default: 600)"
    )
    p.add_argument(
        "--max-captchas",
        type=int,
        default=3,
        help="stop after this many captchas in a row (default: 3)",
    )
    p.add_argument(
        "--captcha-backoff",
        default=",".join(f"{x:g}" for x in DEFAULT_BACKOFF),
        help="pauses in seconds after 1st, 2nd, ... captcha in a row (default: 60,300,600)",
    )
    p.add_argument(
        "--captcha-wait",
        type=float,
        default=600.0,
        help="--headed: seconds to wait for you to solve a captcha",
    )
    add_common_flags(p)
    return p.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    if args.max_tabs < 1:
        raise UsageError("--max-tabs must be at least 1")
    if args.max_captchas < 1:
        raise UsageError("--max-captchas must be at least 1")
    try:
        backoff = tuple(float(x) for x in args.captcha_backoff.split(",") if x.strip())
    except ValueError as exc:
        raise UsageError(f"--captcha-backoff: {exc}") from exc
    base = args.base_url if args.base_url.endswith("/") else args.base_url + "/"
    if urlsplit(base).scheme not in ("http", "https"):
        raise UsageError("--base-url must be an http(s) URL")
    images = args.images.expanduser().absolute()
    if not images.is_dir():
        raise UsageError(f"--images: not a folder: {images}")
    return Options(
        images=images,
        xhr_dir=args.xhr_dir.expanduser().absolute(),
        max_tabs=args.max_tabs,
        headless=args.headless,
        base_url=base,
        selectors=load_selectors(args.selectors),
        force=args.force,
        browser=args.browser,
        timeout=args.timeout,
        tab_timeout=args.tab_timeout,
        max_captchas=args.max_captchas,
        backoff=backoff,
        captcha_wait=args.captcha_wait,
    )


def main(argv: list[str] | None = None) -> int:
    opts = options_from(parse_args(argv))
    opts.xhr_dir.mkdir(parents=True, exist_ok=True)
    console.setup_logging(opts.xhr_dir / ERRORS_FILE)
    queries = find_queries(opts.images)
    if not queries:
        console.console.print(f"No query photos ({', '.join(QUERY_EXTENSIONS)}) in {opts.images}")
        return 0
    crawler = Crawler(opts)
    todo = [q for q in queries if opts.force or not crawler.progress.done(q)]
    skipped = len(queries) - len(todo)
    console.console.print(
        f"{len(queries)} photos in {opts.images}: {len(todo)} to search, {skipped} already done"
    )
    outcomes = asyncio.run(crawler.run(todo)) if todo else []
    count = {
        s: sum(o.status == s for o in outcomes)
        for s in ("done", "failed", "captcha", "not started")
    }
    console.print_summary(
        "Step 1: Yandex similar-image search",
        [
            ("photos found", len(queries)),
            ("done now", count["done"]),
            ("skipped (already done)", skipped),
            ("failed", count["failed"]),
            ("captcha", count["captcha"]),
            ("not started", count["not started"]),
            ("XHR files saved", sum(o.xhr_files for o in outcomes)),
            ("results", sum(o.results for o in outcomes)),
            ("bad responses (see errors.log)", sum(o.bad_files for o in outcomes)),
        ],
    )
    if crawler.gate.stopped:
        console.err_console.print(
            f"[red]Stopped:[/red] {opts.max_captchas} captchas in a row. Yandex is blocking this "
            "address; wait (blocks last minutes to hours), or run with --headed and solve it. "
            "Re-run to continue: finished photos are skipped."
        )
    if count["failed"] or count["captcha"] or count["not started"]:
        console.console.print(f"Details in {opts.xhr_dir / ERRORS_FILE}. Re-run to retry the rest.")
        return console.EXIT_FAILURE
    return console.EXIT_OK
