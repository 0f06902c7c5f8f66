"""Step 4 as a user runs it: XHR files → step 2 → damage → 4_DB_cleanup.py."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import count_of, dump, rows, run_on_terminal, run_script
from tests.xhr_factory import entity, write_xhr
from yandex_reverse import db

SCRIPT = "4_DB_cleanup.py"
BACKUP_NAME = re.compile(r"yandex_images_backup_\d{8}_\d{6}(_\d+)?\.db")


@pytest.fixture
def damaged_db(workdir: Path) -> Path:
    """A step-2 DB plus one row of every kind step 4 removes."""
    xhr = workdir / "XHR"
    write_xhr(
        xhr,
        "cat.jpg",
        0,
        [
            entity("good1"),
            entity("good2", pos=1, orig_url="https://i.pinimg.com/736x/g2.jpg"),
            # No usable URL anywhere: removed with its variants and links.
            entity("broken", pos=2, orig_url="javascript:alert(1)", previews=[], dups=[]),
            # Bad origUrl but a usable dups copy: kept.
            entity("fallback", pos=3, orig_url="/relative.jpg", previews=[]),
        ],
    )
    write_xhr(xhr, "dog.jpg", 0, [entity("broken", orig_url="ftp://x/y.jpg", previews=[], dups=[])])
    run_script(
        "2_XHRtoDB.py", "--xhr-dir", xhr, "--db", "yandex_images.db", cwd=workdir, check=True
    )
    path = workdir / "yandex_images.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = OFF")  # as the original scripts wrote
    add = "INSERT INTO image_variants (image_id, variant_type, url) VALUES (?, ?, ?)"
    conn.execute(add, ("ghost", "dups", "https://example.com/ghost.jpg"))
    conn.execute(add, ("good1", "dups", ""))
    conn.execute(add, ("good1", "dups", "   "))
    conn.execute(add, ("good2", "dups", "data:image/png;base64,AAAA"))
    conn.execute("INSERT INTO query_results (query, image_id) VALUES ('cat.jpg', 'ghost')")
    conn.commit()
    conn.close()
    return path


EXPECTED = {
    "query links whose result is gone": 1,
    "variants whose result is gone": 1,
    "variants with an empty URL": 2,
    "variants with a relative, non-http(s) or unparseable URL": 1,
    "query links of the results removed below": 2,
    "variants of the results removed below": 1,  # its thumb
    "results without any usable URL": 1,
}


def test_dry_run_lists_and_changes_nothing(damaged_db: Path, workdir: Path) -> None:
    before = dump(damaged_db)
    done = run_script(SCRIPT, "--db", damaged_db, "--dry-run", cwd=workdir, check=True)
    assert dump(damaged_db) == before
    for label, n in EXPECTED.items():
        assert count_of(done.stdout, label) == n
    assert count_of(done.stdout, "results with a bad origUrl kept (usable fallback)") == 1
    assert "ghost.jpg" in done.stdout and "data:image/png" in done.stdout  # the rows listed
    assert "nothing was changed" in done.stdout
    assert not list(workdir.glob("*_backup_*"))


def test_cleanup_removes_each_kind_then_rerun_removes_nothing(
    damaged_db: Path, workdir: Path
) -> None:
    done = run_script(SCRIPT, "--db", damaged_db, "--yes", cwd=workdir, check=True)
    for label, n in EXPECTED.items():
        assert count_of(done.stdout, label) == n
    assert rows(damaged_db, "SELECT id FROM images ORDER BY id") == [
        ("fallback",),
        ("good1",),
        ("good2",),
    ]
    assert rows(damaged_db, "SELECT count(*) FROM image_variants WHERE image_id = 'ghost'") == [
        (0,)
    ]
    assert rows(damaged_db, "SELECT count(*) FROM image_variants WHERE trim(url) = ''") == [(0,)]
    assert rows(damaged_db, "SELECT DISTINCT image_id FROM query_results ORDER BY 1") == [
        ("fallback",),
        ("good1",),
        ("good2",),
    ]
    backups = [p.name for p in workdir.glob("yandex_images_backup_*")]
    assert len(backups) == 1 and BACKUP_NAME.fullmatch(backups[0])
    # The backup is the DB as it was: the broken result is still there.
    assert rows(workdir / backups[0], "SELECT count(*) FROM images WHERE id = 'broken'") == [(1,)]
    assert "size after" in done.stdout
    after = dump(damaged_db)
    again = run_script(SCRIPT, "--db", damaged_db, "--dry-run", cwd=workdir, check=True)
    assert count_of(again.stdout, "total would be removed") == 0
    again = run_script(SCRIPT, "--db", damaged_db, cwd=workdir, check=True)
    assert "Nothing to clean" in again.stdout
    run_script(SCRIPT, "--db", damaged_db, "--yes", cwd=workdir, check=True)
    assert dump(damaged_db) == after


def test_archive_keeps_every_removed_row(damaged_db: Path, workdir: Path) -> None:
    images_before = rows(damaged_db, "SELECT * FROM images WHERE id = 'broken'")
    run_script(SCRIPT, "--db", damaged_db, "--archive", "--yes", cwd=workdir, check=True)
    archived = rows(damaged_db, "SELECT * FROM images_archive")
    assert [r[:-2] for r in archived] == images_before
    assert archived[0][-1] == "results without any usable URL"
    reasons = rows(
        damaged_db,
        "SELECT archive_reason, count(*) FROM image_variants_archive GROUP BY 1 ORDER BY 1",
    )
    assert reasons == [
        ("variants of the results removed below", 1),
        ("variants whose result is gone", 1),
        ("variants with a relative, non-http(s) or unparseable URL", 1),
        ("variants with an empty URL", 2),
    ]
    links = rows(damaged_db, "SELECT query, image_id FROM query_results_archive ORDER BY 1, 2")
    assert links == [("cat.jpg", "broken"), ("cat.jpg", "ghost"), ("dog.jpg", "broken")]


def test_fault_mid_cleanup_leaves_db_unchanged(damaged_db: Path, workdir: Path) -> None:
    conn = sqlite3.connect(damaged_db)
    # Fires at the last rule, after links and variants were already deleted.
    conn.execute(
        "CREATE TRIGGER fault BEFORE DELETE ON images BEGIN SELECT RAISE(ABORT, 'injected'); END"
    )
    conn.commit()
    conn.close()
    before = dump(damaged_db)
    done = run_script(SCRIPT, "--db", damaged_db, "--yes", "--archive", cwd=workdir)
    assert done.returncode == 1
    assert "the DB is unchanged" in done.stderr and "injected" in done.stderr
    assert dump(damaged_db) == before
    backups = list(workdir.glob("yandex_images_backup_*"))
    assert len(backups) == 1 and dump(backups[0]) == before


def test_keep_backups_prunes_oldest(damaged_db: Path, workdir: Path) -> None:
    for _ in range(3):
        run_script(
            SCRIPT, "--db", damaged_db, "--yes", "--keep-backups", "2", cwd=workdir, check=True
        )
    backups = sorted(p.name for p in workdir.glob("yandex_images_backup_*"))
    assert len(backups) == 2 and all(BACKUP_NAME.fullmatch(b) for b in backups)


def test_without_terminal_db_and_confirmation_are_flags(damaged_db: Path, workdir: Path) -> None:
    before = dump(damaged_db)
    done = run_script(SCRIPT, cwd=workdir)  # --db takes its default, yandex_images.db
    assert done.returncode == 2 and "--yes" in done.stderr
    elsewhere = run_script(SCRIPT, cwd=workdir.parent)  # no yandex_images.db there
    assert elsewhere.returncode == 1 and "not found: yandex_images.db" in elsewhere.stderr
    assert "step 2" in elsewhere.stderr  # the hint names the step that makes it
    done = run_script(SCRIPT, "--db", damaged_db, cwd=workdir)
    assert done.returncode == 2 and "--yes" in done.stderr
    assert dump(damaged_db) == before
    missing = run_script(SCRIPT, "--db", "vk_images.db", "--yes", cwd=workdir)
    assert missing.returncode == 1 and "database not found" in missing.stderr
    assert not (workdir / "vk_images.db").exists()


def test_legacy_db_duplicates_reported_and_archived(workdir: Path) -> None:
    path = workdir / "vk_images.db"
    conn = sqlite3.connect(path)
    conn.executescript(db._ORIGINAL_DDL)
    conn.execute("INSERT INTO images (id, origUrl) VALUES ('a', 'https://vk.com/a.jpg')")
    conn.execute("INSERT INTO images (id, origUrl) VALUES ('b', 'not a url')")
    variant = "INSERT INTO image_variants (image_id, variant_type, url, width) VALUES (?, ?, ?, ?)"
    for _ in range(3):  # the original importer run three times
        conn.execute(variant, ("a", "preview", "https://vk.com/a.jpg", 10))
        conn.execute(variant, ("a", "thumb", "//avatars.mds.yandex.net/a", 1))
    conn.execute(variant, ("zzz", "preview", "https://vk.com/z.jpg", 5))
    conn.commit()
    conn.close()
    raw = path.read_bytes()
    done = run_script(SCRIPT, "--db", path, "--dry-run", cwd=workdir, check=True)
    assert path.read_bytes() == raw  # not even migrated
    assert (
        count_of(done.stdout, "duplicate variants (legacy import, archived by the migration)") == 4
    )
    assert count_of(done.stdout, "results without any usable URL") == 1
    assert count_of(done.stdout, "variants whose result is gone") == 1
    run_script(SCRIPT, "--db", path, "--yes", cwd=workdir, check=True)
    assert rows(path, "PRAGMA user_version") == [(db.SCHEMA_VERSION,)]
    assert rows(path, "SELECT image_id, variant_type FROM image_variants ORDER BY id") == [
        ("a", "preview"),
        ("a", "thumb"),
    ]
    assert rows(path, "SELECT count(*) FROM image_variants_archive") == [(4,)]
    assert rows(path, "SELECT id FROM images") == [("a",)]


def test_on_a_terminal_asks_which_db_like_the_original(damaged_db: Path, workdir: Path) -> None:
    # A wrong answer asks again, then 1 = yandex_images.db.
    done = run_on_terminal(SCRIPT, "--dry-run", cwd=workdir, answers="7\n1\n")
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, err
    assert "1) yandex_images.db" in out and "2) vk_images.db" in out
    assert "Invalid choice" in out
    assert count_of(out, "results without any usable URL") == 1


def _step4_backups(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.glob("yandex_images_backup_*"))


def test_keep_backups_deletes_only_backups_step4_recorded_making(
    damaged_db: Path, workdir: Path
) -> None:
    """A user's own files under the backup pattern survive any --keep-backups;
    what goes is listed before it goes."""
    mine = workdir / "yandex_images_backup_20000101_000000.db"
    mine.write_bytes(b"the user's own copy")
    also = workdir / "yandex_images_backup_20000102_000000.db"
    also.write_bytes(b"another")
    made = []
    for _ in range(3):
        done = run_script(
            SCRIPT, "--db", damaged_db, "--yes", "--keep-backups", "1", cwd=workdir, check=True
        )
        made.append(re.search(r"Backup: (\S+)", done.stdout).group(1))
    assert mine.read_bytes() == b"the user's own copy" and also.read_bytes() == b"another"
    assert _step4_backups(workdir) == sorted([mine.name, also.name, Path(made[-1]).name])
    # The last run listed the one it deleted before the summary said so.
    listing = done.stdout.index("Old backups made by step 4 to delete (keeping the newest 1):")
    assert done.stdout.index(made[1], listing) < done.stdout.index("old backups deleted")
    assert "2 other backups in the folder were not made by step 4: kept." in done.stdout
    assert count_of(done.stdout, "old backups deleted") == 1


def test_dry_run_lists_the_backups_that_would_go_and_deletes_none(
    damaged_db: Path, workdir: Path
) -> None:
    for _ in range(2):
        run_script(SCRIPT, "--db", damaged_db, "--yes", cwd=workdir, check=True)
    before = _step4_backups(workdir)
    done = run_script(
        SCRIPT, "--db", damaged_db, "--dry-run", "--keep-backups", "2", cwd=workdir, check=True
    )
    assert "Old backups made by step 4 would be deleted (keeping the newest 2):" in done.stdout
    assert before[0] in done.stdout and before[1] not in done.stdout
    assert _step4_backups(workdir) == before


def test_a_tampered_backup_ledger_deletes_nothing_it_names(
    damaged_db: Path, workdir: Path, tmp_path: Path
) -> None:
    """Entries pointing outside the folder, at another DB's name, at a symlink
    or at a file changed since step 4 made it are refused with a reason."""
    from yandex_reverse.cleanup import ledger_path

    outside = tmp_path / "outside.db"
    outside.write_bytes(b"keep me")
    run_script(SCRIPT, "--db", damaged_db, "--yes", cwd=workdir, check=True)
    run_script(SCRIPT, "--db", damaged_db, "--yes", cwd=workdir, check=True)
    ledger = json.loads(ledger_path(damaged_db).read_text())
    first, second = ledger["backups"]
    changed = workdir / first["name"]
    changed.write_bytes(b"replaced by the user")
    link = workdir / "yandex_images_backup_20000101_000000.db"
    link.symlink_to(outside)
    other_db = workdir / "vk_images_backup_20000101_000000.db"
    other_db.write_bytes(b"not this DB's")
    st = outside.stat()
    forged = [
        {"name": str(outside), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        {"name": "../outside.db", "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        {"name": other_db.name, "size": 13, "mtime_ns": other_db.stat().st_mtime_ns},
        {"name": link.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        {"name": "/proc/self/environ", "size": 0, "mtime_ns": 0},
        first,
    ]
    ledger["backups"] = [*forged, second]
    ledger_path(damaged_db).write_text(json.dumps(ledger))
    done = run_script(
        SCRIPT, "--db", damaged_db, "--yes", "--keep-backups", "1", cwd=workdir, check=True
    )
    assert outside.read_bytes() == b"keep me" and link.is_symlink()
    assert other_db.exists() and changed.read_bytes() == b"replaced by the user"
    for reason in (
        f"{outside}: not a backup name of this DB",
        "../outside.db: not a backup name of this DB",
        f"{link.name}: not a regular file",
        f"{first['name']}: changed since step 4 made it",
    ):
        assert f"Not deleted (refused backup ledger entry): {reason}" in done.stdout
    assert not (workdir / second["name"]).exists()  # a genuine old backup of step 4 goes
    assert count_of(done.stdout, "old backups deleted") == 1
    assert "Traceback" not in done.stdout + done.stderr


def test_step4_speaks_russian_under_a_russian_locale(damaged_db: Path, workdir: Path) -> None:
    env = {"LANG": "ru_RU.UTF-8", "LC_ALL": ""}
    done = run_script(SCRIPT, "--db", damaged_db, "--dry-run", cwd=workdir, env=env, check=True)
    assert "Пробный запуск: ничего не изменено." in done.stdout
    assert "Строки, которые были бы удалены" in done.stdout
    assert "варианты с пустым URL" in done.stdout
