"""Step 5's command line: flags, the questions, the summary (``5_Download_async.py``)."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from .. import db as dbmod
from .. import raycluster
from ..cli import Yes, add_common_flags, hint_for
from ..console import (
    StepFailed,
    UsageError,
    ask_choice,
    console,
    human_bytes,
    setup_logging,
    table,
)
from ..urls import normalize_url
from .fetch import DEFAULT_USER_AGENT
from .ledger import ledger_totals
from .run import Downloader, Settings, Stats
from .store import folder_lock, remove_temp_files

SOURCES = {"1": "yandex_images.db", "2": "vk_images.db"}
LOG_NAME = "download.log"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="5_Download_async.py",
        description=(
            "Download the images found by Yandex (step 5). Resumable: a re-run skips what is "
            "done and retries only what may succeed."
        ),
    )
    parser.add_argument(
        "--db",
        type=Path,
        help="source DB (asked on a terminal: 1 yandex_images.db, 2 vk_images.db; "
        "default without a terminal: yandex_images.db)",
    )
    parser.add_argument(
        "--out", type=Path, help="download folder (default: the DB's name without .db)"
    )
    parser.add_argument(
        "--what",
        choices=("originals", "all-variants"),
        help="originals: one file per result, the best URL first and the other copies as "
        "fallbacks (default); all-variants: every URL of every result, as the original script",
    )
    parser.add_argument("--limit", type=int, help="try at most N results (a trial run)")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="also retry earlier failures that may succeed (timeouts, 5xx, 429, resets)",
    )
    parser.add_argument("--concurrency", type=int, default=40, help="downloads at once (40)")
    parser.add_argument("--per-host", type=int, default=4, help="downloads at once per host (4)")
    parser.add_argument(
        "--timeout", type=float, default=40.0, help="seconds for one attempt of one URL (40)"
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=50 * 1024 * 1024,
        help="refuse bodies larger than this (50 MiB)",
    )
    parser.add_argument("--retries", type=int, default=3, help="retries of transient failures (3)")
    parser.add_argument("--proxy", help="HTTP proxy URL (default: HTTP_PROXY/HTTPS_PROXY if set)")
    parser.add_argument("--user-agent", default=DEFAULT_USER_AGENT, help="User-Agent header")
    parser.add_argument(
        "--min-side", type=int, default=0, help="skip images whose shorter side is below N px"
    )
    parser.add_argument("--min-bytes", type=int, default=0, help="skip files smaller than N bytes")
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
            "Choose image source",
            [("1", "yandex_images.db -> yandex_images/"), ("2", "vk_images.db -> vk_images/")],
            flag="--db",
            default="1",
        )
        args.db = Path(SOURCES[choice])
        if args.what is None:
            args.what = ask_choice(
                "What to download",
                [
                    ("originals", "one original per result (fallbacks: its other copies)"),
                    ("all-variants", "every copy of every result (as the original script)"),
                ],
                flag="--what",
                default="originals",
            )
    db_path = Path(args.db).expanduser()
    if not db_path.is_file():
        raise StepFailed(f"database not found: {db_path}{hint_for(db_path)}")
    for name in ("concurrency", "per_host", "max_bytes"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must not be negative")
    if args.retries < 0 or args.min_side < 0 or args.min_bytes < 0:
        raise UsageError("--retries, --min-side and --min-bytes must not be negative")
    if args.proxy and normalize_url(args.proxy) is None:
        raise UsageError(f"--proxy must be an http(s) URL, not {args.proxy!r}")
    out = Path(args.out).expanduser() if args.out else db_path.with_suffix("")
    if out.resolve() == db_path.resolve():
        raise UsageError("--out must be a folder, not the DB itself")
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
        executor=args.executor,
        ray_address=args.ray_address,
    )


def print_summary(settings: Settings, stats: Stats) -> None:
    elapsed = max(time.monotonic() - stats.started, 1e-9)
    fetched = (
        stats.stored + stats.duplicates + sum(stats.failed.values()) + sum(stats.skipped.values())
    )
    unit = "results" if settings.what == "originals" else "results and variants"
    rows: list[tuple[str, Any]] = [
        (f"{unit} in the DB", stats.units),
        ("had a file from an earlier run", stats.satisfied_before),
        ("tried in this run", stats.worked),
        ("  ended without a file", stats.units_without_file),
        ("URLs fetched", fetched),
        ("  downloaded (new files)", stats.stored),
        ("  same content as a file on disk", stats.duplicates),
        ("  failed", sum(stats.failed.values())),
    ]
    rows += [(f"    {reason}", n) for reason, n in stats.failed.most_common()]
    rows.append(("  skipped", sum(stats.skipped.values())))
    rows += [(f"    {reason}", n) for reason, n in stats.skipped.most_common()]
    if stats.failed_before_retryable:
        rows.append(("failed earlier, may succeed (--retry-failed)", stats.failed_before_retryable))
    if stats.failed_before_permanent:
        rows.append(("failed earlier for good (every URL)", stats.failed_before_permanent))
    if stats.no_url:
        rows.append(("no usable URL", stats.no_url))
    rows += [
        ("received", human_bytes(stats.received)),
        ("stored", human_bytes(stats.stored_bytes)),
        ("time", f"{elapsed:,.1f} s"),
        ("rate", f"{fetched / elapsed:,.1f} files/s, {stats.received / elapsed / 1e6:,.2f} MB/s"),
    ]
    console.print(table("Download summary", ("", ""), rows))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = resolve_settings(args)
    try:
        dbmod.connect(settings.db_path, create=False).close()  # migrate (backup first) if needed
    except (dbmod.SchemaError, sqlite3.DatabaseError) as exc:
        raise StepFailed(str(exc)) from exc
    settings.out.mkdir(parents=True, exist_ok=True)
    setup_logging(settings.out / LOG_NAME)
    with folder_lock(settings.out):
        leftovers = remove_temp_files(settings.out)
        console.print(
            f"Source: {settings.db_path}  ->  {settings.out}/  ({settings.what}, "
            f"{settings.concurrency} at once, {settings.per_host} per host"
            + (f", proxy {settings.proxy}" if settings.proxy else "")
            + ")"
        )
        if leftovers:
            console.print(f"Removed {leftovers} temporary file(s) left by an interrupted run.")
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
        with runner as downloader:
            try:
                asyncio.run(downloader.run())
            finally:
                sys.setswitchinterval(switch)
                print_summary(settings, downloader.stats)
                console.print(ledger_totals(settings.db_path))
    return 0
