"""The SQLite schema of ``yandex_images.db`` / ``vk_images.db``, its migrations,
``connect()`` and ``backup()``.

The tables ``images`` and ``image_variants`` keep every column of the original
scripts under the same names, so a DB they made opens here, migrates in place
and keeps working. The schema version lives in ``PRAGMA user_version``:

* 0 -- an empty file, or a DB written by the original scripts;
* 1 -- the original tables exist (created here with the original DDL);
* 2 -- this project's additions: idempotent variants (one row per
  ``(image_id, variant_type, url)``), the query links, the XHR ledger, the
  download ledger and a few extra columns on ``images``;
* 3 -- the "Сайты" tab (``query_sites``: the pages where the query picture
  itself appears) and the image URL of each search by URL (``query_sources``).

A DB that needs migrating is backed up first (SQLite backup API) next to
itself, named as the original cleanup script named its backups.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

SCHEMA_VERSION = 3

# The original scripts' columns, in their order: copies go by name, never by position.
IMAGE_COLUMNS: tuple[str, ...] = (
    "id",
    "docid",
    "documentid",
    "reqid",
    "rimId",
    "pos",
    "url",
    "origUrl",
    "image_url",
    "alt",
    "width",
    "height",
    "origWidth",
    "origHeight",
    "title",
    "domain",
    "snippet_url",
    "freshness_counter",
    "is_gif",
    "ecom_shield",
    "censored",
    "loading_state",
)
# Added in version 2 (title_raw keeps the HTML Yandex sent; best_url is the
# original to download, by the rule of reference/yandex-images.md §2).
IMAGE_EXTRA_COLUMNS: tuple[str, ...] = ("title_raw", "snippet_text", "img_href", "best_url")

VARIANT_COLUMNS: tuple[str, ...] = (
    "id",
    "image_id",
    "variant_type",
    "url",
    "width",
    "height",
    "file_size_bytes",
    "is_mixed_image",
    "origin_url",
    "origin_width",
    "origin_height",
)
VARIANT_TYPES: tuple[str, ...] = ("preview", "dups", "thumb")

_ORIGINAL_DDL = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    docid TEXT,
    documentid TEXT,
    reqid TEXT,
    rimId TEXT,
    pos INTEGER,
    url TEXT,
    origUrl TEXT,
    image_url TEXT,
    alt TEXT,
    width INTEGER,
    height INTEGER,
    origWidth INTEGER,
    origHeight INTEGER,
    title TEXT,
    domain TEXT,
    snippet_url TEXT,
    freshness_counter INTEGER,
    is_gif BOOLEAN,
    ecom_shield BOOLEAN,
    censored BOOLEAN,
    loading_state TEXT
);
CREATE TABLE IF NOT EXISTS image_variants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id TEXT NOT NULL,
    variant_type TEXT NOT NULL,
    url TEXT,
    width INTEGER,
    height INTEGER,
    file_size_bytes INTEGER,
    is_mixed_image BOOLEAN,
    origin_url TEXT,
    origin_width INTEGER,
    origin_height INTEGER,
    FOREIGN KEY (image_id) REFERENCES images(id)
);
"""

_V2_DDL = """
-- Which query image found which result, first sighting (page 0 is the
-- server-rendered first page, XHR pages count from 1).
CREATE TABLE IF NOT EXISTS query_results (
    query TEXT NOT NULL,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    page INTEGER,
    position INTEGER,
    xhr_file TEXT,
    PRIMARY KEY (query, image_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS query_results_image ON query_results(image_id);

-- Ledger of imported XHR files (path relative to the XHR folder).
CREATE TABLE IF NOT EXISTS xhr_files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    entities INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('imported', 'failed')),
    error TEXT,
    imported_at TEXT NOT NULL
);

-- Download ledger of step 5: one row per URL, so a URL shared by several
-- results is fetched once.
CREATE TABLE IF NOT EXISTS downloads (
    url TEXT PRIMARY KEY,
    image_id TEXT,
    variant_type TEXT,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'done', 'failed', 'skipped')),
    path TEXT,
    bytes INTEGER,
    content_type TEXT,
    sha256 TEXT,
    http_status INTEGER,
    width INTEGER,
    height INTEGER,
    error TEXT,
    retryable INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT
);
CREATE INDEX IF NOT EXISTS downloads_status ON downloads(status);
CREATE INDEX IF NOT EXISTS downloads_image ON downloads(image_id);
CREATE INDEX IF NOT EXISTS downloads_sha256 ON downloads(sha256);
"""

_V3_DDL = """
-- The "Сайты" tab of each query photo: one row per page where the picture
-- itself appears, first sighting (page, position) kept.
CREATE TABLE IF NOT EXISTS query_sites (
    query TEXT NOT NULL,
    url TEXT NOT NULL,
    page INTEGER NOT NULL DEFAULT 0,
    position INTEGER NOT NULL DEFAULT 0,
    title TEXT,
    title_raw TEXT,
    domain TEXT,
    description TEXT,
    thumb_url TEXT,
    orig_width INTEGER,
    orig_height INTEGER,
    xhr_file TEXT,
    PRIMARY KEY (query, url)
) WITHOUT ROWID;

-- A search by image URL (step 1 --urls): the query name step 1 gave it and the URL.
CREATE TABLE IF NOT EXISTS query_sources (
    query TEXT PRIMARY KEY,
    image_url TEXT NOT NULL
) WITHOUT ROWID;
"""

SITE_COLUMNS: tuple[str, ...] = (
    "query",
    "url",
    "page",
    "position",
    "title",
    "title_raw",
    "domain",
    "description",
    "thumb_url",
    "orig_width",
    "orig_height",
    "xhr_file",
)

# ------------------------------------------------------------ step 2 statements

IMPORT_IMAGE_COLUMNS = IMAGE_COLUMNS + IMAGE_EXTRA_COLUMNS
IMPORT_VARIANT_COLUMNS = VARIANT_COLUMNS[1:]  # id is assigned by SQLite
_VARIANT_KEY = ("image_id", "variant_type", "url")


def _insert(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


# Images and variants: a value sent again fills in, never blanks, what is known.
INSERT_IMAGE = _insert("images", IMPORT_IMAGE_COLUMNS)
IMAGE_UPDATE = " ON CONFLICT(id) DO UPDATE SET " + ", ".join(
    f"{c} = coalesce(excluded.{c}, images.{c})" for c in IMPORT_IMAGE_COLUMNS[1:]
)
UPSERT_IMAGE = INSERT_IMAGE + IMAGE_UPDATE
INSERT_VARIANT = _insert("image_variants", IMPORT_VARIANT_COLUMNS)
VARIANT_UPDATE = " ON CONFLICT(image_id, variant_type, url) DO UPDATE SET " + ", ".join(
    f"{c} = coalesce(excluded.{c}, image_variants.{c})"
    for c in IMPORT_VARIANT_COLUMNS
    if c not in _VARIANT_KEY
)
UPSERT_VARIANT = INSERT_VARIANT + VARIANT_UPDATE
# Query links and sites: the first sighting (lowest page, then position) wins.
_FIRST_SIGHTING = (
    "WHERE excluded.page < {t}.page "
    "OR (excluded.page = {t}.page AND excluded.position < {t}.position)"
)
LINK_COLUMNS: tuple[str, ...] = ("query", "image_id", "page", "position", "xhr_file")
LINK_UPDATE = (
    " ON CONFLICT(query, image_id) DO UPDATE SET "
    "page = excluded.page, position = excluded.position, xhr_file = excluded.xhr_file "
    + _FIRST_SIGHTING.format(t="query_results")
)
UPSERT_LINK = _insert("query_results", LINK_COLUMNS) + LINK_UPDATE
SITE_UPDATE = (
    " ON CONFLICT(query, url) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SITE_COLUMNS[2:])
    + " "
    + _FIRST_SIGHTING.format(t="query_sites")
)
UPSERT_SITE = _insert("query_sites", SITE_COLUMNS) + SITE_UPDATE
UPSERT_QUERY_SOURCE = (
    "INSERT INTO query_sources (query, image_url) VALUES (?, ?) "
    "ON CONFLICT(query) DO UPDATE SET image_url = excluded.image_url"
)
UPSERT_LEDGER = (
    "INSERT INTO xhr_files (path, size, mtime_ns, sha256, entities, status, error, imported_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
    "size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, "
    "entities = excluded.entities, status = excluded.status, error = excluded.error, "
    "imported_at = excluded.imported_at"
)

# ------------------------------------------------------------ bulk load
#
# The first import into an empty DB writes its rows without the two indexes
# below (built once at the end, far cheaper than row by row). Variants of an
# image seen in an earlier batch wait in ``import_pending_variants`` (written in
# the same transaction as the ledger) and are merged once the unique index is
# back. An interrupted bulk load is finished by the next run of step 2.

DEFERRED_INDEXES: dict[str, str] = {
    "image_variants_unique": (
        "CREATE UNIQUE INDEX IF NOT EXISTS image_variants_unique "
        "ON image_variants(image_id, variant_type, url)"
    ),
    "query_results_image": (
        "CREATE INDEX IF NOT EXISTS query_results_image ON query_results(image_id)"
    ),
}
PENDING_VARIANTS = "import_pending_variants"
INSERT_PENDING_VARIANT = _insert(PENDING_VARIANTS, IMPORT_VARIANT_COLUMNS)


def is_empty_for_import(conn: sqlite3.Connection) -> bool:
    """No row in any table step 2 writes: the first import may bulk-load.

    (A legacy DB may hold variants without their images: then no bulk load,
    whose plain inserts would meet them when the unique index is rebuilt.)
    """
    tables = ("images", "image_variants", "query_results", "query_sites", "xhr_files")
    return not conn.execute(
        "SELECT " + " OR ".join(f"EXISTS (SELECT 1 FROM {t})" for t in tables)
    ).fetchone()[0]


def start_bulk_load(conn: sqlite3.Connection) -> None:
    """Drop the deferred indexes and create the pending-variants table (one transaction)."""
    with transaction(conn):
        for name in DEFERRED_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        cols = ", ".join(IMPORT_VARIANT_COLUMNS)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {PENDING_VARIANTS} ({cols})")


def bulk_load_unfinished(conn: sqlite3.Connection) -> bool:
    present = {
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE name IN (?, ?, ?)",
            (*DEFERRED_INDEXES, PENDING_VARIANTS),
        )
    }
    return PENDING_VARIANTS in present or not set(DEFERRED_INDEXES) <= present


def finish_bulk_load(conn: sqlite3.Connection) -> None:
    """Build the deferred indexes, merge the pending variants in order, drop their table."""
    with transaction(conn):
        for name, ddl in DEFERRED_INDEXES.items():
            try:
                conn.execute(ddl)
            except sqlite3.IntegrityError:  # rows written without the index by someone else
                if name != "image_variants_unique":
                    raise
                archive_duplicate_variants(conn, "duplicate variant (index rebuilt)")
                conn.execute(ddl)
        if table_exists(conn, PENDING_VARIANTS):
            cols = ", ".join(IMPORT_VARIANT_COLUMNS)
            # "WHERE true" lets SQLite parse the upsert after a SELECT.
            conn.execute(
                f"INSERT INTO image_variants ({cols}) SELECT {cols} FROM {PENDING_VARIANTS} "
                f"WHERE true ORDER BY rowid" + VARIANT_UPDATE
            )
            conn.execute(f"DROP TABLE {PENDING_VARIANTS}")


class SchemaError(RuntimeError):
    """The file is not a DB of this pipeline, or is newer than this code."""


def now_iso() -> str:
    """Local time, ISO 8601 with the UTC offset (unambiguous in reports)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def table_exists(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", (name,)
    ).fetchone()
    return row is not None


def columns_of(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (Ctrl-C included)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def backup_name(path: Path, when: datetime | None = None) -> Path:
    """``<stem>_backup_<YYYYmmdd_HHMMSS><suffix>``, as the original cleanup named it."""
    stamp = (when or datetime.now()).strftime("%Y%m%d_%H%M%S")
    return path.with_name(f"{path.stem}_backup_{stamp}{path.suffix}")


def backup(path: Path | str, dest: Path | str | None = None) -> Path:
    """A consistent copy of a (possibly live, WAL-mode) DB via the SQLite backup API.

    The copy is written under a temporary name and renamed, so an interrupted
    backup never leaves a half file under the final name.
    """
    path = Path(path)
    target = Path(dest) if dest is not None else backup_name(path)
    counter = 1
    while dest is None and target.exists():  # two backups in the same second
        target = backup_name(path).with_stem(f"{backup_name(path).stem}_{counter}")
        counter += 1
    partial = target.with_name(target.name + ".part")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(partial)
        try:
            src.backup(out)
        finally:
            out.close()
    finally:
        src.close()
    partial.replace(target)
    return target


def list_backups(path: Path | str) -> list[Path]:
    """Backups of ``path`` made by :func:`backup`, oldest first."""
    path = Path(path)
    found = path.parent.glob(f"{path.stem}_backup_*{path.suffix}")
    return sorted((p for p in found if not p.name.endswith(".part")), key=lambda p: p.name)


def ensure_archive_table(conn: sqlite3.Connection, table: str) -> str:
    """Create ``<table>_archive``: the table's columns plus when and why a row left.

    Used by the migration (legacy duplicate variants) and by step 4's
    ``--archive``: rows removed from the pipeline's tables are kept there.
    """
    archive = f"{table}_archive"
    if not table_exists(conn, archive):
        cols = ", ".join(f'"{c}"' for c in columns_of(conn, table))
        conn.execute(
            f'CREATE TABLE "{archive}" AS SELECT {cols}, '
            f'NULL AS archived_at, NULL AS archive_reason FROM "{table}" WHERE 0'
        )
    return archive


# ---------------------------------------------------------------- migrations


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Statement by statement: ``executescript`` would COMMIT the open transaction."""
    for statement in script.split(";\n"):
        if statement.strip():
            conn.execute(statement)


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    _run_script(conn, _ORIGINAL_DDL)


def archive_duplicate_variants(conn: sqlite3.Connection, reason: str) -> None:
    """Keep the lowest id of each (image_id, variant_type, url) -- the id step 5's
    old tracker knew -- and move the others to the archive: not a row is lost."""
    dup_ids = (
        "SELECT v.id FROM image_variants v WHERE EXISTS (SELECT 1 FROM image_variants k "
        "WHERE k.image_id IS v.image_id AND k.variant_type IS v.variant_type "
        "AND k.url IS v.url AND k.id < v.id)"
    )
    if conn.execute(f"SELECT EXISTS ({dup_ids})").fetchone()[0]:
        archive = ensure_archive_table(conn, "image_variants")
        cols = ", ".join(f'"{c}"' for c in columns_of(conn, "image_variants"))
        conn.execute(
            f'INSERT INTO "{archive}" SELECT {cols}, ?, ? FROM image_variants '
            f"WHERE id IN ({dup_ids})",
            (now_iso(), reason),
        )
        conn.execute(f"DELETE FROM image_variants WHERE id IN ({dup_ids})")


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    present = set(columns_of(conn, "images"))
    for column in IMAGE_EXTRA_COLUMNS:
        if column not in present:
            conn.execute(f'ALTER TABLE images ADD COLUMN "{column}" TEXT')
    # The original imported variants with plain INSERT, so every re-run
    # duplicated them.
    archive_duplicate_variants(conn, "duplicate variant (legacy import)")
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS image_variants_unique "
        "ON image_variants(image_id, variant_type, url)"
    )
    _run_script(conn, _V2_DDL)


def _migrate_to_3(conn: sqlite3.Connection) -> None:
    _run_script(conn, _V3_DDL)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_to_1,
    2: _migrate_to_2,
    3: _migrate_to_3,
}


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection, db_path: Path | None = None) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; back up a non-empty DB first.

    Returns the version the DB had. Each step runs in its own transaction, so
    an interrupted migration resumes where it stopped.
    """
    start = schema_version(conn)
    if start > SCHEMA_VERSION:
        raise SchemaError(
            f"{db_path or 'database'} has schema version {start}, newer than this "
            f"program's {SCHEMA_VERSION}; update the program"
        )
    if start == SCHEMA_VERSION:
        return start
    has_data = table_exists(conn, "images")
    if has_data and db_path is not None and db_path.exists():
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        backup(db_path)
    for version in range(start + 1, SCHEMA_VERSION + 1):
        with transaction(conn):
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version}")
    return start


def connect(
    path: Path | str,
    *,
    create: bool = True,
    migrate_schema: bool = True,
    readonly: bool = False,
) -> sqlite3.Connection:
    """Open a pipeline DB: WAL, foreign keys on, migrated to the current schema.

    ``create=False`` refuses a missing file instead of silently creating an empty
    one (the original analyzer's defect). The connection is in autocommit mode:
    use :func:`transaction` for writes.
    """
    path = Path(path)
    if not path.exists() and (not create or readonly):
        raise FileNotFoundError(f"database not found: {path}")
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        if migrate_schema and not readonly:
            migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise SchemaError(f"{path} is not a usable SQLite database: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn
