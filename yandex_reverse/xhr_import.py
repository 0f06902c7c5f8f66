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
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import db
from .console import (
    StepFailed,
    console,
    log,
    print_summary,
    progress,
    setup_logging,
    table,
)
from .urls import normalize_url

ADAPTER_BLOCK = "i-react-ajax-adapter:ajax"
XHR_NAME = re.compile(r"^(?P<query>.+)_xhr_(?P<page>\d+)\.json$", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")

# One transaction per batch: big enough to amortise the commit, small enough
# that an interrupt loses little.
BATCH_FILES = 200
BATCH_ENTITIES = 10_000

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


class BadFile(Exception):
    """A file that holds no results, with a one-line reason for the ledger."""


# ------------------------------------------------------------ normalising


def to_int(value: Any) -> int | None:
    """Yandex sends numbers as ints, floats or strings; anything else is None."""
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
    return " ".join(html.unescape(_TAG.sub("", text)).split()) or None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


@dataclass
class Rows:
    """What one batch writes."""

    images: list[tuple[Any, ...]] = field(default_factory=list)
    variants: list[tuple[Any, ...]] = field(default_factory=list)
    links: list[tuple[Any, ...]] = field(default_factory=list)
    ledger: list[tuple[Any, ...]] = field(default_factory=list)
    touched: list[tuple[Any, ...]] = field(default_factory=list)
    entities: int = 0

    def clear(self) -> None:
        for rows in (self.images, self.variants, self.links, self.ledger, self.touched):
            rows.clear()
        self.entities = 0


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


def find_entities(data: Any) -> dict[str, Any]:
    """The entities of an XHR answer or of a saved first page; :class:`BadFile` if none."""
    if not isinstance(data, dict):
        raise BadFile(f"JSON is a {type(data).__name__}, not an object")
    if data.get("type") == "captcha" or ("captcha" in data and "blocks" not in data):
        raise BadFile("captcha answer, not results (step 1 hit a captcha)")
    if "blocks" in data:
        for block in _list(data["blocks"]):
            name = _dict(_dict(block).get("name")).get("block")
            if name == ADAPTER_BLOCK:
                params = _dict(block.get("params"))
                serp = _dict(_dict(params.get("adapterData")).get("serpList"))
                return _entities_of(serp)
        raise BadFile(f"no '{ADAPTER_BLOCK}' block")
    state = data.get("initialState")
    if isinstance(state, dict):
        return _entities_of(_dict(state.get("serpList")))
    raise BadFile("unrecognised JSON: neither 'blocks' nor 'initialState'")


def _entities_of(serp: dict[str, Any]) -> dict[str, Any]:
    entities = _dict(serp.get("items")).get("entities")
    if isinstance(entities, list):  # tolerate a list form
        return {str(_dict(e).get("id", i)): e for i, e in enumerate(entities)}
    return entities if isinstance(entities, dict) else {}


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
        if exc.pos >= len(text.rstrip()) - 1:
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


def xhr_files(root: Path) -> Iterator[Path]:
    """``*.json`` under ``root``, sorted, hidden files and folders excluded."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(".json") and not name.startswith("."):
                yield Path(dirpath) / name


class Importer:
    """Reads files, keeps a batch of rows, writes it in one transaction."""

    def __init__(self, conn: sqlite3.Connection, root: Path) -> None:
        self.conn = conn
        self.root = root
        self.rows = Rows()
        self.stats = Stats()
        self._files_in_batch = 0

    def known(self, relative: str) -> tuple[int, int, str, str] | None:
        return self.conn.execute(
            "SELECT size, mtime_ns, sha256, status FROM xhr_files WHERE path = ?", (relative,)
        ).fetchone()

    def add_file(self, path: Path) -> None:
        stats = self.stats
        stats.files += 1
        relative = path.relative_to(self.root).as_posix()
        st = path.stat()
        known = self.known(relative)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            stats.unchanged += 1
            return
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        now = db.now_iso()
        if known and known[2] == digest:  # touched, not changed
            self.rows.touched.append((st.st_mtime_ns, relative))
            stats.unchanged += 1
            self._count_file()
            return
        try:
            entities = find_entities(decode(raw))
        except BadFile as exc:
            reason = str(exc)
            stats.failed += 1
            stats.reasons[reason.split(" (")[0].split(":")[0]] += 1
            stats.failures.append((relative, reason))
            log.warning("%s: %s", relative, reason)
            self.rows.ledger.append(
                (relative, len(raw), st.st_mtime_ns, digest, 0, "failed", reason, now)
            )
            self._count_file()
            return
        query, page = query_and_page(relative)
        count = 0
        for index, (key, entity) in enumerate(entities.items()):
            if not isinstance(entity, dict) or not (to_text(entity.get("id")) or key):
                stats.bad_entities += 1
                continue
            image, variants = entity_rows(str(key), entity)
            self.rows.images.append(image)
            self.rows.variants.extend(variants)
            position = image[5] if image[5] is not None else index
            self.rows.links.append(
                (query, image[0], page if page is not None else 0, position, relative)
            )
            count += 1
        stats.imported += 1
        stats.entities += count
        stats.empty_pages += count == 0
        self.rows.entities += count
        self.rows.ledger.append(
            (relative, len(raw), st.st_mtime_ns, digest, count, "imported", None, now)
        )
        self._count_file()

    def _count_file(self) -> None:
        self._files_in_batch += 1
        if self._files_in_batch >= BATCH_FILES or self.rows.entities >= BATCH_ENTITIES:
            self.flush()

    def flush(self) -> None:
        rows = self.rows
        if not (rows.images or rows.ledger or rows.touched):
            return
        with db.transaction(self.conn):
            self.conn.executemany("UPDATE xhr_files SET mtime_ns = ? WHERE path = ?", rows.touched)
            self.conn.executemany(UPSERT_IMAGE, rows.images)
            self.conn.executemany(UPSERT_VARIANT, rows.variants)
            self.conn.executemany(INSERT_LINK, rows.links)
            self.conn.executemany(UPSERT_LEDGER, rows.ledger)
        rows.clear()
        self._files_in_batch = 0


def count(conn: sqlite3.Connection, table_name: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table_name}").fetchone()[0]


def import_folder(xhr_dir: Path, db_path: Path) -> Stats:
    """Import every XHR file under ``xhr_dir`` into ``db_path``; returns the counts."""
    if not xhr_dir.is_dir():
        raise StepFailed(f"XHR folder not found: {xhr_dir} (run step 1 first, or pass --xhr-dir)")
    files = list(xhr_files(xhr_dir))
    if not files:
        raise StepFailed(f"no *.json files in {xhr_dir}")
    conn = db.connect(db_path)
    try:
        before = count(conn, "images"), count(conn, "image_variants"), count(conn, "query_results")
        importer = Importer(conn, xhr_dir)
        with progress("Importing XHR", total=len(files)) as advance:
            for path in files:
                try:
                    importer.add_file(path)
                except OSError as exc:  # vanished or unreadable file
                    importer.stats.failed += 1
                    importer.stats.reasons["unreadable"] += 1
                    importer.stats.failures.append(
                        (str(path), f"unreadable: {exc.strerror or exc}")
                    )
                advance(info=f"{importer.stats.entities:,} results")
        importer.flush()
        after = count(conn, "images"), count(conn, "image_variants"), count(conn, "query_results")
    finally:
        conn.close()
    stats = importer.stats
    stats.new_images = after[0] - before[0]
    stats.new_variants = after[1] - before[1]
    stats.new_links = after[2] - before[2]
    return stats


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
    console.print(f"Database: {db_path}")


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file)
    try:
        stats = import_folder(args.xhr_dir, args.db)
    except db.SchemaError as exc:
        raise StepFailed(str(exc)) from exc
    report(stats, args.db)
    if stats.failed and stats.failed == stats.files:
        console.print("[red]No file could be read.[/red]")
        return 1
    return 0
