"""One search in one tab: upload the photo (or open the URL search), open the tabs, save
every page, and decide from the network where the results end (``load_all``)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit, urlunsplit

from .. import console, serp
from ..fsutil import atomic_write_text
from ..i18n import _
from .errors import CaptchaHit, StageError, TooLarge, log_failure
from .settings import DRY_PAGES, ERROR_RETRIES, ERROR_SETTLE

if TYPE_CHECKING:
    from .queries import Query
    from .run import Crawler

SNIPPET_CHARS = 5000  # as the original: the start of a bad body is kept
DOM_CAPTCHA_EVERY = 0.5  # seconds between two looks for a captcha on the page in a polling loop
UPLOAD_LOOK_EVERY = 0.2  # seconds between two looks at the page while the upload is answered
IN_FLIGHT_LOOK_EVERY = 0.25  # load_all: seconds between two looks while a request is in flight
STILL_AFTER = 0.5  # load_all: seconds without traffic before the looks step back up too

# Scroll to the bottom (a step back every few looks once the page is still, so scroll
# listeners fire again; while it moves, each step back and down again is two more frames to
# paint, and new content scrolls it anyway): the window, and every scrollable box around the last result (a grid
# that scrolls in its own element); then say what the page offers: the error notice (with a
# retry control in it: 'error-retry'; with an enabled "more" button: 'error-more'), a "more" button that
# can be clicked, one that is disabled, or none. With ``click`` an enabled
# button is clicked right here ('clicked'): one round trip instead of three. A
# captcha on the page answers 'captcha' (no separate look for it).
_LOOK_JS = """([more, err, tick, click, thumb, captcha, retry, still]) => {
  try { if (document.querySelector(captcha)) return 'captcha'; } catch (e) {}
  const h = Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0);
  const back = still && tick % 4 === 3;
  if (back) window.scrollBy(0, -Math.min(400, h)); else window.scrollTo(0, h);
  const items = document.querySelectorAll(thumb);
  for (let el = items.length ? items[items.length - 1].parentElement : null;
       el && el !== document.body && el !== document.documentElement; el = el.parentElement) {
    if (el.scrollHeight > el.clientHeight + 1 && /auto|scroll/.test(getComputedStyle(el).overflowY))
      el.scrollTop = back ? Math.max(0, el.scrollTop - 400) : el.scrollHeight;
  }
  const shown = x => x.getClientRects().length > 0 && getComputedStyle(x).visibility !== 'hidden';
  const b = [...document.querySelectorAll(more)].find(shown);
  const off = x => x.disabled || x.getAttribute('aria-disabled') === 'true';
  const notice = [...document.querySelectorAll(err)].filter(shown);
  if (notice.length) {
    if (notice.some(n => [...n.querySelectorAll(retry)].some(x => shown(x) && !off(x)))) return 'error-retry';
    return b && !off(b) ? 'error-more' : 'error';
  }
  if (!b) return 'none';
  if (off(b)) return 'disabled';
  if (click) { b.click(); return 'clicked'; }
  return 'ready';
}"""
# Every data-state of the page, and whether a captcha is on it (one round trip; null: a
# selector only Playwright reads, asked then through a locator).
_STATES_JS = """([states, captcha]) => {
  let hit = null, raws = null;
  try { hit = !!document.querySelector(captcha); } catch (e) {}
  try { raws = [...document.querySelectorAll(states)].map(e => e.getAttribute('data-state')); }
  catch (e) {}
  return [hit, raws];
}"""
_STATE_OF_JS = "els => els.map(e => e.getAttribute('data-state'))"
# Whether Playwright would call an element visible (a box, visibility: visible).
_VISIBLE_JS = """e => {
  if (e.checkVisibility && !e.checkVisibility()) return false;
  if (getComputedStyle(e).visibility !== 'visible') return false;
  const r = e.getBoundingClientRect();
  return r.width > 0 && r.height > 0;
}"""
# The index of the first visible match, or -1.
_FIRST_VISIBLE_JS = f"els => els.findIndex({_VISIBLE_JS})"
# The first visible match, and whether a click at its centre reaches it (no popup or overlay
# over it, enabled, in the viewport): [index or -1, clear].
_CLICK_TARGET_JS = (
    """els => {
  const i = els.findIndex("""
    + _VISIBLE_JS
    + """);
  if (i < 0) return [-1, false];
  const e = els[i];
  if (e.disabled || e.getAttribute('aria-disabled') === 'true') return [i, false];
  const r = e.getBoundingClientRect();
  const x = r.left + r.width / 2, y = r.top + r.height / 2;
  if (x < 0 || y < 0 || x >= innerWidth || y >= innerHeight) return [i, false];
  const hit = document.elementFromPoint(x, y);
  return [i, !!hit && (hit === e || e.contains(hit))];
}"""
)
# Looks that Playwright's locators would make are made here with plain CSS, in the page's
# own world: a locator makes Playwright put its injected script (330 KB) into the document,
# in each world it is used from (about 8 ms of the renderer's time each, and as much again
# in the browser, the driver and their pipes), on the start page and on the result page of
# every photo. Each answers null for a selector plain CSS cannot read (Playwright's own
# ``text=``, ``:has-text()``...): the caller then asks the locator, as before.
# How many elements match.
_COUNT_JS = (
    "sel => { try { return document.querySelectorAll(sel).length; } catch (e) { return null; } }"
)
# Whether one is visible as Playwright says it.
_SHOWN_JS = (
    """sel => {
  let els;
  try { els = [...document.querySelectorAll(sel)]; } catch (e) { return null; }
  return els.some("""
    + _VISIBLE_JS
    + """);
}"""
)
# Whether one match of the first selector also matches the second (a locator's ``and_``).
_BOTH_JS = """([sel, also]) => {
  try { return [...document.querySelectorAll(sel)].some(e => e.matches(also)); }
  catch (e) { return null; }
}"""
# _CLICK_TARGET_JS over a selector, with the point to click: [index or -1, clear, x, y].
_CLICK_AT_JS = (
    """sel => {
  let els;
  try { els = [...document.querySelectorAll(sel)]; } catch (e) { return null; }
  const [i, clear] = ("""
    + _CLICK_TARGET_JS
    + """)(els);
  if (!clear) return [i, false, 0, 0];
  const r = els[i].getBoundingClientRect();
  return [i, true, r.left + r.width / 2, r.top + r.height / 2];
}"""
)
# The upload's file input: the panel's own first (the page may hold others: feedback
# forms...), else the first on the page; null when there is none or the selectors are
# Playwright's own.
_FILE_INPUT_JS = """([panel, input]) => {
  try {
    for (const p of document.querySelectorAll(panel)) {
      const e = p.querySelector(input);
      if (e) return e;
    }
    return document.querySelector(input);
  } catch (e) { return null; }
}"""
# The start page at a glance: a captcha on it? a camera button shown (visible as Playwright
# says it, as every other look)? (null: a selector this look cannot read; the caller then
# asks Playwright)
_START_JS = (
    """([captcha, camera]) => {
  const out = {captcha: null, camera: null};
  try { out.captcha = !!document.querySelector(captcha); } catch (e) {}
  try { out.camera = [...document.querySelectorAll(camera)].some("""
    + _VISIBLE_JS
    + """); } catch (e) {}
  return out;
}"""
)


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
        self.save_error: OSError | None = None  # a page that could not be written
        self.tasks: list[asyncio.Task[None]] = []
        # the network, as the tab sees it
        self.in_flight: dict[Any, float] = {}
        self.last_activity = time.monotonic()
        self.activity = asyncio.Event()
        self.uploads: list[dict[str, Any]] = []  # upload replies: {"status", "data"}
        self.uploading = False
        self.captcha_looked = 0.0  # when the page was last looked at for a captcha
        self.seen: set[str] = set()  # every result id saved so far
        self.dry = 0  # answered pages in a row that brought no new result
        self.retries = 0  # clicks on the error notice's retry since a page last came
        self.retried_at = 0.0
        self.retried_pages = 0  # pages saved when the notice was last retried
        self.notice_since: float | None = None
        self.following = False  # in load_all: a navigation of the tab is a page coming
        self.new_document = False  # a document loaded (a "more" that is a plain link)
        self.document_coming = False  # a navigation started, its document not read yet
        self.navigations: set[Any] = set()  # the tab's own document requests not yet answered
        self.documents: set[int] = set()  # the pages read from a loaded document's data-state
        self.nudge = asyncio.Event()  # a navigation or an upload reply: look at the page again
        self.attached = False  # following the page's traffic (from the start page on)

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
        own = self.is_document(request)
        if own:
            self.navigations.add(request)
        document = self.following and own
        if document or self.is_fetch(request.url):
            self.in_flight[request] = time.monotonic()
            self.document_coming = self.document_coming or document
            self.touch()

    def on_request_failed(self, request: Any) -> None:
        if self.following and self.is_document(request):
            self.document_coming = False  # (a navigation given up: no document to read)
        self.on_request_done(request)

    @staticmethod
    def is_document(request: Any) -> bool:
        """The tab's own navigation (a new document), not a frame's."""
        try:
            return bool(request.is_navigation_request() and request.frame.parent_frame is None)
        except Exception:
            return False

    def on_document(self, page: Any) -> None:
        if self.following:
            self.new_document = True
            self.touch()

    def on_request_done(self, request: Any) -> None:
        self.navigations.discard(request)
        if self.in_flight.pop(request, None) is not None:
            self.touch()

    def on_navigated(self, frame: Any) -> None:
        if frame.parent_frame is None:
            self.navigations.clear()  # committed: its document is there to be looked at
            self.nudge.set()

    def on_response(self, response: Any) -> None:
        if self.is_captcha_url(response.url):
            self.captcha = True
        with contextlib.suppress(Exception):
            if self.sel["captcha_header"].lower() in response.headers:
                self.captcha = True
        if self.is_fetch(response.url):
            self.fetches += 1
            if response.status == 404:  # known now: the next look must not click again
                self.end_404 = True
            self.tasks.append(asyncio.ensure_future(self.capture(response)))
        elif self.uploading and response.request.method == "POST":
            reply = {"status": response.status, "data": None}
            self.uploads.append(reply)  # the status now: the page may show its error first
            self.tasks.append(asyncio.ensure_future(self.read_upload(response, reply)))
            self.nudge.set()

    async def read_upload(self, response: Any, reply: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            reply["data"] = json.loads(await response.body())
        if serp.is_captcha(reply["data"]):
            self.captcha = True
        self.nudge.set()

    async def capture(self, response: Any) -> None:
        """Save one serpList/fetch answer (read now: after navigation it is gone)."""
        query = parse_qs(urlsplit(response.url).query)
        try:
            page = int(query["p"][0])
        except (KeyError, ValueError):
            page = 900 + self.fetches
        if page in self.documents:  # a number a document's page took: never overwritten
            page = self.free_page()
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
        try:  # JSON is JSON whatever the type says (text/javascript, text/plain...)
            data = json.loads(text)
        except ValueError as exc:
            if "json" not in ctype.lower():
                self.bad_files += 1
                note = f"URL: {response.url}\nStatus: {status}\nContent-Type: {ctype}\n\n{text[:SNIPPET_CHARS]}"
                atomic_write_text(xhr_dir / f"{stem}_NOT_JSON.txt", note)
                log_failure(self.name, f"XHR p={page}", f"not JSON ({ctype or 'no content type'})")
                return
            self.bad_files += 1
            atomic_write_text(xhr_dir / f"{stem}_CORRUPT_JSON.txt", text[:SNIPPET_CHARS])
            log_failure(self.name, f"XHR p={page}", exc)
            return
        if serp.is_captcha(data):
            self.captcha = True
            return
        try:
            self.save(page, data, text=text)
        except OSError as exc:  # the disk, not the site: the query fails, one line
            self.save_error = self.save_error or exc
            log_failure(self.name, f"save XHR p={page}", exc)

    def save(
        self, page: int, data: Any, kind: str = serp.KIND_RESULTS, *, text: str | None = None
    ) -> None:
        """Write one page: ``text`` as it came (an XHR answer), else ``data`` as Yandex writes
        JSON (a lone surrogate, half an emoji in a cut title, escaped: it cannot be UTF-8)."""
        path = self.opts.xhr_dir / serp.saved_name(self.name, page, kind)
        atomic_write_text(path, text if text is not None else serp.dumps(data))
        if kind == serp.KIND_SITES:
            self.sites = len(serp.sites_of(data) or [])
            return
        try:
            ids = set(serp.find_entities(data))
        except serp.FormatError:
            ids = set()
        if page not in self.pages:  # (the same page again is no news either way)
            self.dry = 0 if ids - self.seen else self.dry + 1
        self.seen |= ids
        self.pages[page] = ids

    # ---------------------------------------------- small confirmed actions

    async def check_captcha(self, page: Any, *, polling: bool = False) -> None:
        """A captcha answer, URL or page raises CaptchaHit. ``polling``: a loop that
        looks often; the page itself is then looked at every DOM_CAPTCHA_EVERY s."""
        if self.captcha or self.is_captcha_url(page.url):
            raise CaptchaHit(page.url)
        now = time.monotonic()
        if polling and now - self.captcha_looked < DOM_CAPTCHA_EVERY:
            return
        self.captcha_looked = now
        with contextlib.suppress(Exception):
            if await self.count(page, self.sel["captcha"]):
                raise CaptchaHit(page.url)

    async def until(self, page: Any, effect: Any, what: str, *, act: Any = None) -> None:
        """Do ``act`` until ``effect()`` holds, looking ever longer; fail after --timeout.

        ``act`` is not done again while the tab's own navigation is under way (a click
        that opens a page, its answer slower than the look): a second click would start
        it again, or wait (up to 5 s) for a target the coming page may not have."""
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
                await self.check_captcha(page, polling=True)
                with contextlib.suppress(Exception):
                    seen = effect()
                    if inspect.isawaitable(seen):
                        seen = await seen
                    if seen:
                        return
                now = time.monotonic()
                if now >= deadline or (now >= look_until and not self.navigations):
                    break
                await asyncio.sleep(0.05)
            if time.monotonic() >= deadline:
                raise StageError(
                    _("{what}: nothing happened in {seconds} s").format(
                        what=what, seconds=f"{self.opts.timeout:g}"
                    )
                )
            window = min(window * 2, 4.0)

    async def count(self, page: Any, selector: str) -> int:
        """How many elements match (plain CSS, see _COUNT_JS; raises while the page is
        between two documents, as any look: the caller looks again)."""
        n = await page.evaluate(_COUNT_JS, selector)
        return int(n) if n is not None else await page.locator(selector).count()

    async def visible(self, page: Any, selector: str) -> bool:
        shown = await page.evaluate(_SHOWN_JS, selector)
        if shown is not None:
            return bool(shown)
        return bool(await page.locator(selector).evaluate_all(_FIRST_VISIBLE_JS) >= 0)

    async def click(self, page: Any, selector: str, attempt: int) -> None:
        """Click the first visible match; every third try a mousedown (some buttons want it).

        The first try, when nothing covers the target, is a plain pointer click without
        Playwright's waits (two frames for "stable", the overlay handlers); any later
        try is Playwright's full click (it accepts the cookie popup over the target)."""
        loc = page.locator(selector)
        at = None
        if attempt == 0:
            with contextlib.suppress(Exception):  # (navigating: the locator waits for it)
                at = await page.evaluate(_CLICK_AT_JS, selector)
        if at is not None and at[1]:  # the pointer click a forced locator click makes
            await page.mouse.click(at[2], at[3])
            return
        index, clear = at[:2] if at is not None else await loc.evaluate_all(_CLICK_TARGET_JS)
        target = loc.nth(index) if index >= 0 else loc.first
        if attempt % 3 == 2:
            await target.dispatch_event("mousedown")
        timeout = min(5000, self.opts.timeout * 1000)
        await target.click(timeout=timeout, force=attempt == 0 and clear)

    async def read_states(self, page: Any) -> list[str | None]:
        """Every ``data-state`` of the page as it is; a captcha on the page raises CaptchaHit
        (the same round trip)."""
        if self.captcha or self.is_captcha_url(page.url):
            raise CaptchaHit(page.url)
        hit, raws = await page.evaluate(_STATES_JS, [self.sel["data_state"], self.sel["captcha"]])
        if hit is None:
            await self.check_captcha(page)
        elif hit:
            raise CaptchaHit(page.url)
        self.captcha_looked = time.monotonic()
        if raws is None:
            raws = await page.locator(self.sel["data_state"]).evaluate_all(_STATE_OF_JS)
        return list(raws)

    async def states(self, page: Any) -> list[Any]:
        """Every ``data-state`` of the page, parsed; a captcha on it raises CaptchaHit."""
        return self.parse_states(await self.read_states(page))

    def parse_states(self, raws: list[str | None]) -> list[Any]:
        """The ``data-state``s parsed (a broken one is kept as a bad file)."""
        out = []
        for raw in raws:
            try:
                out.append(json.loads(raw or ""))
            except ValueError as exc:
                self.bad_files += 1
                atomic_write_text(
                    self.opts.xhr_dir
                    / serp.saved_name(self.name, 0).replace(".json", "_CORRUPT_JSON.txt"),
                    (raw or "")[:SNIPPET_CHARS],
                )
                log_failure(self.name, self.stage, exc)
        return out

    # ---------------------------------------------- the flow

    def listeners(self) -> dict[str, Any]:
        return {
            "request": self.on_request,
            "requestfinished": self.on_request_done,
            "requestfailed": self.on_request_failed,
            "response": self.on_response,
            "domcontentloaded": self.on_document,
        }

    def detach(self, page: Any) -> None:
        """Stop following the page's traffic (the page may serve the next search)."""
        for event, handler in self.listeners().items():
            with contextlib.suppress(Exception):
                page.remove_listener(event, handler)
        with contextlib.suppress(Exception):
            page.remove_listener("framenavigated", self.on_navigated)

    def attach(self, page: Any) -> None:
        """Follow the page's traffic from now on (once)."""
        if self.attached:
            return
        self.attached = True
        for event, handler in self.listeners().items():
            page.on(event, handler)
        page.on("framenavigated", self.on_navigated)

    async def run(self, page: Any) -> str:
        """Search, open each tab asked for, save everything; return how the results ended.

        The page may still show the last search's results: its traffic is followed only
        once the start page has replaced that document (``open_start``), so an answer
        the old page asked for is never taken for this search's."""
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
        await self.check_captcha(page, polling=True)  # the page: unless load_all just looked
        if self.save_error is not None:
            raise StageError(
                _("a page could not be saved: {reason}").format(
                    reason=console.one_line(self.save_error)
                )
            )
        return end

    async def open_start(self, page: Any) -> None:
        self.stage = "open start page"
        response = await page.goto(self.crawler.base_url, wait_until="domcontentloaded")
        self.attach(page)  # the last search's document is gone now
        if response is not None:
            self.on_response(response)  # (its captcha header: the listener came after it)
        self.crawler.gate.connected = True
        if await self.look_at_start(page):
            return  # a camera button: the search page, not "under construction"
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

    async def look_at_start(self, page: Any) -> bool:
        """A captcha raises CaptchaHit; True when a camera button is shown (one round trip)."""
        if self.captcha or self.is_captcha_url(page.url):
            raise CaptchaHit(page.url)
        look: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            look = await page.evaluate(_START_JS, [self.sel["captcha"], self.sel["camera_button"]])
        if look.get("captcha"):
            raise CaptchaHit(page.url)
        if look.get("captcha") is None:
            await self.check_captcha(page)
        else:
            self.captcha_looked = time.monotonic()
        return bool(look.get("camera"))

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
        if not await self.set_file(page):
            # the panel's own file input first: the page may hold others (feedback forms...)
            inputs = page.locator(sel["upload_panel"]).locator(sel["file_input"])
            if not await inputs.count():
                inputs = page.locator(sel["file_input"])
            await inputs.first.set_input_files(self.upload)
        search = sel["search_path"]
        reply_at: float | None = None
        error_at = 0.0
        deadline = time.monotonic() + self.opts.timeout
        while True:
            self.nudge.clear()  # set by a navigation or a reply while the page is looked at
            await self.check_captcha(page, polling=True)
            if search in urlsplit(page.url).path:
                break
            if any(reply["status"] == 413 for reply in self.uploads):
                raise TooLarge
            shown = 0
            with contextlib.suppress(Exception):  # (navigating: the URL is looked at again)
                shown = await self.count(page, sel["upload_error"])
            if shown:  # an icon: may have no size
                error_at = error_at or time.monotonic()
                if not self.uploads and time.monotonic() - error_at < 2.0:
                    await self.wait_nudge(0.1)  # the answer's status may reach us after the page
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
            # a navigation or a reply wakes us at once; the error icon is looked for meanwhile
            await self.wait_nudge(UPLOAD_LOOK_EVERY)
        self.uploading = False
        await page.wait_for_load_state("domcontentloaded")
        await self.check_captcha(page)

    async def set_file(self, page: Any) -> bool:
        """Give the photo to the upload's file input as Playwright's ``set_input_files`` does
        for a local Chromium (DOM.setFileInputFiles: the page gets its input and change
        events), but through a CDP session of its own: no locator, so no injected script
        (see _COUNT_JS). False when that cannot be done here (another browser, a selector
        only Playwright reads, no input yet): the caller then uses the locator."""
        try:
            cdp = await page.context.new_cdp_session(page)
        except Exception:
            return False
        try:
            arg = json.dumps([self.sel["upload_panel"], self.sel["file_input"]])
            found = await cdp.send("Runtime.evaluate", {"expression": f"({_FILE_INPUT_JS})({arg})"})
            object_id = (found.get("result") or {}).get("objectId")
            if not object_id:
                return False
            files = [str(Path(self.upload).resolve())]
            await cdp.send("DOM.setFileInputFiles", {"objectId": object_id, "files": files})
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await cdp.detach()

    async def wait_nudge(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.nudge.wait(), seconds)

    def search_url(self, reply: dict[str, str]) -> str:
        parts = urlsplit(self.crawler.base_url)
        query = urlencode({"cbir_id": reply["cbir_id"], "rpt": "imageview", "url": reply["url"]})
        return urlunsplit((parts.scheme, parts.netloc, self.sel["search_path"], query, ""))

    async def open_tab(self, page: Any, tab_selector: str, marker: str, what: str) -> None:
        """Click the tab until the URL says it is open, or the tab itself is shown active
        (a client-side route that keeps the URL). The page itself is looked at for a captcha
        by the caller (``read_states``, in the same round trip as its data-states)."""
        active = self.sel["active_tab"]

        async def opened() -> bool:
            if marker in page.url:
                return True
            both = await page.evaluate(_BOTH_JS, [tab_selector, active])
            if both is not None:
                return bool(both)
            return bool(await page.locator(tab_selector).and_(page.locator(active)).count())

        await self.until(page, opened, what, act=lambda n: self.click(page, tab_selector, n))
        with contextlib.suppress(Exception):
            await page.wait_for_load_state("domcontentloaded")

    async def open_similar(self, page: Any) -> str:
        sel = self.sel
        self.stage = "open similar"
        await self.open_tab(
            page, sel["similar_tab"], sel["similar_url_marker"], _("the 'Похожие' tab did not open")
        )
        raws = await self.read_states(page)
        self.stage = "first page"
        first = serp.results_state(self.parse_states(raws))
        self.stage = "load more"
        with contextlib.suppress(serp.FormatError):
            self.seen |= set(serp.find_entities(first)) if first is not None else set()
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
        """Scroll and click "more" until a 404, the error notice, or a quiet period; a
        navigation meanwhile (a "more" that is a plain link) is a page coming."""
        self.touch()
        self.following = True
        try:
            return await self._load_all(page)
        finally:
            self.following = False

    def free_page(self) -> int:
        return max(self.pages, default=0) + 1

    async def read_document(self, page: Any) -> None:
        """A new document came (a "more" that is a plain link): its data-state holding
        results is a page, numbered by the URL's ``p`` unless that number is taken."""
        self.new_document = self.document_coming = False
        with contextlib.suppress(Exception):
            await page.wait_for_load_state("domcontentloaded")
        try:
            state = serp.results_state(await self.states(page))
        except Exception as exc:  # navigating again: the next document will be read
            log_failure(self.name, "read a next page", exc)
            return
        ids = set(serp.entities_of(serp.state_serp(state))) if state is not None else set()
        if not ids - self.seen:
            return  # no results, or only known ones (the page reloaded itself)
        try:
            number = int(parse_qs(urlsplit(page.url).query)["p"][0])
        except (KeyError, ValueError):
            number = self.free_page()
        if number <= 0 or number in self.pages:
            number = self.free_page()
        self.documents.add(number)
        try:
            self.save(number, state)
        except OSError as exc:
            self.save_error = self.save_error or exc
            log_failure(self.name, f"save page {number}", exc)

    async def _load_all(self, page: Any) -> str:
        more, err, captcha = self.sel["more_button"], self.sel["error_end"], self.sel["captcha"]
        thumb = self.sel["result_thumb"]
        timeout = self.opts.timeout
        quiet = self.opts.quiet_period
        tick = 0
        # A click from the page's own script is the fastest; if one ever starts
        # nothing (a page that wants a real pointer), real clicks from then on.
        script_click = True
        clicked_at = 0.0
        while True:
            await self.check_captcha(page, polling=True)  # the answers and the URL; the page: below
            if self.new_document:
                await self.read_document(page)
            if self.end_404 and not self.in_flight:
                return "404"
            now = time.monotonic()
            # pages that bring nothing new, again and again: over, whatever the button says
            dry = self.dry >= DRY_PAGES
            if dry and not self.in_flight and now - self.last_activity >= ERROR_SETTLE:
                return "quiet"
            try:
                # after a 404 nothing more is clicked (a button left enabled would ask again)
                # nor while a new document is coming: its "more" would be clicked before it is
                # read, nor while a request is in flight: its answer may reach the page (and
                # re-enable the button) before it reaches us, a 404 too
                wait = self.end_404 or dry or self.document_coming
                click = script_click and not wait and not self.in_flight
                still = not self.in_flight and now - self.last_activity >= STILL_AFTER
                args = [more, err, tick, click, thumb, captcha, self.sel["error_retry"], still]
                look = await page.evaluate(_LOOK_JS, args)
            except Exception:
                await self.check_captcha(page)
                look = "none"  # the page is navigating or busy: look again
            if look == "captcha":
                raise CaptchaHit(page.url)
            self.captcha_looked = time.monotonic()
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
            elif look.startswith("error"):
                if await self.retry_notice(page, look, now):
                    return "error"
            elif look in ("ready", "clicked"):
                if now - self.last_activity > max(timeout, quiet):
                    return "quiet"  # a button that starts nothing: the network says it is over
                if look == "ready" and not wait:
                    if script_click and not click:
                        continue  # the request ended while we looked: the next look clicks
                    with contextlib.suppress(Exception):
                        await self.click(page, self.sel["more_button"], tick)
            elif now - self.last_activity >= quiet:
                return "quiet"
            if self.last_activity >= clicked_at:
                clicked_at = 0.0
            self.activity.clear()
            # A request in flight: its answer (or failure) wakes us; meanwhile a look now and
            # then (a captcha, the timeout). Just after the network moved, the page reacts
            # within a frame or two: look again soon.
            if self.in_flight:
                pause = IN_FLIGHT_LOOK_EVERY
            elif time.monotonic() - self.last_activity < 1.0:
                pause = 0.05
            else:
                pause = 0.25
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.activity.wait(), pause)

    async def retry_notice(self, page: Any, look: str, now: float) -> bool:
        """The error notice is shown, nothing in flight: click its retry control (else the
        "more" button) once the page is still; True when the results end here: no control,
        ERROR_RETRIES clicks that brought no page, or a notice older than --timeout."""
        if len(self.pages) > self.retried_pages or self.notice_since is None:
            self.retries, self.retried_pages, self.notice_since = 0, len(self.pages), now
        if now - max(self.last_activity, self.retried_at) < ERROR_SETTLE:
            return False  # the page may be retrying by itself: let it
        if look == "error" or self.retries >= ERROR_RETRIES:
            return True
        if now - self.notice_since > self.opts.timeout:
            return True
        err, retry = self.sel["error_end"], self.sel["error_retry"]
        target = f":is({err}) :is({retry})" if look == "error-retry" else self.sel["more_button"]
        self.retries += 1
        self.retried_at = time.monotonic()
        with contextlib.suppress(Exception):
            await self.click(page, target, 0)
        self.retried_at = time.monotonic()
        return False
