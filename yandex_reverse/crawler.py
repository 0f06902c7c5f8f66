"""Step 1: search Yandex Images with each query photo (or image URL) and save every result page.

For each query a browser tab opens the start page, uploads the photo (or opens
the search by URL), opens the tabs asked for ("Похожие", and "Сайты" with
``--tabs similar,sites``) and saves what they show, atomically, one file per
source, never overwritten by another source:

* ``XHR/<query>_xhr_000.json``: the first page, from the page's ``data-state``
  that holds results (a page may hold several), or the ``p=0`` XHR when the tab
  is a client-side route; a data-state without results is not saved;
* ``XHR/<query>_xhr_<p>.json``: every ``serpList/fetch`` answer (``p`` = the page
  the XHR asked for);
* ``XHR/<query>_sites_000.json``: the "Сайты" tab's data-state.

**The end of the results is decided from the network.** The tab keeps scrolling
to the bottom, clicks "Показать ещё" whenever it is visible and enabled, and
follows the ``serpList/fetch`` requests in flight (request, finished, failed).
The results have ended on a 404, on the error notice, or after a quiet period
(``--quiet-period``) with no request in flight, none started and nothing
clickable. A disabled button means "busy" only while a request is in flight.
Every action is confirmed by its effect (the panel visible, the URL changed, a
request started) and retried within ``--timeout``; the cookie popup is
accepted whenever it appears (Playwright's ``add_locator_handler``).

``XHR/.progress.json`` records each query: how it ended (``404``, ``error``,
``quiet``), the pages saved, so a re-run skips finished ones. Selectors live
in ``selectors.json``; ``--selectors FILE`` overrides them. The JSON format is
read by :mod:`yandex_reverse.serp`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import random
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit, urlunsplit

from . import console, i18n, serp
from .browser import BrowserNotFound, find_browser
from .cli import add_common_flags
from .console import StepFailed, UsageError, esc, log
from .db import now_iso
from .fsutil import atomic_write_text
from .i18n import N_, _, ngettext

DEFAULT_SELECTORS = Path(__file__).with_name("selectors.json")
QUERY_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
PROGRESS_FILE = ".progress.json"
ERRORS_FILE = "errors.log"
DEFAULT_BASE_URL = "https://yandex.ru/images/"
DEFAULT_BACKOFF = (60.0, 300.0, 600.0)
DEFAULT_QUIET = 3.0  # seconds of network silence with nothing clickable = the end
TABS = ("similar", "sites")
UPLOAD_LIMIT = 5 * 1024 * 1024  # the upload API's limit (reference §6)
CONNECT_STOP_AFTER = 3  # the first N searches all fail to connect: stop the run
SNIPPET_CHARS = 5000  # as the original: the start of a bad body is kept
CONNECT_ERRORS = (
    "ERR_CONNECTION_REFUSED",
    "ERR_NAME_NOT_RESOLVED",
    "ERR_NAME_RESOLUTION_FAILED",
    "ERR_PROXY_CONNECTION_FAILED",
    "ERR_TUNNEL_CONNECTION_FAILED",
    "ERR_ADDRESS_UNREACHABLE",
    "ERR_CONNECTION_TIMED_OUT",
    "ERR_INTERNET_DISCONNECTED",
    "ERR_CONNECTION_CLOSED",
    "ERR_CONNECTION_RESET",
    "ERR_EMPTY_RESPONSE",
    "ERR_SOCKS_CONNECTION_FAILED",
)
STATUS_LABELS = {  # how a query ended, as the progress file says it; shown translated
    "done": N_("done"),
    "failed": N_("failed"),
    "captcha": N_("captcha"),
    "not an image": N_("not an image"),
    "not started": N_("not started"),
    "interrupted": N_("interrupted"),
}
LAUNCH_ARGS = (
    "--disable-blink-features=AutomationControlled",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--mute-audio",
)

# Scroll to the bottom (a step back every few looks, so scroll listeners fire
# again) and say what the page offers: the error notice, a "more" button that
# can be clicked, one that is disabled, or none. With ``click`` an enabled
# button is clicked right here ('clicked'): one round trip instead of three.
_LOOK_JS = """([more, err, tick, click]) => {
  const h = Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0);
  if (tick % 4 === 3) window.scrollBy(0, -Math.min(400, h)); else window.scrollTo(0, h);
  const shown = x => x.getClientRects().length > 0 && getComputedStyle(x).visibility !== 'hidden';
  if ([...document.querySelectorAll(err)].some(shown)) return 'error';
  const b = [...document.querySelectorAll(more)].find(shown);
  if (!b) return 'none';
  if (b.disabled || b.getAttribute('aria-disabled') === 'true') return 'disabled';
  if (click) { b.click(); return 'clicked'; }
  return 'ready';
}"""
_STATES_JS = "els => els.map(e => e.getAttribute('data-state'))"


class CaptchaHit(Exception):
    """Yandex answered with a captcha."""


class StageError(Exception):
    """A step of the flow failed in a way worth one clear line."""


class TooLarge(Exception):
    """The upload answered 413: the photo is re-encoded and uploaded again."""


class Stopped(Exception):
    """The run stopped (captchas, no connection) before this query started."""


# ----------------------------------------------------------------- settings


def load_selectors(path: Path | None) -> dict[str, str]:
    """The default selectors, with a user's file laid over them (unknown keys refused)."""
    selectors = json.loads(DEFAULT_SELECTORS.read_text(encoding="utf-8"))
    if path is not None:
        try:
            user = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(
                _("--selectors {path}: {reason}").format(path=path, reason=console.one_line(exc))
            ) from exc
        if not isinstance(user, dict):
            raise UsageError(_("--selectors {path}: expected a JSON object").format(path=path))
        unknown = sorted(k for k in user if k not in selectors and not k.startswith("_"))
        if unknown:
            raise UsageError(
                _("--selectors {path}: unknown keys {keys}").format(
                    path=path, keys=", ".join(unknown)
                )
            )
        selectors.update({k: v for k, v in user.items() if isinstance(v, str)})
    return {k: v for k, v in selectors.items() if not k.startswith("_")}


def find_queries(folder: Path) -> list[Path]:
    """The query photos: top level of ``folder``, as the original (plus .png/.webp)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in QUERY_EXTENSIONS
    )


@dataclass(frozen=True)
class Query:
    """One search: a photo to upload, or an image URL (``--urls``)."""

    name: str  # the file name, or serp.url_query_name(url)
    path: Path | None = None
    url: str | None = None


def read_url_list(path: Path) -> list[str]:
    """One http(s) URL a line; blank lines and ``#`` comments skipped; others refused."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            _("--urls {path}: {reason}").format(path=path, reason=console.one_line(exc))
        ) from exc
    urls: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if urlsplit(text).scheme not in ("http", "https") or not urlsplit(text).netloc:
            raise UsageError(
                _("--urls {path}: line {number} is not an http(s) URL").format(
                    path=path, number=number
                )
            )
        if text not in urls:
            urls.append(text)
    return urls


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
    quiet_period: float = DEFAULT_QUIET
    tabs: tuple[str, ...] = ("similar",)
    urls: Path | None = None
    proxy: str | None = None
    profile: Path | None = None
    delay: tuple[float, float] = (0.0, 0.0)


class Progress:
    """``XHR/.progress.json``: one record per query (hidden: step 2 skips it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.images: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                self.images = json.loads(path.read_text(encoding="utf-8")).get("images", {})
            except (OSError, ValueError, AttributeError):
                log.warning("progress file %s unreadable; starting afresh", path)

    def done(self, query: Query) -> bool:
        """Finished (or refused as not an image), and the photo is still the same file."""
        record = self.images.get(query.name, {})
        if record.get("status") not in ("done", "not an image"):
            return False
        if query.path is None:
            return record.get("url") == query.url
        stat = query.path.stat()
        return (
            record.get("size", stat.st_size) == stat.st_size
            and record.get("mtime_ns", stat.st_mtime_ns) == stat.st_mtime_ns
        )

    def record(self, name: str, **fields: Any) -> None:
        self.images[name] = {**fields, "updated": now_iso()}
        payload = {"version": 1, "images": self.images}
        atomic_write_text(self.path, json.dumps(payload, ensure_ascii=False, indent=2))


class Gate:
    """Pauses new searches after a captcha (backoff ladder); stops after K in a row,
    or when the first searches all fail to connect."""

    def __init__(self, backoff: tuple[float, ...], max_in_row: int) -> None:
        self.backoff = backoff or DEFAULT_BACKOFF
        self.max_in_row = max_in_row
        self.in_row = 0
        self.resume_at = 0.0
        self.stopped = ""  # why the run stopped: "captcha" or "connect"
        self.connected = False  # one search reached the site
        self.connect_failures = 0

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
            self.stopped = self.stopped or "captcha"
            return 0.0
        pause = self.backoff[min(self.in_row - 1, len(self.backoff) - 1)]
        self.resume_at = max(self.resume_at, time.monotonic() + pause)
        return pause

    def ok(self) -> None:
        self.in_row = 0

    def cannot_connect(self, limit: int) -> None:
        self.connect_failures += 1
        if not self.connected and self.connect_failures >= limit:
            self.stopped = self.stopped or "connect"


@dataclass
class Outcome:
    name: str
    status: str  # done | failed | captcha | not an image | not started | interrupted
    xhr_files: int = 0
    results: int = 0
    sites: int = 0
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


def is_connect_error(exc: BaseException) -> bool:
    text = str(exc)
    return any(code in text for code in CONNECT_ERRORS)


# ----------------------------------------------------------------- the photo file


def check_image(path: Path) -> str | None:
    """None if ``path`` is a readable image, else a one-line reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return _("empty file (0 bytes)")
        with Image.open(path) as im:
            im.verify()
    except UnidentifiedImageError:
        return _("not an image (Pillow cannot identify it)")
    except Image.DecompressionBombError as exc:
        return _("refused: {reason}").format(reason=console.one_line(exc))
    except (OSError, SyntaxError, ValueError) as exc:
        return _("unreadable image: {reason}").format(reason=console.one_line(exc))
    return None


def reencode_under(path: Path, limit: int, folder: Path) -> Path:
    """A temporary JPEG copy of ``path`` under ``limit`` bytes (the original untouched)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        picture = im.convert("RGB")
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".jpg", dir=folder)
    os.close(fd)
    target = Path(name)
    quality = 90
    while True:
        picture.save(target, "JPEG", quality=quality, optimize=True)
        if target.stat().st_size < limit:
            return target
        if quality > 60:
            quality -= 15
        else:
            width, height = picture.size
            picture = picture.resize((max(1, width * 3 // 4), max(1, height * 3 // 4)))


# ----------------------------------------------------------------- one query


class QueryJob:
    """The flow for one query in one tab; responses are read as they come."""

    def __init__(self, crawler: Crawler, query: Query, upload: Path | None = None) -> None:
        self.crawler = crawler
        self.opts = crawler.opts
        self.sel = crawler.opts.selectors
        self.query = query
        self.name = query.name
        self.upload = upload or query.path
        self.stage = "start"
        self.pages: dict[int, set[str]] = {}
        self.sites: int | None = None
        self.bad_files = 0
        self.fetches = 0
        self.end_404 = False
        self.captcha = False
        self.tasks: list[asyncio.Task[None]] = []
        # the network, as the tab sees it
        self.in_flight: dict[Any, float] = {}
        self.last_activity = time.monotonic()
        self.activity = asyncio.Event()
        self.uploads: list[dict[str, Any]] = []  # upload replies: {"status", "data"}
        self.uploading = False

    # ---------------------------------------------- recognising traffic

    def is_fetch(self, url: str) -> bool:
        parts = urlsplit(url)
        if self.sel["xhr_path"] not in parts.path or self.sel["xhr_format"] not in parts.query:
            return False
        key = self.sel["xhr_key"]
        return quote(key, safe="") in parts.query or key in unquote(parts.query)

    def is_captcha_url(self, url: str) -> bool:
        return urlsplit(url).path.startswith(self.sel["captcha_path"])

    def touch(self) -> None:
        self.last_activity = time.monotonic()
        self.activity.set()

    def on_request(self, request: Any) -> None:
        if self.is_fetch(request.url):
            self.in_flight[request] = time.monotonic()
            self.touch()

    def on_request_done(self, request: Any) -> None:
        if self.in_flight.pop(request, None) is not None:
            self.touch()

    def on_response(self, response: Any) -> None:
        if self.is_captcha_url(response.url):
            self.captcha = True
        with contextlib.suppress(Exception):
            if self.sel["captcha_header"].lower() in response.headers:
                self.captcha = True
        if self.is_fetch(response.url):
            self.fetches += 1
            self.tasks.append(asyncio.ensure_future(self.capture(response)))
        elif self.uploading and response.request.method == "POST":
            reply = {"status": response.status, "data": None}
            self.uploads.append(reply)  # the status now: the page may show its error first
            self.tasks.append(asyncio.ensure_future(self.read_upload(response, reply)))

    async def read_upload(self, response: Any, reply: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            reply["data"] = json.loads(await response.body())
        if serp.is_captcha(reply["data"]):
            self.captcha = True

    async def capture(self, response: Any) -> None:
        """Save one serpList/fetch answer (read now: after navigation it is gone)."""
        query = parse_qs(urlsplit(response.url).query)
        try:
            page = int(query["p"][0])
        except (KeyError, ValueError):
            page = 900 + self.fetches
        stem = serp.saved_name(self.name, page).removesuffix(".json")
        status = response.status
        if status == 404:  # a 404 (empty body) is the normal end of the results
            self.end_404 = True
            self.touch()
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
        if serp.is_captcha(data):
            self.captcha = True
            return
        self.save(page, data)

    def save(self, page: int, data: Any, kind: str = serp.KIND_RESULTS) -> None:
        path = self.opts.xhr_dir / serp.saved_name(self.name, page, kind)
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2))
        if kind == serp.KIND_SITES:
            self.sites = len(serp.sites_of(data) or [])
            return
        try:
            self.pages[page] = set(serp.find_entities(data))
        except serp.FormatError:
            self.pages[page] = set()

    # ---------------------------------------------- small confirmed actions

    async def check_captcha(self, page: Any) -> None:
        if self.captcha or self.is_captcha_url(page.url):
            raise CaptchaHit(page.url)
        with contextlib.suppress(Exception):
            if await page.locator(self.sel["captcha"]).count():
                raise CaptchaHit(page.url)

    async def until(self, page: Any, effect: Any, what: str, *, act: Any = None) -> None:
        """Do ``act`` until ``effect()`` holds, looking ever longer; fail after --timeout."""
        deadline = time.monotonic() + self.opts.timeout
        window = 0.5
        attempt = 0
        while True:
            if act is not None:
                with contextlib.suppress(Exception):
                    await act(attempt)
            attempt += 1
            look_until = min(deadline, time.monotonic() + window)
            while True:
                await self.check_captcha(page)
                with contextlib.suppress(Exception):
                    seen = effect()
                    if inspect.isawaitable(seen):
                        seen = await seen
                    if seen:
                        return
                if time.monotonic() >= look_until:
                    break
                await asyncio.sleep(0.05)
            if time.monotonic() >= deadline:
                raise StageError(
                    _("{what}: nothing happened in {seconds} s").format(
                        what=what, seconds=f"{self.opts.timeout:g}"
                    )
                )
            window = min(window * 2, 4.0)

    async def visible(self, page: Any, selector: str) -> bool:
        loc = page.locator(selector)
        for i in range(await loc.count()):
            if await loc.nth(i).is_visible():
                return True
        return False

    async def click(self, page: Any, selector: str, attempt: int) -> None:
        """Click the first visible match; every third try a mousedown (some buttons want it)."""
        loc = page.locator(selector)
        target = loc.first
        for i in range(await loc.count()):
            if await loc.nth(i).is_visible():
                target = loc.nth(i)
                break
        if attempt % 3 == 2:
            await target.dispatch_event("mousedown")
        await target.click(timeout=min(5000, self.opts.timeout * 1000))

    async def states(self, page: Any) -> list[Any]:
        """Every ``data-state`` of the page, parsed (a broken one is kept as a bad file)."""
        out = []
        raws = await page.locator(self.sel["data_state"]).evaluate_all(_STATES_JS)
        for raw in raws:
            try:
                out.append(json.loads(raw or ""))
            except ValueError as exc:
                self.bad_files += 1
                atomic_write_text(
                    self.opts.xhr_dir / f"{self.name}_xhr_000_CORRUPT_JSON.txt",
                    (raw or "")[:SNIPPET_CHARS],
                )
                log_failure(self.name, self.stage, exc)
        return out

    # ---------------------------------------------- the flow

    async def run(self, page: Any) -> str:
        """Search, open each tab asked for, save everything; return how the results ended."""
        page.on("request", self.on_request)
        page.on("requestfinished", self.on_request_done)
        page.on("requestfailed", self.on_request_done)
        page.on("response", self.on_response)
        if self.query.url is not None:
            await self.open_url_search(page)
        else:
            await self.upload_photo(page)
        result_url = page.url
        end = ""
        for index, tab in enumerate(self.opts.tabs):
            if index:
                self.stage = "back to the result page"
                await page.goto(result_url, wait_until="domcontentloaded")
                await self.check_captcha(page)
            if tab == "sites":
                await self.open_sites(page)
            else:
                end = await self.open_similar(page)
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.check_captcha(page)
        return end

    async def open_start(self, page: Any) -> None:
        self.stage = "open start page"
        await page.goto(self.crawler.base_url, wait_until="domcontentloaded")
        self.crawler.gate.connected = True
        await self.check_captcha(page)
        marker = self.sel["under_construction_text"]
        if marker and await page.get_by_text(marker).count():
            if not self.crawler.switch_host():
                raise StageError(
                    _(
                        "the start page says it {marker}; pass another --base-url "
                        "(https://yandex.ru/images/ works)"
                    ).format(marker=marker)
                )
            await page.goto(self.crawler.base_url, wait_until="domcontentloaded")
            await self.check_captcha(page)

    async def open_url_search(self, page: Any) -> None:
        """Search by image URL: ``GET /images/search?url=…&rpt=imageview``."""
        await self.open_start(page)
        self.stage = "search by URL"
        parts = urlsplit(self.crawler.base_url)
        target = urlunsplit(
            (
                parts.scheme,
                parts.netloc,
                self.sel["search_path"],
                urlencode({"url": self.query.url, "rpt": "imageview"}),
                "",
            )
        )
        await page.goto(target, wait_until="domcontentloaded")
        await self.check_captcha(page)

    async def upload_photo(self, page: Any) -> None:
        sel = self.sel
        await self.open_start(page)

        self.stage = "open upload panel"
        await self.until(
            page,
            lambda: self.visible(page, sel["upload_panel"]),
            _("the camera button did not open the upload panel"),
            act=lambda n: self.click(page, sel["camera_button"], n),
        )

        self.stage = "upload"
        self.uploading = True
        await page.locator(sel["file_input"]).first.set_input_files(self.upload)
        search = sel["search_path"]
        reply_at: float | None = None
        error_at = 0.0
        deadline = time.monotonic() + self.opts.timeout
        while True:
            await self.check_captcha(page)
            if search in urlsplit(page.url).path:
                break
            if any(reply["status"] == 413 for reply in self.uploads):
                raise TooLarge
            if await page.locator(sel["upload_error"]).count():  # an icon: may have no size
                error_at = error_at or time.monotonic()
                if not self.uploads and time.monotonic() - error_at < 2.0:
                    await asyncio.sleep(0.1)  # the answer's status may reach us after the page
                    continue
                if any(reply["status"] == 413 for reply in self.uploads):
                    raise TooLarge  # (it may have come while we looked at the page)
                text = ""
                with contextlib.suppress(Exception):
                    text = await page.locator(sel["upload_error"]).first.locator("..").inner_text()
                detail = f": {text.strip()}" if text.strip() else ""
                raise StageError(_("Yandex refused the upload{detail}").format(detail=detail))
            replies = [serp.upload_reply(r["data"]) for r in self.uploads]
            reply = next((r for r in replies if r), None)
            if reply and reply_at is None:
                reply_at = time.monotonic()
            if reply and reply_at is not None and time.monotonic() - reply_at > 3.0:
                # the page got an answer but did not move on: go where the reply says
                await page.goto(self.search_url(reply), wait_until="domcontentloaded")
                continue
            if time.monotonic() >= deadline:
                raise StageError(
                    _("the upload got no answer in {seconds} s").format(
                        seconds=f"{self.opts.timeout:g}"
                    )
                )
            await asyncio.sleep(0.05)
        self.uploading = False
        await page.wait_for_load_state("domcontentloaded")
        await self.check_captcha(page)

    def search_url(self, reply: dict[str, str]) -> str:
        parts = urlsplit(self.crawler.base_url)
        query = urlencode({"cbir_id": reply["cbir_id"], "rpt": "imageview", "url": reply["url"]})
        return urlunsplit((parts.scheme, parts.netloc, self.sel["search_path"], query, ""))

    async def open_tab(self, page: Any, tab_selector: str, marker: str, what: str) -> None:
        await self.until(
            page,
            lambda: marker in page.url,
            what,
            act=lambda n: self.click(page, tab_selector, n),
        )
        with contextlib.suppress(Exception):
            await page.wait_for_load_state("domcontentloaded")
        await self.check_captcha(page)

    async def open_similar(self, page: Any) -> str:
        sel = self.sel
        self.stage = "open similar"
        await self.open_tab(
            page, sel["similar_tab"], sel["similar_url_marker"], _("the 'Похожие' tab did not open")
        )
        self.stage = "first page"
        first = serp.results_state(await self.states(page))
        self.stage = "load more"
        end = await self.load_all(page)
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if 0 not in self.pages and first is not None and serp.entities_of(serp.state_serp(first)):
            self.save(0, first)  # the server-rendered first page (no p=0 XHR came)
        return end

    async def open_sites(self, page: Any) -> None:
        sel = self.sel
        self.stage = "open sites"
        await self.open_tab(
            page, sel["sites_tab"], sel["sites_url_marker"], _("the 'Сайты' tab did not open")
        )
        state = serp.sites_state(await self.states(page))
        if state is not None and serp.sites_of(state):
            self.save(0, state, serp.KIND_SITES)
        else:
            self.sites = 0

    async def load_all(self, page: Any) -> str:
        """Scroll and click "more" until a 404, the error notice, or a quiet period."""
        args = [self.sel["more_button"], self.sel["error_end"]]
        timeout = self.opts.timeout
        quiet = self.opts.quiet_period
        self.touch()
        tick = 0
        # A click from the page's own script is the fastest; if one ever starts
        # nothing (a page that wants a real pointer), real clicks from then on.
        script_click = True
        clicked_at = 0.0
        while True:
            await self.check_captcha(page)
            if self.end_404 and not self.in_flight:
                return "404"
            now = time.monotonic()
            try:
                look = await page.evaluate(_LOOK_JS, [*args, tick, script_click])
            except Exception:
                await self.check_captcha(page)
                look = "none"  # the page is navigating or busy: look again
            tick += 1
            if look == "clicked":
                clicked_at = clicked_at or now
                if self.last_activity < clicked_at and now - clicked_at > 1.0:
                    script_click = False  # it did nothing: click as a user does
                look = "ready" if not script_click else look
            if self.in_flight:
                if now - min(self.in_flight.values()) > timeout:
                    raise StageError(
                        _("a results request got no answer in {seconds} s").format(
                            seconds=f"{timeout:g}"
                        )
                    )
            elif look == "error":
                return "error"
            elif look in ("ready", "clicked"):
                if now - self.last_activity > max(timeout, quiet):
                    return "quiet"  # a button that starts nothing: the network says it is over
                if look == "ready":
                    with contextlib.suppress(Exception):
                        await self.click(page, self.sel["more_button"], tick)
            elif now - self.last_activity >= quiet:
                return "quiet"
            if self.last_activity >= clicked_at:
                clicked_at = 0.0
            self.activity.clear()
            # just after the network moved, the page reacts within a frame or two: look again soon
            pause = 0.05 if time.monotonic() - self.last_activity < 1.0 else 0.25
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.activity.wait(), pause)


# ----------------------------------------------------------------- the run


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

    async def process(self, query: Query, new_page: Any) -> Outcome:
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
                    outcome = await self.attempt(
                        query, new_page, upload, last=attempt == attempts - 1
                    )
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
                    outcome = await self.attempt(query, new_page, upload, last=True)
                if outcome is not None:
                    return outcome
            raise AssertionError("unreachable")
        finally:
            if upload is not None:
                upload.unlink(missing_ok=True)

    async def attempt(
        self, query: Query, new_page: Any, upload: Path | None, *, last: bool
    ) -> Outcome | None:
        job = QueryJob(self, query, upload)
        page, close = await asyncio.wait_for(new_page(), self.opts.timeout)
        try:
            end = await asyncio.wait_for(job.run(page), self.opts.tab_timeout)
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
            # Closing a tab that was sent to a captcha page mid-upload can hang in
            # Chromium: give up after a few seconds (the browser closes it at the end).
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(close(), min(5.0, self.opts.timeout))
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

    async def worker(self, queue: asyncio.Queue[Query], new_page: Any, done: Any) -> None:
        """One tab: take queries one after another, pausing --delay between two."""
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
                outcome = await self.process(query, new_page)
            except Exception as exc:  # the tab itself broke: this query failed, the run goes on
                log_failure(query.name, "open tab", exc)
                reason = console.one_line(exc).split("Call log:")[0].strip()
                self.progress.record(query.name, status="failed", stage="open tab", error=reason)
                outcome = Outcome(query.name, "failed", stage="open tab", reason=reason)
            done(outcome)

    async def run(self, todo: list[Query]) -> list[Outcome]:
        from playwright.async_api import async_playwright

        opts = self.opts
        self.total = len(todo)
        try:
            executable = find_browser(opts.browser, headless=opts.headless)
        except BrowserNotFound as exc:
            raise StepFailed(str(exc)) from exc
        args = list(LAUNCH_ARGS)
        if opts.headless:
            args.append("--blink-settings=imagesEnabled=false")  # thumbnails are not needed
        # Full Chromium stalls tabs that share a context; headless-shell does not.
        separate = opts.profile is None and (
            not opts.headless
            or (executable is not None and "headless" not in executable.name.lower())
        )
        launch: dict[str, Any] = {
            "executable_path": str(executable) if executable else None,
            "headless": opts.headless,
            "args": args,
            "handle_sigint": False,  # Ctrl-C is ours: a clean summary, then the browser closes
        }
        if opts.proxy:
            launch["proxy"] = {"server": opts.proxy}
        outcomes: list[Outcome] = []
        loop = asyncio.get_running_loop()
        async with async_playwright() as pw:
            agent = None
            context_args: dict[str, Any] = {
                "locale": "ru-RU",
                "viewport": {"width": 1366, "height": 900},
            }
            try:
                if opts.profile is not None:
                    shared = await pw.chromium.launch_persistent_context(
                        str(opts.profile), **launch, **context_args
                    )
                    browser = None
                else:
                    browser = await pw.chromium.launch(**launch)
                    agent = (
                        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                        f"Chrome/{browser.version} Safari/537.36"
                    )
                    context_args["user_agent"] = agent
                    shared = None if separate else await browser.new_context(**context_args)
            except Exception as exc:
                hint = ""
                if not opts.headless and not os.environ.get("DISPLAY"):
                    hint = " " + _(
                        "(--headed needs a display: run under xvfb-run or a desktop session)"
                    )
                reason = console.one_line(exc).split("Call log:")[0].split("Browser logs:")[0]
                raise StepFailed(
                    _("cannot start the browser: {reason}").format(reason=reason.strip()) + hint
                ) from exc

            async def new_page() -> tuple[Any, Any]:
                context = shared or await browser.new_context(**context_args)
                page = await context.new_page()
                page.set_default_timeout(opts.timeout * 1000)
                await page.add_locator_handler(
                    page.locator(opts.selectors["cookie_popup"]).first, self.accept_cookies
                )
                return page, (page.close if shared else context.close)

            queue: asyncio.Queue[Query] = asyncio.Queue()
            for query in todo:
                queue.put_nowait(query)
            with console.progress(_("Queries"), total=len(todo)) as advance:

                def done(outcome: Outcome) -> None:
                    outcomes.append(outcome)
                    advance(info=outcome.name)
                    self.report(outcome)

                tasks = [
                    asyncio.ensure_future(self.worker(queue, new_page, done))
                    for _tab in range(min(max(1, opts.max_tabs), len(todo)))
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
                    with contextlib.suppress(Exception):
                        await (shared.close() if browser is None else browser.close())
        finished = {o.name for o in outcomes}
        for query in todo:
            if query.name not in finished:
                status = "interrupted" if self.interrupted else "not started"
                outcomes.append(Outcome(query.name, status))
        return outcomes

    async def accept_cookies(self, popup: Any) -> None:
        with contextlib.suppress(Exception):
            await popup.page.locator(self.opts.selectors["cookie_accept"]).first.click(timeout=2000)

    def report(self, outcome: Outcome) -> None:
        if outcome.status in ("failed", "captcha", "not an image"):
            color = "yellow" if outcome.status == "captcha" else "red"
            status = i18n._(STATUS_LABELS[outcome.status])  # marked with N_() above
            console.console.print(
                f"[{color}]{esc(status)}[/{color}] {esc(outcome.name)} "
                f"({esc(outcome.stage)}): {esc(outcome.reason)}"
            )


# ----------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="1_Parse_XHR_Async.py",
        description=_(
            "Upload each photo (.jpg/.jpeg/.png/.webp) of a folder to Yandex Images (or search "
            "by image URL with --urls), open 'Похожие' (similar) and save every result page as "
            "JSON in XHR/."
        ),
    )
    p.add_argument(
        "--images", type=Path, default=Path("."), help=_("folder of query photos (default: .)")
    )
    p.add_argument(
        "--urls",
        type=Path,
        help=_("search by image URL instead: a text file, one http(s) URL a line"),
    )
    p.add_argument(
        "--xhr-dir", type=Path, default=Path("XHR"), help=_("output folder (default: XHR)")
    )
    p.add_argument("--max-tabs", type=int, default=10, help=_("tabs at once (default: 10)"))
    p.add_argument(
        "--tabs",
        default="similar",
        help=_("result tabs to save, comma-separated: similar, sites (default: similar)"),
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--headless",
        dest="headless",
        action="store_true",
        default=True,
        help=_("no window (default)"),
    )
    mode.add_argument(
        "--headed",
        dest="headless",
        action="store_false",
        help=_("show the browser; captchas can be solved by hand"),
    )
    p.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        help=_("Yandex Images start page (default: {url})").format(url=DEFAULT_BASE_URL),
    )
    p.add_argument(
        "--proxy",
        default=None,
        help=_(
            "proxy for the browser, e.g. http://host:3128 or socks5://host:1080 "
            "(default: $HTTPS_PROXY, if set)"
        ),
    )
    p.add_argument(
        "--profile",
        type=Path,
        help=_("persistent browser profile folder: cookies survive between runs"),
    )
    p.add_argument(
        "--delay",
        default="0",
        help=_(
            "random pause in seconds between two searches of one tab, MIN-MAX or one "
            "number (default: 0; reference pacing: 0.9-1.3)"
        ),
    )
    p.add_argument(
        "--quiet-period",
        type=float,
        default=DEFAULT_QUIET,
        help=_(
            "seconds with no results request and nothing to click that mean the end "
            "(default: {seconds})"
        ).format(seconds=f"{DEFAULT_QUIET:g}"),
    )
    p.add_argument("--selectors", type=Path, help=_("JSON file overriding selectors.json entries"))
    p.add_argument("--force", action="store_true", help=_("redo queries already finished"))
    p.add_argument(
        "--browser",
        help=_("Chromium executable (default: found automatically; or CHROMIUM_PATH)"),
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help=_("seconds one page action may take (default: 30)"),
    )
    p.add_argument(
        "--tab-timeout",
        type=float,
        default=600.0,
        help=_("seconds one query may take (default: 600)"),
    )
    p.add_argument(
        "--max-captchas",
        type=int,
        default=3,
        help=_("stop after this many captchas in a row (default: 3)"),
    )
    p.add_argument(
        "--captcha-backoff",
        default=",".join(f"{x:g}" for x in DEFAULT_BACKOFF),
        help=_("pauses in seconds after 1st, 2nd, ... captcha in a row (default: 60,300,600)"),
    )
    p.add_argument(
        "--captcha-wait",
        type=float,
        default=600.0,
        help=_("--headed: seconds to wait for you to solve a captcha"),
    )
    add_common_flags(p)
    return p.parse_args(argv)


def parse_delay(text: str) -> tuple[float, float]:
    try:
        low, _dash, high = text.partition("-")
        pair = (float(low), float(high or low))
    except ValueError:
        raise UsageError(
            _("--delay {text}: expected MIN-MAX seconds, e.g. 0.9-1.3").format(text=text)
        ) from None
    if pair[0] < 0 or pair[1] < pair[0]:
        raise UsageError(_("--delay {text}: expected 0 <= MIN <= MAX").format(text=text))
    return pair


def options_from(args: argparse.Namespace) -> Options:
    if args.max_tabs < 1:
        raise UsageError(_("--max-tabs must be at least 1"))
    if args.max_captchas < 1:
        raise UsageError(_("--max-captchas must be at least 1"))
    if args.quiet_period <= 0:
        raise UsageError(_("--quiet-period must be more than 0"))
    try:
        backoff = tuple(float(x) for x in args.captcha_backoff.split(",") if x.strip())
    except ValueError as exc:
        raise UsageError(_("--captcha-backoff: {reason}").format(reason=exc)) from exc
    tabs = tuple(t.strip().lower() for t in args.tabs.split(",") if t.strip())
    unknown = [t for t in tabs if t not in TABS]
    if unknown or not tabs:
        raise UsageError(
            _("--tabs: expected a comma-separated list of {tabs}").format(tabs=", ".join(TABS))
        )
    base = args.base_url if args.base_url.endswith("/") else args.base_url + "/"
    if urlsplit(base).scheme not in ("http", "https"):
        raise UsageError(_("--base-url must be an http(s) URL"))
    proxy = args.proxy or os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or None
    if proxy and not urlsplit(proxy).netloc:
        raise UsageError(
            _("--proxy {proxy}: expected a URL such as http://host:3128").format(proxy=proxy)
        )
    images = args.images.expanduser().absolute()
    if args.urls is None and not images.is_dir():
        raise UsageError(_("--images: not a folder: {folder}").format(folder=images))
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
        quiet_period=args.quiet_period,
        tabs=tuple(dict.fromkeys(tabs)),
        urls=args.urls,
        proxy=proxy,
        profile=args.profile.expanduser().absolute() if args.profile else None,
        delay=parse_delay(args.delay),
    )


def record_url_queries(xhr_dir: Path, urls: list[str]) -> None:
    """``XHR/.url_queries.json``: which URL each ``url_<sha1>`` query name stands for."""
    known = serp.read_url_queries(xhr_dir)
    known.update({serp.url_query_name(u): u for u in urls})
    payload = {"version": 1, "queries": known}
    atomic_write_text(
        xhr_dir / serp.URL_QUERIES_FILE, json.dumps(payload, ensure_ascii=False, indent=2)
    )


def main(argv: list[str] | None = None) -> int:
    opts = options_from(parse_args(argv))
    opts.xhr_dir.mkdir(parents=True, exist_ok=True)
    console.setup_logging(opts.xhr_dir / ERRORS_FILE)
    if opts.urls is not None:
        urls = read_url_list(opts.urls)
        if not urls:
            console.console.print(_("No image URLs in {file}").format(file=esc(opts.urls)))
            return 0
        record_url_queries(opts.xhr_dir, urls)
        queries = [Query(serp.url_query_name(u), url=u) for u in urls]
        where = str(opts.urls)
    else:
        photos = find_queries(opts.images)
        if not photos:
            console.console.print(
                _("No query photos ({extensions}) in {folder}").format(
                    extensions=", ".join(QUERY_EXTENSIONS), folder=esc(opts.images)
                )
            )
            return 0
        queries = [Query(p.name, path=p) for p in photos]
        where = str(opts.images)
    crawler = Crawler(opts)
    todo = [q for q in queries if opts.force or not crawler.progress.done(q)]
    skipped = len(queries) - len(todo)
    console.console.print(
        ngettext(
            "{n} query in {where}: {todo} to search, {skipped} already done",
            "{n} queries in {where}: {todo} to search, {skipped} already done",
            len(queries),
        ).format(n=len(queries), where=esc(where), todo=len(todo), skipped=skipped)
    )
    outcomes = asyncio.run(crawler.run(todo)) if todo else []
    count = {s: sum(o.status == s for o in outcomes) for s in STATUS_LABELS}
    ends = {
        e: sum(o.end == e for o in outcomes if o.status == "done")
        for e in ("404", "error", "quiet")
    }
    rows = [
        (_("queries found"), len(queries)),
        (_("done now"), count["done"]),
        (
            "  " + _("ended by a 404 / error notice / quiet"),
            f"{ends['404']} / {ends['error']} / {ends['quiet']}",
        ),
        (_("skipped (already done)"), skipped),
        (_("failed"), count["failed"]),
        (_("captcha"), count["captcha"]),
        (_("not an image (not uploaded)"), count["not an image"]),
        (_("not started"), count["not started"]),
        (_("interrupted"), count["interrupted"]),
        (_("XHR files saved"), sum(o.xhr_files for o in outcomes)),
        (_("results saved"), sum(o.results for o in outcomes)),
        (_("bad responses (see errors.log)"), sum(o.bad_files for o in outcomes)),
    ]
    if "sites" in opts.tabs:
        rows.insert(-2, (_("sites (pages showing the picture)"), sum(o.sites for o in outcomes)))
    console.print_summary(_("Step 1: Yandex similar-image search"), rows)
    stopped = "[red]" + _("Stopped:") + "[/red] "
    if crawler.gate.stopped == "captcha":
        console.err_console.print(
            stopped
            + _(
                "{n} captchas in a row. Yandex is blocking this address; wait (blocks last "
                "minutes to hours), or run with --headed and solve it. Re-run to continue: "
                "finished photos are skipped."
            ).format(n=opts.max_captchas)
        )
    elif crawler.gate.stopped == "connect":
        where = esc(crawler.base_url)
        if opts.proxy:
            where = _("{url} through --proxy {proxy}").format(url=where, proxy=esc(opts.proxy))
        console.err_console.print(
            stopped
            + _("cannot connect to {where}: check --base-url and --proxy.").format(where=where)
        )
    if crawler.interrupted:
        console.err_console.print(
            "[yellow]" + _("Interrupted by user; re-run to continue.") + "[/yellow]"
        )
        return console.EXIT_INTERRUPTED
    if count["failed"] or count["captcha"] or count["not started"]:
        console.console.print(
            _("Details in {file}. Re-run to retry the rest.").format(
                file=esc(opts.xhr_dir / ERRORS_FILE)
            )
        )
        return console.EXIT_FAILURE
    return console.EXIT_OK
