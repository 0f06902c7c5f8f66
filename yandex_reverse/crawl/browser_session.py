"""The run's browser: launched once (Chromium flags, proxy, persistent profile), a page per
search in a shared context (one for every ``PAGES_PER_CONTEXT`` tabs) or a fresh one, the
cookie popup accepted wherever it shows."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .. import console
from ..browser import BrowserNotFound, find_browser
from ..console import StepFailed
from ..i18n import _
from .settings import Options

LAUNCH_ARGS = (
    "--disable-blink-features=AutomationControlled",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--mute-audio",
)

# Playwright's own headless --blink-settings (a later --blink-settings replaces the whole
# switch: they are repeated with imagesEnabled=false)
HEADLESS_BLINK = (
    "primaryHoverType=2,availableHoverTypes=2,primaryPointerType=4,availablePointerTypes=4"
)
NO_IMAGES = "--blink-settings=" + HEADLESS_BLINK + ",imagesEnabled=false"

# Chromium's RenderDocument gives every new document a new frame in the renderer, even a
# page of the same site (each photo loads three: start, result, similar): about 0.04 CPU s
# a photo. Off, a same-site navigation reuses the frame, as Chromium did until 2023.
# Chromium keeps only the last --disable-features: ours repeats Playwright's own list, read
# from its driver; where that cannot be read, nothing is added (the feature stays on).
EXTRA_DISABLED_FEATURES = ("RenderDocument",)

# Chromium opens at most 6 connections to one host per context (its network context): 8
# tabs sharing one context never had more than 6 requests in flight. Shared contexts are
# therefore a pool, context k serving tabs k*6 to k*6+5 (a persistent --profile is one
# context: its tabs share it, cap and all).
PAGES_PER_CONTEXT = 6

CLOSE_WAIT = 5.0  # seconds: closing a tab sent to a captcha mid-upload can hang in Chromium


def features_in(text: str) -> tuple[str, ...] | None:
    """The features a Playwright driver's source disables (its ``disabledFeatures`` list,
    or an older inline ``--disable-features=`` switch); None where neither is found."""
    found = re.search(r"disabledFeatures\s*=\s*(?:\([^)]*\)\s*=>\s*)?\[", text)
    if found:  # (comments out first: a "]" in one must not end the list)
        rest = re.sub(r"/\*.*?\*/", "", text[found.end() : found.end() + 20000], flags=re.S)
        body = re.sub(r"//[^\n]*", "", rest).split("]", 1)[0]
        names = re.findall(r"[\"'`]([A-Za-z0-9_]+)[\"'`]", body)
        return tuple(names) or None
    found = re.search(r"[\"'`]--disable-features=([A-Za-z0-9_,]+)[\"'`]", text)
    return tuple(n for n in found.group(1).split(",") if n) or None if found else None


@functools.lru_cache(maxsize=1)
def playwright_disabled_features() -> tuple[str, ...] | None:
    """Playwright's own --disable-features list, read from its installed driver."""
    try:
        import playwright
    except ImportError:
        return None
    lib = Path(playwright.__file__).parent / "driver" / "package" / "lib"
    for path in (lib / "server" / "chromium" / "chromiumSwitches.js", lib / "coreBundle.js"):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        names = features_in(text)
        if names:
            return names
    return None


def disable_features_arg() -> str | None:
    """--disable-features with Playwright's list and ours (None: Playwright's not found)."""
    own = playwright_disabled_features()
    if not own:
        return None
    return "--disable-features=" + ",".join(dict.fromkeys((*own, *EXTRA_DISABLED_FEATURES)))


def launch_args(opts: Options) -> list[str]:
    """Chromium's switches for the run (Playwright adds its own before them)."""
    args = list(LAUNCH_ARGS)
    features = disable_features_arg()
    if features:
        args.append(features)
    if opts.headless and not opts.load_images:
        # Step 1 reads data, not pictures: no image is requested or decoded (about 0.2
        # CPU s a photo; free per request, unlike Playwright routing, which sends every
        # request through the driver and turns the HTTP cache off). A window (--headed)
        # keeps them: a captcha must be solvable there.
        args.append(NO_IMAGES)
    return args


class BrowserSession:
    """``async with BrowserSession(opts) as session``: ``await session.new_page()`` gives a
    page and the coroutine that closes it; the browser closes when the block ends."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.browser: Any = None
        # shared contexts (headless-shell, a profile): the k-th serves tabs k*6 to k*6+5
        self.shared: list[Any] = []
        self.separate = False  # a context per page (full Chromium)
        self.context_args: dict[str, Any] = {
            "locale": "ru-RU",
            "viewport": {"width": 1366, "height": 900},
        }
        self._stack = contextlib.AsyncExitStack()
        self._new_context = asyncio.Lock()

    async def __aenter__(self) -> BrowserSession:
        from playwright.async_api import async_playwright

        opts = self.opts
        try:
            executable = find_browser(opts.browser, headless=opts.headless)
        except BrowserNotFound as exc:
            raise StepFailed(str(exc)) from exc
        args = launch_args(opts)
        # Full Chromium stalls tabs that share a context; headless-shell does not.
        self.separate = opts.profile is None and (
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
        pw = await self._stack.enter_async_context(async_playwright())
        try:
            if opts.profile is not None:
                self.shared.append(
                    await pw.chromium.launch_persistent_context(
                        str(opts.profile), **launch, **self.context_args
                    )
                )
            else:
                self.browser = await pw.chromium.launch(**launch)
                self.context_args["user_agent"] = (
                    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                    f"Chrome/{self.browser.version} Safari/537.36"
                )
        except Exception as exc:
            await self.close()
            hint = ""
            if not opts.headless and not os.environ.get("DISPLAY"):
                hint = " " + _(
                    "(--headed needs a display: run under xvfb-run or a desktop session)"
                )
            reason = console.one_line(exc).split("Call log:")[0].split("Browser logs:")[0]
            raise StepFailed(
                _("cannot start the browser: {reason}").format(reason=reason.strip()) + hint
            ) from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the browser, every context with it (a persistent profile is its context)."""
        with contextlib.suppress(Exception):
            if self.browser is not None:
                await self.browser.close()
            elif self.shared:
                await self.shared[0].close()
        self.shared = []
        await self._stack.aclose()

    async def shared_context(self, tab: int) -> Any:
        """The shared context of the ``tab``-th tab (0-based), made when first asked for."""
        if self.browser is None:  # a persistent profile: one context for every tab
            return self.shared[0]
        index = tab // PAGES_PER_CONTEXT
        async with self._new_context:  # tabs start together: one context each, not one a tab
            while len(self.shared) <= index:
                self.shared.append(await self.browser.new_context(**self.context_args))
        return self.shared[index]

    async def new_page(self, tab: int = 0) -> tuple[Any, Callable[[], Awaitable[None]]]:
        """A page for the ``tab``-th tab and the coroutine that closes it."""
        if self.separate:
            context = await self.browser.new_context(**self.context_args)
        else:
            context = await self.shared_context(tab)
        page = await context.new_page()
        page.set_default_timeout(self.opts.timeout * 1000)
        await page.add_locator_handler(
            page.locator(self.opts.selectors["cookie_popup"]).first, self.accept_cookies
        )
        return page, (context.close if self.separate else page.close)

    async def accept_cookies(self, popup: Any) -> None:
        with contextlib.suppress(Exception):
            await popup.page.locator(self.opts.selectors["cookie_accept"]).first.click(timeout=2000)


class Tab:
    """One worker's page, kept from one search to the next: no new page (and renderer
    process) per search, and no blank page between two (the next search's start page
    replaces the last results page; the job follows the traffic only from then on). A
    search that fails or meets a captcha drops it; the next search then gets a fresh one."""

    def __init__(self, session: BrowserSession, index: int = 0) -> None:
        self.session = session
        self.index = index  # the worker's number: which shared context its pages are in
        self._page: Any = None
        self._close: Callable[[], Awaitable[None]] | None = None

    async def page(self) -> Any:
        if self._page is None or self._page.is_closed():
            self._page, self._close = await self.session.new_page(self.index)
        return self._page

    async def drop(self) -> None:
        """Close the page (giving up after a few seconds: the browser closes it at the end)."""
        close, self._page, self._close = self._close, None, None
        if close is not None:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(close(), min(CLOSE_WAIT, self.session.opts.timeout))
