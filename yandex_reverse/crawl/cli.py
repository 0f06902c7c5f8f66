"""Step 1's command line: the flags, the run, and the summary (``main``)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from urllib.parse import urlsplit

from .. import console, serp
from ..cli import add_common_flags
from ..console import UsageError, esc
from ..i18n import _, ngettext
from .progress import STATUS_LABELS
from .queries import (
    QUERY_EXTENSIONS,
    Query,
    find_queries,
    read_url_list,
    record_query_names,
    record_url_queries,
)
from .run import Crawler
from .settings import (
    DEFAULT_BACKOFF,
    DEFAULT_BASE_URL,
    DEFAULT_QUIET,
    ERRORS_FILE,
    TABS,
    Options,
    load_selectors,
)


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
    p.add_argument(
        "--load-images",
        action="store_true",
        help=_(
            "load the pictures of the pages (without a window they are not loaded: step 1 "
            "reads only the data; --headed always loads them)"
        ),
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
    add_common_flags(p, yes=True)
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
        load_images=args.load_images or not args.headless,
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
        record_query_names(opts.xhr_dir, [p.name for p in photos])  # names too long for files
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
    try:
        outcomes = asyncio.run(crawler.run(todo)) if todo else []
    finally:
        crawler.progress.close()  # the run's journal folded into .progress.json
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
