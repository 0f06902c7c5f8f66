"""Step 2: import the saved XHR JSON files into ``yandex_images.db``.

Every file is read once: a ledger (``xhr_files``) remembers its size, mtime
and sha256, so a re-run skips unchanged files without parsing them and
re-imports a changed one without duplicates (every write is an upsert).
Files are written in batches, one transaction per batch, so an interrupted
import loses at most the batch in flight and a re-run completes it.

The results are found the way reference/yandex-images.md says: the block
named ``i-react-ajax-adapter:ajax`` (never ``blocks[1]``), or the first page's
``initialState.serpList``; loose values are normalised (numbers as strings,
``//`` URLs, HTML in titles).
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
import signal
import sqlite3
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import db
from .cli import add_common_flags
from .console import StepFailed, console, esc, log, print_summary, progress, setup_logging, table
from .serp import FormatError as BadFile  # a file that holds no results, one-line reason
from .serp import find_entities
from .urls import normalize_url

XHR_NAME = re.compile(r"^(?P<query>.+)_xhr_(?P<page>\d+)\.json$", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")

# One transaction per batch: big enough to amortise the commit, small enough
# that an interrupt loses little.
BATCH_FILES = 200
BATCH_ENTITIES = 10_000
# Files go to the parser processes in chunks (one round trip per chunk), and
# only when there are enough of them to pay for starting the processes.
PARSE_CHUNK = 16
PARALLEL_FROM = 64

T = TypeVar("T")

_IMAGE_COLUMNS = db.IMAGE_COLUMNS + db.IMAGE_EXTRA_COLUMNS
_VARIANT_COLUMNS = db.VARIANT_COLUMNS[1:]  # id is assigned by SQLite

UPSERT_IMAGE = (
    f"INSERT INTO images ({', '.join(_IMAGE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_IMAGE_COLUMNS))}) ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c} = coalesce(excluded.{c}, images.{c})" for c in _IMAGE_COLUMNS[1:])
)
UPSERT_VARIANT = (
    f"INSERT INTO image_variants ({', '.join(_VARIANT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_VARIANT_COLUMNS))}) "
    "ON CONFLICT(image_id, variant_type, url) DO UPDATE SET "
    + ", ".join(
        f"{c} = coalesce(excluded.{c}, image_variants.{c})"
        for c in _VARIANT_COLUMNS
        if c not in ("image_id", "variant_type", "url")
    )
)
INSERT_LINK = (
    "INSERT INTO query_results (query, image_id, page, position, xhr_file) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(query, image_id) DO UPDATE SET "
    "page = excluded.page, position = excluded.position, xhr_file = excluded.xhr_file "
    "WHERE excluded.page < query_results.page "
    "OR (excluded.page = query_results.page AND excluded.position < query_results.position)"
)
UPSERT_LEDGER = (
    "INSERT INTO xhr_files (path, size, mtime_ns, sha256, entities, status, error, imported_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
    "size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, "
    "entities = excluded.entities, status = excluded.status, error = excluded.error, "
    "imported_at = excluded.imported_at"
)


# ------------------------------------------------------------ normalising


def to_int(value: Any) -> int | None:
    """Yandex sends numbers as ints, floats or strings; anything else is None."""
    if type(value) is int:  # the common case first: millions of calls
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value == value and abs(value) < 2**62 else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                return int(float(text))
            except (ValueError, OverflowError):
                return None
    return None


def to_bool(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(bool(value))
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes"):
            return 1
        if text in ("false", "0", "no", ""):
            return 0
    return None


def to_text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)
    return text if text.strip() else None


def plain_text(value: Any) -> str | None:
    """``Рыжий <b>кот</b> &amp; …`` → ``Рыжий кот & …``."""
    text = to_text(value)
    if text is None:
        return None
    if "<" in text:
        text = _TAG.sub("", text)
    if "&" in text:
        text = html.unescape(text)
    return " ".join(text.split()) or None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _variant_row(image_id: str, kind: str, item: dict[str, Any]) -> tuple[Any, ...] | None:
    url = normalize_url(item.get("url"))
    if url is None:
        return None
    size = _dict(item.get("size"))
    origin = _dict(item.get("origin"))
    return (
        image_id,
        kind,
        url,
        to_int(item.get("w", size.get("width"))),
        to_int(item.get("h", size.get("height"))),
        to_int(item.get("fileSizeInBytes")),
        to_bool(item.get("isMixedImage")),
        normalize_url(origin.get("url")),
        to_int(origin.get("w")),
        to_int(origin.get("h")),
    )


def best_original(orig_url: str | None, img_href: str | None, variants: list[tuple]) -> str | None:
    """origUrl, else viewerData.img_href, else the largest preview/dups by w*h."""
    if orig_url:
        return orig_url
    if img_href:
        return img_href
    sized = [(v[3] or 0) * (v[4] or 0) for v in variants]
    candidates = [
        (area, index, v[2])
        for index, (v, area) in enumerate(zip(variants, sized, strict=True))
        if v[1] in ("preview", "dups")
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[0], -c[1]))[2]


def entity_rows(key: str, entity: dict[str, Any]) -> tuple[tuple[Any, ...], list[tuple]]:
    """One entity → an ``images`` row and its ``image_variants`` rows."""
    image_id = to_text(entity.get("id")) or key
    viewer = _dict(entity.get("viewerData"))
    snippet = _dict(entity.get("snippet")) or _dict(viewer.get("snippet"))
    variants: list[tuple] = []
    for kind in ("preview", "dups"):
        for item in _list(viewer.get(kind)):
            if isinstance(item, dict) and (row := _variant_row(image_id, kind, item)):
                variants.append(row)
    thumb = viewer.get("thumb")
    for item in thumb if isinstance(thumb, list) else [thumb]:
        if isinstance(item, dict) and (row := _variant_row(image_id, "thumb", item)):
            variants.append(row)
    orig_url = normalize_url(entity.get("origUrl"))
    img_href = normalize_url(viewer.get("img_href"))
    title_raw = to_text(snippet.get("title"))
    image = (
        image_id,
        to_text(entity.get("docid")),
        to_text(entity.get("documentid")),
        to_text(entity.get("reqid")),
        to_text(entity.get("rimId")),
        to_int(entity.get("pos")),
        normalize_url(entity.get("url")) or to_text(entity.get("url")),
        orig_url,
        normalize_url(entity.get("image")),
        plain_text(entity.get("alt")),
        to_int(entity.get("width")),
        to_int(entity.get("height")),
        to_int(entity.get("origWidth")),
        to_int(entity.get("origHeight")),
        plain_text(title_raw),
        to_text(snippet.get("domain")),
        normalize_url(snippet.get("url")) or to_text(snippet.get("url")),
        to_int(entity.get("freshnessCounter")),
        to_bool(entity.get("gifLabel")),
        to_bool(entity.get("ecomShield")),
        to_bool(entity.get("censored")),
        to_text(entity.get("loading")),
        title_raw,
        plain_text(snippet.get("text")),
        img_href,
        best_original(orig_url, img_href, variants),
    )
    return image, variants


def decode(raw: bytes) -> Any:
    """Bytes → JSON, with the reason as :class:`BadFile` (empty, not UTF-8, truncated ...)."""
    if not raw.strip():
        raise BadFile("empty file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadFile(f"not UTF-8 (byte {exc.start})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise BadFile(f"truncated JSON (ends at line {exc.lineno})") from exc
        raise BadFile(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


def query_and_page(relative: str) -> tuple[str, int | None]:
    """``cat.jpg_xhr_003.json`` → (``cat.jpg``, 3); other names → (stem, None)."""
    name = Path(relative).name
    match = XHR_NAME.match(name)
    if match:
        return match["query"], int(match["page"])
    return Path(name).stem, None


# ---------------------------------------------------------------- the run


@dataclass
class Stats:
    files: int = 0
    imported: int = 0
    unchanged: int = 0
    failed: int = 0
    empty_pages: int = 0
    entities: int = 0
    bad_entities: int = 0
    new_images: int = 0
    new_variants: int = 0
    new_links: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ParsedFile:
    """One XHR file read and turned into rows (in a worker process)."""

    relative: str
    size: int
    mtime_ns: int
    sha256: str
    touched_only: bool = False  # same bytes as the ledger knows: only the mtime moved
    error: str | None = None
    images: list[tuple[Any, ...]] = field(default_factory=list)
    variants: list[tuple[Any, ...]] = field(default_factory=list)
    links: list[tuple[Any, ...]] = field(default_factory=list)
    bad_entities: int = 0


def parse_file(path: str, relative: str, known_sha256: str | None) -> ParsedFile:
    """Read, hash and parse one file; a bad file comes back with ``error`` set."""
    st = os.stat(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    parsed = ParsedFile(relative, len(raw), st.st_mtime_ns, hashlib.sha256(raw).hexdigest())
    if parsed.sha256 == known_sha256:
        parsed.touched_only = True
        return parsed
    try:
        entities = find_entities(decode(raw))
    except BadFile as exc:
        parsed.error = str(exc)
        return parsed
    query, page = query_and_page(relative)
    for index, (key, entity) in enumerate(entities.items()):
        if not isinstance(entity, dict) or not (to_text(entity.get("id")) or key):
            parsed.bad_entities += 1
            continue
        image, variants = entity_rows(str(key), entity)
        parsed.images.append(image)
        parsed.variants.extend(variants)
        position = image[5] if image[5] is not None else index
        parsed.links.append((query, image[0], page or 0, position, relative))
    return parsed


def parse_files(jobs: list[tuple[str, str, str | None]]) -> list[ParsedFile | tuple[str, str]]:
    """A chunk of :func:`parse_file` jobs; an unreadable file becomes (relative, reason)."""
    out: list[ParsedFile | tuple[str, str]] = []
    for path, relative, known in jobs:
        try:
            out.append(parse_file(path, relative, known))
        except OSError as exc:
            out.append((relative, f"unreadable: {exc.strerror or exc}"))
    return out


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def parsed_in_order(
    jobs: Iterator[tuple[str, str, str | None]], workers: int
) -> Iterator[ParsedFile | tuple[str, str]]:
    """Parse in ``workers`` processes while this one writes; order kept, memory bounded."""
    chunks = _chunks(jobs, PARSE_CHUNK)
    if workers <= 1:
        for chunk in chunks:
            yield from parse_files(chunk)
        return
    with ProcessPoolExecutor(workers, initializer=_ignore_sigint) as pool:
        pending: deque[Future[list[ParsedFile | tuple[str, str]]]] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(parse_files, chunk))
                if len(pending) > workers * 4:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def xhr_files(root: Path) -> Iterator[Path]:
    """``*.json`` under ``root``, sorted, hidden files and folders excluded."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(".json") and not name.startswith("."):
                yield Path(dirpath) / name


@dataclass
class Batch:
    """Rows of complete files, written together in one transaction."""

    images: list[tuple[Any, ...]] = field(default_factory=list)
    variants: list[tuple[Any, ...]] = field(default_factory=list)
    links: list[tuple[Any, ...]] = field(default_factory=list)
    ledger: list[tuple[Any, ...]] = field(default_factory=list)
    touched: list[tuple[Any, ...]] = field(default_factory=list)
    files: int = 0

    def write(self, conn: sqlite3.Connection) -> None:
        if self.files:
            with db.transaction(conn):
                conn.executemany("UPDATE xhr_files SET mtime_ns = ? WHERE path = ?", self.touched)
                conn.executemany(UPSERT_IMAGE, self.images)
                conn.executemany(UPSERT_VARIANT, self.variants)
                conn.executemany(INSERT_LINK, self.links)
                conn.executemany(UPSERT_LEDGER, self.ledger)
        self.__init__()  # type: ignore[misc]


def count(conn: sqlite3.Connection, table_name: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table_name}").fetchone()[0]


def default_workers() -> int:
    """One parser per core: the writer mostly waits on SQLite, which releases the GIL."""
    return max(1, os.cpu_count() or 1)


def import_folder(
    xhr_dir: Path, db_path: Path, batch_files: int = BATCH_FILES, workers: int | None = None
) -> Stats:
    """Import every XHR file under ``xhr_dir`` into ``db_path``; returns the counts."""
    if not xhr_dir.is_dir():
        raise StepFailed(f"XHR folder not found: {xhr_dir} (run step 1 first, or pass --xhr-dir)")
    files = list(xhr_files(xhr_dir))
    if not files:
        raise StepFailed(f"no *.json files in {xhr_dir}")
    stats = Stats(files=len(files))
    conn = db.connect(db_path)
    try:
        before = count(conn, "images"), count(conn, "image_variants"), count(conn, "query_results")
        ledger = {
            path: (size, mtime_ns, sha256)
            for path, size, mtime_ns, sha256 in conn.execute(
                "SELECT path, size, mtime_ns, sha256 FROM xhr_files"
            )
        }
        jobs: list[tuple[str, str, str | None]] = []
        for path in files:
            relative = path.relative_to(xhr_dir).as_posix()
            known = ledger.get(relative)
            try:
                st = path.stat()
            except OSError:
                st = None
            if known and st and (known[0], known[1]) == (st.st_size, st.st_mtime_ns):
                stats.unchanged += 1  # skipped by the ledger, not even read
            else:
                jobs.append((str(path), relative, known[2] if known else None))
        del ledger
        if workers is None:
            workers = default_workers() if len(jobs) >= PARALLEL_FROM else 1
        batch = Batch()
        with progress("Importing XHR", total=len(files)) as advance:
            advance(stats.unchanged)
            for parsed in parsed_in_order(iter(jobs), workers):
                _add(batch, parsed, stats)
                if batch.files >= batch_files or len(batch.images) >= BATCH_ENTITIES:
                    batch.write(conn)
                advance(info=f"{stats.entities:,} results")
        batch.write(conn)
        after = count(conn, "images"), count(conn, "image_variants"), count(conn, "query_results")
    finally:
        conn.close()
    stats.new_images = after[0] - before[0]
    stats.new_variants = after[1] - before[1]
    stats.new_links = after[2] - before[2]
    return stats


def _add(batch: Batch, parsed: ParsedFile | tuple[str, str], stats: Stats) -> None:
    """Count one file and put its rows into the batch."""
    if isinstance(parsed, tuple):  # unreadable: nothing to record in the ledger
        stats.failed += 1
        stats.reasons["unreadable"] += 1
        stats.failures.append(parsed)
        return
    batch.files += 1
    now = db.now_iso()
    head = (parsed.relative, parsed.size, parsed.mtime_ns, parsed.sha256)
    if parsed.touched_only:
        stats.unchanged += 1
        batch.touched.append((parsed.mtime_ns, parsed.relative))
    elif parsed.error is not None:
        stats.failed += 1
        stats.reasons[parsed.error.split(" (")[0].split(":")[0]] += 1
        stats.failures.append((parsed.relative, parsed.error))
        log.warning("%s: %s", parsed.relative, parsed.error)
        batch.ledger.append((*head, 0, "failed", parsed.error, now))
    else:
        found = len(parsed.images)
        stats.imported += 1
        stats.entities += found
        stats.bad_entities += parsed.bad_entities
        stats.empty_pages += found == 0
        batch.images.extend(parsed.images)
        batch.variants.extend(parsed.variants)
        batch.links.extend(parsed.links)
        batch.ledger.append((*head, found, "imported", None, now))


def report(stats: Stats, db_path: Path) -> None:
    print_summary(
        "XHR import",
        [
            ("files found", stats.files),
            ("files imported", stats.imported),
            ("files skipped (unchanged)", stats.unchanged),
            ("files failed", stats.failed),
            ("empty result pages", stats.empty_pages),
            ("results read", stats.entities),
            ("results skipped (malformed)", stats.bad_entities),
            ("images new", stats.new_images),
            ("results of images already known", stats.entities - stats.new_images),
            ("variants new", stats.new_variants),
            ("query links new", stats.new_links),
        ],
    )
    if stats.failures:
        shown = stats.failures[:20]
        console.print(table("Failed files", ("file", "reason"), shown, numeric_from=99))
        if len(stats.failures) > len(shown):
            console.print(
                f"... and {len(stats.failures) - len(shown)} more (see the xhr_files table)"
            )
    console.print(f"Database: {esc(db_path)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="2_XHRtoDB.py",
        description=(
            "Import the XHR JSON files saved by step 1 into SQLite. Idempotent: unchanged "
            "files are skipped, changed ones re-imported without duplicates."
        ),
    )
    parser.add_argument(
        "--xhr-dir", type=Path, default=Path("XHR"), help="folder of XHR JSON files (default: XHR)"
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=Path("yandex_images.db"),
        help="SQLite database (default: yandex_images.db)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=Path("2_XHRtoDB.log"),
        help="details and tracebacks (default: 2_XHRtoDB.log)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parser processes (default: one per core, for large folders)",
    )
    parser.add_argument(
        "--batch-files",
        type=int,
        default=BATCH_FILES,
        help=f"files per transaction (default: {BATCH_FILES}); an interrupt loses at most one batch",
    )
    add_common_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file)
    try:
        stats = import_folder(args.xhr_dir, args.db, max(1, args.batch_files), args.workers)
    except db.SchemaError as exc:
        raise StepFailed(str(exc)) from exc
    report(stats, args.db)
    if stats.failed and stats.failed == stats.files:
        console.print("[red]No file could be read.[/red]")
        return 1
    return 0
