"""Step 5's command line: flags, the questions, the summary (``5_Download_async.py``)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import shutil
import sqlite3
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from .. import db as dbmod
from .. import raycluster
from ..cli import Yes, add_common_flags
from ..console import (
    StepFailed,
    UsageError,
    ask_choice,
    console,
    esc,
    human_bytes,
    one_line,
    setup_logging,
    table,
)
from ..i18n import _, ngettext
from ..labels import shown
from ..urls import normalize_url
from .fetch import DEFAULT_USER_AGENT
from .ledger import ledger_totals
from .reconcile import reconcile
from .run import Downloader, Settings, Stats, Stopped
from .store import db_claim, folder_lock, remove_temp_files

SOURCES = {"1": "yandex_images.db", "2": "vk_images.db"}
LOG_NAME = "download.log"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="5_Download_async.py",
        description=_(
            "Download the images found by Yandex (step 5). Resumable: a re-run skips what is "
            "done and retries only what may succeed."
        ),
    )
    parser.add_argument(
        "--db",
        type=Path,
        help=_(
            "source DB (asked on a terminal: 1 yandex_images.db, 2 vk_images.db; "
            "default without a terminal: yandex_images.db)"
        ),
    )
    parser.add_argument(
        "--out", type=Path, help=_("download folder (default: the DB's name without .db)")
    )
    parser.add_argument(
        "--what",
        choices=("originals", "all-variants"),
        help=_(
            "originals: one file per result, the best URL first and the other copies as "
            "fallbacks (default); all-variants: every URL of every result, as the original script"
        ),
    )
    parser.add_argument("--limit", type=int, help=_("try at most N results (a trial run)"))
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help=_("also retry earlier failures that may succeed (timeouts, 5xx, 429, resets)"),
    )
    parser.add_argument("--concurrency", type=int, default=40, help=_("downloads at once (40)"))
    parser.add_argument("--per-host", type=int, default=4, help=_("downloads at once per host (4)"))
    parser.add_argument(
        "--timeout", type=float, default=40.0, help=_("seconds for one attempt of one URL (40)")
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=50 * 1024 * 1024,
        help=_("refuse bodies larger than this (50 MiB)"),
    )
    parser.add_argument(
        "--retries", type=int, default=3, help=_("retries of transient failures (3)")
    )
    parser.add_argument(
        "--proxy", help=_("HTTP proxy URL (default: HTTP_PROXY/HTTPS_PROXY if set)")
    )
    parser.add_argument("--user-agent", default=DEFAULT_USER_AGENT, help=_("User-Agent header"))
    parser.add_argument(
        "--min-side", type=int, default=0, help=_("skip images whose shorter side is below N px")
    )
    parser.add_argument(
        "--min-bytes", type=int, default=0, help=_("skip files smaller than N bytes")
    )
    parser.add_argument(
        "--allow-private",
        action="store_true",
        help=_(
            "also fetch result URLs and redirects to loopback, private, link-local or "
            "reserved addresses (refused by default: a result must not reach your own machine "
            "or LAN)"
        ),
    )
    raycluster.add_flags(parser)
    parser.add_argument(
        "-y", "--yes", action=Yes, help="answer every question with its default (source, what)"
    )
    add_common_flags(parser)
    return parser


def resolve_settings(args: argparse.Namespace) -> Settings:
    raycluster.check_flags(args)
    if args.db is None:
        choice = ask_choice(
            _("Choose image source"),
            [("1", "yandex_images.db -> yandex_images/"), ("2", "vk_images.db -> vk_images/")],
            flag="--db",
            default="1",
        )
        args.db = Path(SOURCES[choice])
        if args.what is None:
            args.what = ask_choice(
                _("What to download"),
                [
                    ("originals", _("one original per result (fallbacks: its other copies)")),
                    ("all-variants", _("every copy of every result (as the original script)")),
                ],
                flag="--what",
                default="originals",
            )
    db_path = Path(args.db).expanduser()
    if not db_path.is_file():
        maker = "3_VK_Domain_Analyzer.py" if db_path.name == "vk_images.db" else "2_XHRtoDB.py"
        raise StepFailed(
            _("database not found: {path} (run {script} first)").format(path=db_path, script=maker)
        )
    for name in ("concurrency", "per_host", "max_bytes"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise UsageError(_("{flag} must be at least 1").format(flag=flag))
    if args.timeout <= 0:
        raise UsageError(_("--timeout must be positive"))
    if args.limit is not None and args.limit < 0:
        raise UsageError(_("--limit must not be negative"))
    if args.retries < 0 or args.min_side < 0 or args.min_bytes < 0:
        raise UsageError(_("--retries, --min-side and --min-bytes must not be negative"))
    if args.proxy and normalize_url(args.proxy) is None:
        raise UsageError(
            _("--proxy must be an http(s) URL, not {value}").format(value=repr(args.proxy))
        )
    out = Path(args.out).expanduser() if args.out else db_path.with_suffix("")
    if out.resolve() == db_path.resolve():
        raise UsageError(_("--out must be a folder, not the DB itself"))
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
        allow_private=args.allow_private,
        executor=args.executor,
        ray_address=args.ray_address,
    )


def print_summary(settings: Settings, stats: Stats) -> None:
    elapsed = max(time.monotonic() - stats.started, 1e-9)
    fetched = (
        stats.stored + stats.duplicates + sum(stats.failed.values()) + sum(stats.skipped.values())
    )
    if settings.what == "originals":
        units = _("results in the DB")
    else:
        units = _("results and variants in the DB")
    rows: list[tuple[str, Any]] = [
        (units, stats.units),
        (_("had a file from an earlier run"), stats.satisfied_before),
        (_("tried in this run"), stats.worked),
        ("  " + _("ended without a file"), stats.units_without_file),
    ]
    if stats.not_tried:
        rows.append((_("not tried yet (--limit or a stop)"), stats.not_tried))
    rows += [
        (_("URLs fetched"), fetched),
        ("  " + _("downloaded (new files)"), stats.stored),
        ("  " + _("same content as a file on disk"), stats.duplicates),
        ("  " + _("failed"), sum(stats.failed.values())),
    ]
    # Reasons are ledger data (English in the DB's error column), translated where shown.
    rows += [(f"    {shown(reason)}", n) for reason, n in stats.failed.most_common()]
    rows.append(("  " + _("skipped"), sum(stats.skipped.values())))
    rows += [(f"    {shown(reason)}", n) for reason, n in stats.skipped.most_common()]
    if stats.failed_before_retryable:
        rows.append(
            (_("failed earlier, may succeed (--retry-failed)"), stats.failed_before_retryable)
        )
    if stats.failed_before_permanent:
        rows.append((_("failed earlier for good (every URL)"), stats.failed_before_permanent))
    if stats.no_url:
        rows.append((_("no usable URL"), stats.no_url))
    rows += [
        (_("received"), human_bytes(stats.received)),
        (_("stored"), human_bytes(stats.stored_bytes)),
        (_("time"), _("{seconds} s").format(seconds=f"{elapsed:,.1f}")),
        (
            _("rate"),
            _("{files} files/s, {mb} MB/s").format(
                files=f"{fetched / elapsed:,.1f}", mb=f"{stats.received / elapsed / 1e6:,.2f}"
            ),
        ),
    ]
    console.print(table(_("Download summary"), ("", ""), rows))


def ledger_line(db_path: Path, stats: Stats) -> str:
    """The ledger's totals after the run, and what no run has tried yet."""
    counts, retryable = ledger_totals(db_path)
    line = _(
        "Ledger: {done} done, {failed} failed ({retryable} may succeed with --retry-failed), "
        "{skipped} skipped, {pending} pending"
    ).format(
        done=f"{counts.get('done', 0):,}",
        failed=f"{counts.get('failed', 0):,}",
        retryable=f"{retryable:,}",
        skipped=f"{counts.get('skipped', 0):,}",
        pending=f"{counts.get('pending', 0):,}",
    )
    if stats.not_tried:
        line += "; " + ngettext(
            "{n} result not tried yet (run again to go on)",
            "{n} results not tried yet (run again to go on)",
            stats.not_tried,
        ).format(n=f"{stats.not_tried:,}")
    return line


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = resolve_settings(args)
    with db_claim(settings.db_path, settings.out):
        try:
            dbmod.connect(settings.db_path, create=False).close()  # migrate (backup first)
        except (dbmod.SchemaError, sqlite3.DatabaseError) as exc:
            raise StepFailed(str(exc)) from exc
        settings.out.mkdir(parents=True, exist_ok=True)
        setup_logging(settings.out / LOG_NAME)
        with folder_lock(settings.out):
            _download(settings)
    return 0


def _download(settings: Settings) -> None:
    leftovers = remove_temp_files(settings.out)
    what = _("originals") if settings.what == "originals" else _("all variants")
    how = _("{what}, {n} at once, {per_host} per host").format(
        what=what, n=settings.concurrency, per_host=settings.per_host
    )
    if settings.proxy:
        how += ", " + _("proxy {proxy}").format(proxy=settings.proxy)
    console.print(
        _("Source: {db}  ->  {out}/  ({how})").format(
            db=esc(settings.db_path), out=esc(settings.out), how=esc(how)
        )
    )
    if leftovers:
        console.print(
            ngettext(
                "Removed {n} temporary file left by an interrupted run.",
                "Removed {n} temporary files left by an interrupted run.",
                leftovers,
            ).format(n=leftovers)
        )
    settled = reconcile(settings.db_path, settings.out)
    if settled.adopted or settled.removed:
        console.print(
            _(
                "Files an interrupted run stored but did not record: {adopted} adopted into "
                "the ledger, {removed} removed ({copies} of them copies of a file already "
                "stored); see {log}."
            ).format(
                adopted=settled.adopted,
                removed=len(settled.removed),
                copies=settled.duplicates,
                log=LOG_NAME,
            )
        )
    if settled.left:
        console.print(
            _("Left alone: {n} file(s) named like downloads that no URL of this DB gives.").format(
                n=settled.left
            )
        )
    if settings.executor == "ray":
        from .ray_exec import ray_downloader

        runner: AbstractContextManager[Downloader] = ray_downloader(settings)
    else:
        runner = nullcontext(Downloader(settings))
    # The loop thread releases the GIL for every socket call, hash and query;
    # with the default 5 ms switch interval it then waits behind the
    # verifier and ledger threads (a convoy). A short interval keeps it moving.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    stopped: Stopped | None = None
    with runner as downloader:
        try:
            asyncio.run(downloader.run())
        except Stopped as exc:
            stopped = exc
        finally:
            sys.setswitchinterval(switch)
            print_summary(settings, downloader.stats)
            console.print(esc(ledger_line(settings.db_path, downloader.stats)))
    if stopped is not None:
        raise StepFailed(disk_stop_line(settings, downloader.stats, stopped.cause))


def disk_stop_line(settings: Settings, stats: Stats, cause: OSError) -> str:
    """One line for a run stopped by the local disk: what, the free space, what is kept."""
    try:
        free = human_bytes(shutil.disk_usage(settings.out).free)
    except OSError:
        free = "unknown"
    what = _("disk full") if cause.errno == errno.ENOSPC else (cause.strerror or one_line(cause))
    return _(
        "stopped: {what} writing to {out} ({free} free); the {n} new files of this run are "
        "kept and in the ledger: free some space and run the same command again"
    ).format(what=what, out=settings.out, free=free, n=f"{stats.stored:,}")
