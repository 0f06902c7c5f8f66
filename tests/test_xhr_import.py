"""Step 2 (`2_XHRtoDB.py`) driven as a user runs it, on XHR folders in Yandex's shapes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, count_of, dump, rows, run_script
from tests.xhr_factory import entity, write_xhr, xhr_payload
from yandex_reverse import db


def import_xhr(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_script("2_XHRtoDB.py", *extra, cwd=workdir)


def counts(db_path: Path) -> tuple[int, int, int]:
    return tuple(  # type: ignore[return-value]
        rows(db_path, f"SELECT count(*) FROM {t}")[0][0]
        for t in ("images", "image_variants", "query_results")
    )


def write_bad_inputs(xhr: Path) -> dict[str, str]:
    """Every bad input of the issue, with the reason the ledger must give."""
    xhr.mkdir(parents=True, exist_ok=True)
    (xhr / "broken.jpg_xhr_001.json").write_text('{"blocks": [}', encoding="utf-8")
    (xhr / "truncated.jpg_xhr_001.json").write_text(
        json.dumps(xhr_payload([entity("t1")]))[:200], encoding="utf-8"
    )
    (xhr / "empty.jpg_xhr_001.json").write_bytes(b"")
    (xhr / "latin1.jpg_xhr_001.json").write_bytes('{"title": "Рыжий"}'.encode("cp1251"))
    (xhr / "captcha.jpg_xhr_001.json").write_text(
        json.dumps(
            {"type": "captcha", "captcha": {"img-url": "x", "key": "k", "status": "failed"}}
        ),
        encoding="utf-8",
    )
    (xhr / "noadapter.jpg_xhr_001.json").write_text(
        json.dumps({"blocks": [{"name": {"block": "extra-content"}, "params": {}}]}),
        encoding="utf-8",
    )
    return {
        "broken.jpg_xhr_001.json": "invalid JSON",
        "truncated.jpg_xhr_001.json": "truncated JSON",
        "empty.jpg_xhr_001.json": "empty file",
        "latin1.jpg_xhr_001.json": "not UTF-8",
        "captcha.jpg_xhr_001.json": "captcha",
        "noadapter.jpg_xhr_001.json": "no 'i-react-ajax-adapter:ajax' block",
    }


def test_imports_results_variants_and_query_links(workdir: Path) -> None:
    xhr = workdir / "XHR"
    write_xhr(xhr, "cat.jpg", 0, [entity("e1", pos=0), entity("e2", pos=1)])
    write_xhr(xhr, "cat.jpg", 1, [entity("e3", pos=2, numbers_as_strings=True, thumb_shape="wh")])
    write_xhr(xhr, "dog.png", 1, [entity("e1", pos=5), entity("e4", pos=6, domain="pinterest.ru")])

    done = import_xhr(workdir)

    assert done.returncode == 0, done.stderr
    database = workdir / "yandex_images.db"
    assert counts(database) == (4, 12, 5)
    e3 = rows(
        database,
        "SELECT pos, origWidth, origHeight, title, title_raw, domain, image_url, best_url "
        "FROM images WHERE id = 'e3'",
    )[0]
    assert e3[:3] == (2, 1280, 960)  # numbers sent as strings became integers
    assert e3[3] == "Рыжий кот & друзья"  # tags and entities removed
    assert e3[4] == "Рыжий <b>кот</b> &amp; друзья"  # raw title kept
    assert e3[5] == "vk.com"
    assert e3[6].startswith("https://avatars.mds.yandex.net/")  # `//` URL made absolute
    assert e3[7].startswith("https://sun9-52.userapi.com/impg/e3/")
    thumb = rows(
        database,
        "SELECT width, height FROM image_variants WHERE image_id='e3' AND variant_type='thumb'",
    )
    assert thumb == [(320, 240)]  # thumb as {url, w, h}
    thumb_size_shape = rows(
        database,
        "SELECT width, height FROM image_variants WHERE image_id='e1' AND variant_type='thumb'",
    )
    assert thumb_size_shape == [(320, 240)]  # thumb as {url, size: {width, height}}
    links = rows(
        database, "SELECT query, image_id, page, position FROM query_results ORDER BY 1, 2"
    )
    assert links == [
        ("cat.jpg", "e1", 0, 0),
        ("cat.jpg", "e2", 0, 1),
        ("cat.jpg", "e3", 1, 2),
        ("dog.png", "e1", 1, 5),
        ("dog.png", "e4", 1, 6),
    ]
    assert "images new" in done.stdout


def test_best_url_falls_back_to_img_href_then_largest_variant(workdir: Path) -> None:
    no_orig = entity("n1")
    del no_orig["origUrl"]
    neither = entity(
        "n2",
        previews=[("https://a.example/small.jpg", 100, 100)],
        dups=[("//b.example/big.jpg", 2000, 1500), ("https://c.example/mid.jpg", 800, 600)],
    )
    del neither["origUrl"]
    del neither["viewerData"]["img_href"]
    write_xhr(workdir / "XHR", "q.jpg", 1, [no_orig, neither])

    assert import_xhr(workdir).returncode == 0

    best = dict(rows(workdir / "yandex_images.db", "SELECT id, best_url FROM images"))
    assert best["n1"] == no_orig["viewerData"]["img_href"]
    assert best["n2"] == "https://b.example/big.jpg"


def test_adapter_block_is_found_by_name_not_index(workdir: Path) -> None:
    xhr = workdir / "XHR"
    xhr.mkdir()
    only_adapter = xhr_payload([entity("x1")], with_extra_content=False)
    (xhr / "q.jpg_xhr_001.json").write_text(json.dumps(only_adapter), encoding="utf-8")
    reordered = xhr_payload([entity("x2")])
    reordered["blocks"].append({"name": {"block": "footer"}, "params": {}})
    reordered["blocks"].reverse()
    (xhr / "q.jpg_xhr_002.json").write_text(json.dumps(reordered), encoding="utf-8")

    assert import_xhr(workdir).returncode == 0

    assert sorted(rows(workdir / "yandex_images.db", "SELECT id FROM images")) == [("x1",), ("x2",)]


def test_bad_files_get_a_reason_and_the_run_goes_on(workdir: Path) -> None:
    xhr = workdir / "XHR"
    write_xhr(xhr, "good.jpg", 1, [entity("g1"), entity("g2")])
    expected = write_bad_inputs(xhr)
    (xhr / "emptypage.jpg_xhr_003.json").write_text(json.dumps(xhr_payload([])), encoding="utf-8")

    done = import_xhr(workdir)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    database = workdir / "yandex_images.db"
    assert counts(database)[0] == 2
    ledger = dict(rows(database, "SELECT path, error FROM xhr_files WHERE status = 'failed'"))
    assert set(ledger) == set(expected)
    for name, reason in expected.items():
        assert reason in ledger[name], (name, ledger[name])
        assert name in done.stdout
    assert count_of(done.stdout, "files failed") == 6
    page = rows(
        database, "SELECT status, entities FROM xhr_files WHERE path = 'emptypage.jpg_xhr_003.json'"
    )
    assert page == [("imported", 0)]


def test_nothing_readable_exits_1_and_missing_folder_is_clear(workdir: Path) -> None:
    missing = import_xhr(workdir)
    assert missing.returncode == 1
    assert "XHR folder not found" in missing.stderr
    assert not (workdir / "yandex_images.db").exists()

    write_bad_inputs(workdir / "XHR")
    done = import_xhr(workdir)
    assert done.returncode == 1
    assert "No file could be read" in done.stdout


def test_second_run_adds_nothing_and_skips_by_ledger(workdir: Path) -> None:
    xhr = workdir / "XHR"
    for page in range(3):
        write_xhr(
            xhr, "cat.jpg", page, [entity(f"p{page}e{i}", pos=page * 10 + i) for i in range(5)]
        )
    assert import_xhr(workdir).returncode == 0
    database = workdir / "yandex_images.db"
    first = counts(database)
    dump_before = dump(database)

    again = import_xhr(workdir)

    assert again.returncode == 0
    assert counts(database) == first
    assert count_of(again.stdout, "files skipped (unchanged)") == 3
    assert count_of(again.stdout, "files imported") == 0
    dump_after = dump(database)
    assert dump_after == dump_before


def test_changed_file_is_reimported_without_duplicates(workdir: Path) -> None:
    xhr = workdir / "XHR"
    path = write_xhr(xhr, "cat.jpg", 1, [entity("c1"), entity("c2")])
    assert import_xhr(workdir).returncode == 0
    database = workdir / "yandex_images.db"
    assert counts(database) == (2, 6, 2)

    write_xhr(xhr, "cat.jpg", 1, [entity("c1"), entity("c2"), entity("c3")])
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    assert import_xhr(workdir).returncode == 0

    assert counts(database) == (3, 9, 3)
    assert rows(database, "SELECT entities FROM xhr_files") == [(3,)]


def test_touched_but_identical_file_is_not_reparsed(workdir: Path) -> None:
    path = write_xhr(workdir / "XHR", "cat.jpg", 1, [entity("t1")])
    assert import_xhr(workdir).returncode == 0
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 7_000_000_000))

    done = import_xhr(workdir)

    assert count_of(done.stdout, "files imported") == 0
    mtime = rows(workdir / "yandex_images.db", "SELECT mtime_ns FROM xhr_files")[0][0]
    assert mtime == path.stat().st_mtime_ns


def test_legacy_database_migrates_in_place_and_keeps_working(workdir: Path) -> None:
    legacy = workdir / "yandex_images.db"
    conn = sqlite3.connect(legacy)
    conn.executescript(db._ORIGINAL_DDL)
    conn.execute(
        "INSERT INTO images (id, origUrl, title, domain) VALUES ('old1', 'https://x.example/1.jpg', 'Old', 'x.example')"
    )
    for width in (100, 100, 100, 200):  # the original duplicated variants on every run
        conn.execute(
            "INSERT INTO image_variants (image_id, variant_type, url, width) VALUES ('old1', 'preview', 'https://x.example/1.jpg', ?)",
            (width,),
        )
    conn.commit()
    conn.close()
    write_xhr(workdir / "XHR", "cat.jpg", 1, [entity("new1"), entity("old1")])

    done = import_xhr(workdir)

    assert done.returncode == 0, done.stderr
    backups = db.list_backups(legacy)
    assert len(backups) == 1
    assert rows(backups[0], "SELECT count(*) FROM image_variants") == [(4,)]  # untouched copy
    assert rows(legacy, "PRAGMA user_version") == [(db.SCHEMA_VERSION,)]
    kept = rows(
        legacy,
        "SELECT id, width FROM image_variants WHERE image_id='old1' AND variant_type='preview' AND url='https://x.example/1.jpg'",
    )
    assert kept == [(1, 100)]  # the lowest id survives
    archived = rows(
        legacy, "SELECT id, width, archive_reason FROM image_variants_archive ORDER BY id"
    )
    assert [(a[0], a[1]) for a in archived] == [(2, 100), (3, 100), (4, 200)]  # nothing lost
    assert rows(legacy, "SELECT title FROM images WHERE id='old1'") == [("Рыжий кот & друзья",)]
    assert counts(legacy)[0] == 2
    assert import_xhr(workdir).returncode == 0
    assert counts(legacy)[0] == 2


def test_killed_import_is_completed_by_a_rerun(workdir: Path, tmp_path: Path) -> None:
    xhr = workdir / "XHR"
    for query in range(100):
        for page in range(4):
            write_xhr(
                xhr,
                f"q{query:03d}.jpg",
                page,
                [entity(f"q{query}p{page}e{i}", pos=page * 30 + i) for i in range(30)],
            )
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "XHR").symlink_to(xhr)
    assert import_xhr(reference).returncode == 0
    expected = counts(reference / "yandex_images.db")
    database = workdir / "yandex_images.db"

    proc = subprocess.Popen(
        [sys.executable, str(REPO / "2_XHRtoDB.py"), "--batch-files", "4"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ledger = 0
    while ledger == 0 and proc.poll() is None:  # kill as soon as a first batch is committed
        try:
            ledger = rows(database, "SELECT count(*) FROM xhr_files")[0][0]
        except sqlite3.Error:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    imported_before_kill = rows(database, "SELECT count(*) FROM xhr_files")[0][0]
    assert 0 < imported_before_kill < 400  # really interrupted mid-run

    done = import_xhr(workdir)

    assert done.returncode == 0, done.stderr
    assert counts(database) == expected
    assert rows(database, "SELECT count(*) FROM xhr_files") == [(400,)]


def test_hidden_files_such_as_the_crawl_progress_are_not_imported(workdir: Path) -> None:
    xhr = workdir / "XHR"
    write_xhr(xhr, "cat.jpg", 1, [entity("h1")])
    (xhr / ".progress.json").write_text('{"cat.jpg": {"status": "done"}}', encoding="utf-8")

    done = import_xhr(workdir)

    assert done.returncode == 0
    assert rows(workdir / "yandex_images.db", "SELECT path FROM xhr_files") == [
        ("cat.jpg_xhr_001.json",)
    ]
