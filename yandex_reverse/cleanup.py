"""Step 4: remove what no later step can use, with a backup first and one transaction.

What goes, each counted on its own (in this order, so a count never
includes another's rows):

* query links and variants whose result is gone (orphans);
* variants with an empty URL, and variants whose URL is not usable
  (relative, not http(s), unparseable: ``urls.normalize_url``);
* results with no usable URL at all: ``origUrl``, ``img_href`` and
  ``best_url`` unusable and no usable ``preview``/``dups`` variant to fall
  back on -- with their variants and query links.

Duplicates: the original cleanup grouped variants by all their columns and
kept the lowest id. This project's schema makes a duplicate impossible
(one variant per ``(image_id, variant_type, url)``, ``images.id`` a primary
key), and opening a legacy DB migrates it: the migration keeps the lowest id
of each group and moves the others to ``image_variants_archive``. So this
step reports how many legacy duplicates that migration archived, and a DB
it already migrated reports none.

``--dry-run`` runs the very same statements and rolls back (on a temporary
copy for a legacy DB, whose migration would otherwise change it), so the
preview's counts are exactly what a real run removes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import db, i18n
from .cli import Yes, add_common_flags, require_input
from .console import (
    StepFailed,
    UsageError,
    ask_choice,
    confirm,
    console,
    esc,
    human_bytes,
    one_line,
    print_summary,
    setup_logging,
    table,
)
from .fsutil import atomic_write_text
from .i18n import N_, _, ngettext
from .urls import normalize_url

LEGACY_DUP_REASON = "duplicate variant (legacy import)"
FALLBACK_TYPES = ("preview", "dups")
TABLES = ("images", "image_variants", "query_results")


@dataclass(frozen=True)
class Rule:
    """Rows of ``table`` matching ``where`` go; ``sample`` columns show which."""

    key: str
    label: str
    table: str
    where: str
    sample: str


_EMPTY = "(url IS NULL OR trim(url) = '')"
_USABLE_FALLBACK = (
    "EXISTS (SELECT 1 FROM image_variants v WHERE v.image_id = images.id "
    f"AND v.variant_type IN {FALLBACK_TYPES!r} AND usable_url(v.url))"
)
BROKEN_RESULTS = (
    "NOT usable_url(origUrl) AND NOT usable_url(img_href) AND NOT usable_url(best_url) "
    f"AND NOT {_USABLE_FALLBACK}"
)
KEPT_BY_FALLBACK = f"NOT usable_url(origUrl) AND NOT ({BROKEN_RESULTS})"

RULES: tuple[Rule, ...] = (
    Rule(
        "orphan_links",
        N_("query links whose result is gone"),
        "query_results",
        "image_id NOT IN (SELECT id FROM images)",
        "query, image_id",
    ),
    Rule(
        "orphan_variants",
        N_("variants whose result is gone"),
        "image_variants",
        "image_id NOT IN (SELECT id FROM images)",
        "id, image_id, url",
    ),
    Rule(
        "empty_variants", N_("variants with an empty URL"), "image_variants", _EMPTY, "id, image_id"
    ),
    Rule(
        "unusable_variants",
        N_("variants with a relative, non-http(s) or unparseable URL"),
        "image_variants",
        f"NOT {_EMPTY} AND NOT usable_url(url)",
        "id, image_id, url",
    ),
    Rule(
        "broken_result_links",
        N_("query links of the results removed below"),
        "query_results",
        "image_id IN temp.broken_results",
        "query, image_id",
    ),
    Rule(
        "broken_result_variants",
        N_("variants of the results removed below"),
        "image_variants",
        "image_id IN temp.broken_results",
        "id, image_id, url",
    ),
    Rule(
        "broken_results",
        N_("results without any usable URL"),
        "images",
        "id IN temp.broken_results",
        "id, origUrl",
    ),
)


@dataclass
class Outcome:
    removed: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[tuple]] = field(default_factory=dict)
    kept_by_fallback: int = 0
    legacy_duplicates: int = 0
    rows_before: dict[str, int] = field(default_factory=dict)
    rows_after: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.removed.values())


def _usable(value: object) -> bool:
    return normalize_url(value) is not None


def _rows(conn: sqlite3.Connection) -> dict[str, int]:
    return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLES}


def clean(conn: sqlite3.Connection, *, dry_run: bool, archive: bool, show: int = 10) -> Outcome:
    """Apply :data:`RULES` in one transaction; roll back on ``dry_run`` or any error."""
    conn.create_function("usable_url", 1, _usable, deterministic=True)
    out = Outcome(rows_before=_rows(conn))
    stamp = db.now_iso()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TEMP TABLE broken_results (id TEXT PRIMARY KEY) WITHOUT ROWID")
        for rule in RULES:
            if rule.key == "broken_result_links":  # after the variants are sorted out
                conn.execute(
                    f"INSERT INTO temp.broken_results SELECT id FROM images WHERE {BROKEN_RESULTS}"
                )
                out.kept_by_fallback = conn.execute(
                    f"SELECT count(*) FROM images WHERE {KEPT_BY_FALLBACK}"
                ).fetchone()[0]
            if show:
                out.samples[rule.key] = conn.execute(
                    f'SELECT {rule.sample} FROM "{rule.table}" WHERE {rule.where} LIMIT ?', (show,)
                ).fetchall()
            if archive:
                target = db.ensure_archive_table(conn, rule.table)
                cols = ", ".join(f'"{c}"' for c in db.columns_of(conn, rule.table))
                conn.execute(
                    f'INSERT INTO "{target}" SELECT {cols}, ?, ? FROM "{rule.table}" '
                    f"WHERE {rule.where}",
                    (stamp, rule.label),
                )
            cursor = conn.execute(f'DELETE FROM "{rule.table}" WHERE {rule.where}')
            out.removed[rule.key] = cursor.rowcount
        out.rows_after = _rows(conn)
        conn.execute("DROP TABLE temp.broken_results")
    except BaseException:
        conn.rollback()
        conn.execute("DROP TABLE IF EXISTS temp.broken_results")
        raise
    if dry_run:
        conn.rollback()
    else:
        conn.commit()
    return out


# ---------------------------------------------------------------- the DB file


def db_size(path: Path) -> int:
    """The DB file plus its WAL (what the user's disk actually holds)."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def probe(path: Path) -> tuple[bool, int]:
    """(is a legacy DB that opening will migrate, legacy duplicates archived so far)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            legacy = version < db.SCHEMA_VERSION and db.table_exists(conn, "images")
            return legacy, _legacy_archived(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StepFailed(
            _("{path} is not a usable SQLite database: {reason}").format(path=path, reason=exc)
        ) from exc


def _legacy_archived(conn: sqlite3.Connection) -> int:
    if not db.table_exists(conn, "image_variants_archive"):
        return 0
    return conn.execute(
        "SELECT count(*) FROM image_variants_archive WHERE archive_reason = ?",
        (LEGACY_DUP_REASON,),
    ).fetchone()[0]


def _open(path: Path) -> sqlite3.Connection:
    try:
        return db.connect(path, create=False)
    except db.SchemaError as exc:
        raise StepFailed(str(exc)) from exc


@contextmanager
def opened(path: Path, *, scratch: bool) -> Iterator[tuple[sqlite3.Connection, int]]:
    """The DB (or, with ``scratch``, a temporary copy) open and migrated.

    Yields the connection and the number of legacy duplicates the migration
    archived on this opening.
    """
    _legacy, archived_before = probe(path)
    tmp = Path(tempfile.mkdtemp(prefix="yr_cleanup_")) if scratch else None
    try:
        target = db.backup(path, tmp / path.name) if tmp else path
        conn = _open(target)
        try:
            yield conn, _legacy_archived(conn) - archived_before
        finally:
            conn.close()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------ own backups


def ledger_path(path: Path) -> Path:
    """Where step 4 records the backups it made of ``path``: ``<db>.backups.json``."""
    return path.with_name(f"{path.name}.backups.json")


def _backup_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(re.escape(path.stem) + r"_backup_\d{8}_\d{6}(_\d+)?" + re.escape(path.suffix))


def _read_ledger(path: Path) -> list[dict]:
    try:
        data = json.loads(ledger_path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise StepFailed(
            _(
                "the backup ledger {ledger} is unreadable ({reason}); "
                "move it away to continue (no backup is deleted without it)"
            ).format(ledger=ledger_path(path), reason=one_line(exc))
        ) from exc
    entries = data.get("backups") if isinstance(data, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _write_ledger(path: Path, entries: list[dict]) -> None:
    text = json.dumps({"db": path.name, "backups": entries}, ensure_ascii=False, indent=1)
    atomic_write_text(ledger_path(path), text + "\n")


def record_backup(path: Path, backup: Path) -> None:
    """Add this run's backup to the ledger, with what identifies the file."""
    st = backup.lstat()
    entries = _read_ledger(path)
    entries.append({"name": backup.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    _write_ledger(path, entries)


@dataclass
class Pruning:
    """Which recorded backups go, which stay and why."""

    delete: list[Path] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (ledger name, reason)
    keep: list[dict] = field(default_factory=list)  # ledger entries that stay
    others: int = 0  # backups in the folder that step 4 did not record


def plan_pruning(path: Path, keep: int, *, adding: int = 0) -> Pruning:
    """All but the newest ``keep`` backups step 4 recorded making (0 keeps all);
    ``adding``: backups about to be made (a preview counts this run's own).

    A ledger entry is deleted only if it names a backup of this DB in the
    DB's own folder (a bare name of the backup pattern), and the file there
    is still a regular file of the recorded size and modification time. Any
    other entry is refused with a reason and nothing of it is touched; files
    the ledger does not name (the migration's backups, the user's copies)
    are never candidates.
    """
    plan = Pruning()
    entries = _read_ledger(path)
    pattern = _backup_pattern(path)
    recorded = {e.get("name") for e in entries}
    plan.others = sum(1 for b in db.list_backups(path) if b.name not in recorded)
    if keep <= 0:
        plan.keep = entries
        return plan
    split = max(0, len(entries) - max(0, keep - adding))
    plan.keep = entries[split:]
    for entry in entries[:split]:
        name = entry.get("name")
        if not isinstance(name, str) or not pattern.fullmatch(name):
            plan.refused.append((str(name), _("not a backup name of this DB")))
            continue
        target = path.with_name(name)
        try:
            st = target.lstat()
        except FileNotFoundError:
            continue  # gone already: dropped from the ledger
        except OSError as exc:
            plan.refused.append((name, _("cannot check it: {reason}").format(reason=exc.strerror)))
            plan.keep.insert(0, entry)
            continue
        if not stat.S_ISREG(st.st_mode):
            plan.refused.append((name, _("not a regular file")))
        elif (st.st_size, st.st_mtime_ns) != (entry.get("size"), entry.get("mtime_ns")):
            plan.refused.append((name, _("changed since step 4 made it")))
        else:
            plan.delete.append(target)
    return plan


def prune_backups(path: Path, plan: Pruning) -> list[Path]:
    """Delete what :func:`plan_pruning` chose; the ledger keeps the rest."""
    deleted = []
    for target in plan.delete:
        try:
            target.unlink()
            deleted.append(target)
        except FileNotFoundError:
            pass
        except OSError as exc:
            reason = _("could not delete it: {reason}").format(reason=exc.strerror)
            plan.refused.append((target.name, reason))
    _write_ledger(path, plan.keep)
    return deleted


def print_pruning(plan: Pruning, *, keep: int, dry_run: bool) -> None:
    """The backups that go (before they go), the refused entries, the others kept."""
    if plan.delete:
        if dry_run:
            title = _("Old backups made by step 4 would be deleted (keeping the newest {n}):")
        else:
            title = _("Old backups made by step 4 to delete (keeping the newest {n}):")
        console.print(title.format(n=keep), markup=False, soft_wrap=True)
        for target in plan.delete:
            console.print(f"  {target}", markup=False, soft_wrap=True)
    for name, reason in plan.refused:
        line = _("Not deleted (refused backup ledger entry): {name}: {reason}")
        console.print(line.format(name=name, reason=reason), markup=False, soft_wrap=True)
    if plan.others:
        line = ngettext(
            "{n} other backup in the folder was not made by step 4: kept.",
            "{n} other backups in the folder were not made by step 4: kept.",
            plan.others,
        )
        console.print(line.format(n=plan.others), markup=False, soft_wrap=True)


# ---------------------------------------------------------------- report


def print_outcome(out: Outcome, *, dry_run: bool, show: int) -> None:
    rows = [
        (_("duplicate variants (legacy import, archived by the migration)"), out.legacy_duplicates)
    ]
    rows += [(i18n._(rule.label), out.removed.get(rule.key, 0)) for rule in RULES]
    rows.append((_("total would be removed") if dry_run else _("total removed"), out.total))
    rows.append((_("results with a bad origUrl kept (usable fallback)"), out.kept_by_fallback))
    title = _("Rows that would be removed") if dry_run else _("Rows removed")
    console.print(table(title, ("", _("rows")), rows))
    console.print(
        table(
            _("Rows per table"),
            (_("table"), _("before"), _("after")),
            [(t, out.rows_before.get(t, 0), out.rows_after.get(t, 0)) for t in TABLES],
        )
    )
    if show and dry_run:
        for rule in RULES:
            samples = out.samples.get(rule.key) or []
            if samples:
                cols = [c.strip() for c in rule.sample.split(",")]
                more = out.removed[rule.key] - len(samples)
                title = _("{label} ({n:,}, first {first})") if more > 0 else _("{label} ({n:,})")
                title = title.format(
                    label=i18n._(rule.label), n=out.removed[rule.key], first=len(samples)
                )
                console.print(table(title, cols, samples, numeric_from=len(cols)))


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="4_DB_cleanup.py",
        description=_(
            "Remove orphan, empty and unusable rows from a pipeline DB (legacy duplicates are "
            "archived on opening). Backs up first; one transaction; VACUUM after."
        ),
    )
    parser.add_argument(
        "--db",
        type=Path,
        help=_("DB to clean (asked on a terminal: yandex_images.db or vk_images.db)"),
    )
    parser.add_argument(
        "--dry-run", action="store_true", help=_("show what would go, change nothing")
    )
    parser.add_argument(
        "--archive",
        action="store_true",
        help=_("move removed rows into <table>_archive tables instead of deleting them"),
    )
    parser.add_argument(
        "--keep-backups",
        type=int,
        default=5,
        metavar="N",
        help=_(
            "keep only the newest N backups that this step made of this DB (recorded in "
            "<db>.backups.json; others are never deleted) (default: 5; 0 keeps all)"
        ),
    )
    parser.add_argument("-y", "--yes", action=Yes, help=_("do not ask for confirmation"))
    parser.add_argument(
        "--show",
        type=int,
        default=10,
        metavar="N",
        help=_("with --dry-run, list the first N rows of each kind (default: 10)"),
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=Path("4_DB_cleanup.log"),
        help=_("details and tracebacks (default: 4_DB_cleanup.log)"),
    )
    add_common_flags(parser)
    return parser


def choose_db(given: Path | None) -> Path:
    if given is not None:
        return given
    answer = ask_choice(
        _("Which database to clean?"),
        [("yandex_images.db", "yandex_images.db"), ("vk_images.db", "vk_images.db")],
        flag="--db",
        default="yandex_images.db",
    )
    return require_input(Path(answer), flag="--db")  # checked at once, with the step that makes it


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.keep_backups < 0 or args.show < 0:
        raise UsageError(_("--keep-backups and --show must be 0 or more"))
    setup_logging(args.log_file)
    path = choose_db(args.db)
    if not path.is_file():
        raise StepFailed(_("database not found: {path}").format(path=path))
    legacy, _archived = probe(path)
    size_before = db_size(path)
    console.print(
        _("Database: {path} ({size})").format(path=esc(path), size=human_bytes(size_before))
    )
    if legacy:
        console.print(_("Legacy schema (original scripts): it is migrated first."))

    if args.dry_run or not args.yes:
        with opened(path, scratch=legacy) as (conn, dups):
            preview = clean(conn, dry_run=True, archive=args.archive, show=args.show)
        preview.legacy_duplicates = dups
        print_outcome(preview, dry_run=True, show=args.show if args.dry_run else 0)
        # This run adds one backup: the newest keep-1 recorded ones stay beside it.
        pruning = plan_pruning(path, args.keep_backups, adding=1)
        print_pruning(pruning, keep=args.keep_backups, dry_run=True)
        if args.dry_run:
            console.print(_("Dry run: nothing was changed."))
            return 0
        if not preview.total and not legacy:
            console.print(_("Nothing to clean."))
            return 0
        if not confirm(_("Back up and clean {path}?").format(path=path), assume_yes=args.yes):
            console.print(_("Cancelled by user."))
            return 0

    backup = db.backup(path)
    record_backup(path, backup)
    console.print(_("Backup: {path}").format(path=esc(backup)), soft_wrap=True)
    with opened(path, scratch=False) as (conn, dups):
        try:
            out = clean(conn, dry_run=False, archive=args.archive, show=0)
        except Exception as exc:
            raise StepFailed(
                _("cleanup failed, the DB is unchanged ({reason}); backup: {path}").format(
                    reason=one_line(exc), path=backup
                )
            ) from exc
        out.legacy_duplicates = dups
        if out.total or dups:
            conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    plan = plan_pruning(path, args.keep_backups)
    if args.yes:  # else the preview listed them before the question
        print_pruning(plan, keep=args.keep_backups, dry_run=False)
    pruned = prune_backups(path, plan)
    size_after = db_size(path)
    print_outcome(out, dry_run=False, show=0)
    print_summary(
        _("DB cleanup"),
        [
            (_("size before"), human_bytes(size_before)),
            (_("size after"), human_bytes(size_after)),
            (_("space saved"), human_bytes(max(0, size_before - size_after))),
            (_("backup"), str(backup)),
            (_("old backups deleted"), len(pruned)),
            (_("mode"), _("archived") if args.archive else _("deleted")),
        ],
    )
    return 0
