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
from typing import Any

import psutil
import pytest

from tests.conftest import REPO, count_of, dump, rows, run_script
from tests.xhr_factory import entity, write_xhr, xhr_payload
from yandex_reverse import db, serp


def import_xhr(workdir: Path, *extra: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
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
    parsers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The parser processes end with it instead of waiting for work forever.
    _, left = psutil.wait_procs(parsers, timeout=120)
    assert not left, left
    imported_before_kill = rows(database, "SELECT count(*) FROM xhr_files")[0][0]
    assert 0 < imported_before_kill < 400  # really interrupted mid-run

    done = import_xhr(workdir)

    assert done.returncode == 0, done.stderr
    assert counts(database) == expected
    assert rows(database, "SELECT count(*) FROM xhr_files") == [(400,)]
    names = {r[0] for r in rows(database, "SELECT name FROM sqlite_master")}
    assert set(db.DEFERRED_INDEXES) <= names  # the interrupted bulk load was finished
    assert db.PENDING_VARIANTS not in names


def test_hidden_files_such_as_the_crawl_progress_are_not_imported(workdir: Path) -> None:
    xhr = workdir / "XHR"
    write_xhr(xhr, "cat.jpg", 1, [entity("h1")])
    (xhr / ".progress.json").write_text('{"cat.jpg": {"status": "done"}}', encoding="utf-8")

    done = import_xhr(workdir)

    assert done.returncode == 0
    assert rows(workdir / "yandex_images.db", "SELECT path FROM xhr_files") == [
        ("cat.jpg_xhr_001.json",)
    ]


# ------------------------------------------------ hostile input (issue 13, point 1)


def _with_raw_value(eid: str, field: str, raw: str) -> str:
    """A page of one good and one hostile result: ``field`` of ``eid`` set to ``raw`` JSON."""
    marker = "__RAW__"
    payload = xhr_payload([entity(f"{eid}ok"), entity(eid, **{field: marker})])
    return json.dumps(payload).replace(f'"{marker}"', raw)


def write_attacks(xhr: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Every attack of the issue; returns {file: file reason} and {file: result reason}."""
    xhr.mkdir(parents=True, exist_ok=True)
    results = {
        "u64.jpg_xhr_001.json": ("pos", str(2**64 + 5), "beyond 64 bits"),
        "i64.jpg_xhr_001.json": ("origWidth", str(2**63), "integer beyond 64 bits"),
        "digits.jpg_xhr_001.json": ("origHeight", "7" * 5000, "beyond 64 bits"),
        # a lone surrogate in a URL still refuses its result (a title's is mended: see below)
        "urlsur.jpg_xhr_001.json": ("origUrl", '"https://e.com/a\\ud800.jpg"', "lone surrogate"),
    }
    for name, (field, raw, _) in results.items():
        (xhr / name).write_text(_with_raw_value(name[:3], field, raw), encoding="utf-8")
    depth = 200_000
    (xhr / "deep.jpg_xhr_001.json").write_text(
        '{"blocks": [' + "[" * depth + "]" * depth + "]}", encoding="utf-8"
    )
    bad_name = os.fsencode(xhr) + b"/bad\xff.jpg_xhr_001.json"
    with open(bad_name, "w", encoding="utf-8") as handle:
        json.dump(xhr_payload([entity("badname")]), handle)
    os.mkfifo(xhr / "fifo.jpg_xhr_001.json")
    (xhr / "zero.jpg_xhr_001.json").symlink_to("/dev/zero")
    (xhr / "loop.jpg_xhr_001.json").symlink_to("loop.jpg_xhr_001.json")
    with open(xhr / "huge.jpg_xhr_001.json", "wb") as handle:  # sparse: no disk used
        handle.truncate(65 * 2**20)
    files = {
        "deep.jpg_xhr_001.json": "nested too deeply",
        "bad\\xff.jpg_xhr_001.json": "file name is not valid UTF-8",
        "fifo.jpg_xhr_001.json": "not a regular file (a FIFO)",
        "zero.jpg_xhr_001.json": "not a regular file (a character device)",
        "huge.jpg_xhr_001.json": "larger than 64 MiB",
        "loop.jpg_xhr_001.json": "unreadable",
    }
    return files, {name: reason for name, (_, _, reason) in results.items()}


def test_hostile_files_and_values_are_reasons_and_the_rest_is_imported(workdir: Path) -> None:
    xhr = workdir / "XHR"
    write_xhr(xhr, "good.jpg", 1, [entity("g1"), entity("g2")])
    bad_files, bad_results = write_attacks(xhr)

    done = run_script("2_XHRtoDB.py", cwd=workdir, timeout=120)

    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "Traceback" not in out and "Critical error" not in out
    database = workdir / "yandex_images.db"
    imported = {r[0] for r in rows(database, "SELECT id FROM images")}
    # The good file, and the good result next to each hostile one.
    assert imported == {"g1", "g2"} | {f"{name[:3]}ok" for name in bad_results}
    ledger = {r[0]: r[1:] for r in rows(database, "SELECT path, status, error FROM xhr_files")}
    for name, reason in bad_files.items():
        assert ledger[name][0] == "failed", (name, ledger.get(name))
        assert reason in ledger[name][1], (name, ledger[name])
    for name, reason in bad_results.items():
        assert ledger[name][0] == "imported"
        assert "1 skipped" in ledger[name][1] and reason in ledger[name][1], ledger[name]
    assert count_of(done.stdout, "files failed") == len(bad_files)
    assert count_of(done.stdout, "results skipped (malformed)") == len(bad_results)
    assert count_of(done.stdout, "files imported") == 1 + len(bad_results)
    dump_before = dump(database)

    again = run_script("2_XHRtoDB.py", cwd=workdir, timeout=120)

    assert again.returncode == 0, again.stdout + again.stderr
    assert "Traceback" not in again.stdout + again.stderr
    assert dump(database) == dump_before  # a re-run changes nothing
    every = 1 + len(bad_files) + len(bad_results)
    assert count_of(again.stdout, "files skipped (unchanged)") == every
    assert count_of(again.stdout, "of them failed before") == len(bad_files)


def test_text_cut_in_the_middle_of_an_emoji_is_kept_mended_and_counted(workdir: Path) -> None:
    """A lone surrogate (a title cut halfway through an emoji, ordinary on the live site) in a
    text field: the result is kept, the half character replaced by U+FFFD, and counted."""
    xhr = workdir / "XHR"
    half = "\ud83d"  # the first half of 😀
    cut = entity("cut1", title=f"Кот {half}", domain=f"vk{half}.com", alt=f"кот {half}")
    cut["snippet"]["url"] = "https://vk.com/wall-1_0"  # (a URL with one is still refused)
    cut["snippet"]["text"] = f"описание {half}"
    (xhr / "cut.jpg_xhr_001.json").parent.mkdir(parents=True)
    (xhr / "cut.jpg_xhr_001.json").write_text(
        serp.dumps(xhr_payload([cut, entity("whole1")])), encoding="utf-8"
    )
    sites = [
        serp.site(
            "https://a.example/p", f"Сайт {half}", description=f"текст {half}", domain="a.example"
        )
    ]
    (xhr / "cut.jpg_sites_000.json").write_text(
        serp.dumps(serp.data_state("/images/search?cbir_page=sites", None, sites=sites)),
        encoding="utf-8",
    )

    done = import_xhr(workdir)

    assert done.returncode == 0, done.stdout + done.stderr
    database = workdir / "yandex_images.db"
    title, domain, alt, text = rows(
        database, "SELECT title, domain, alt, snippet_text FROM images WHERE id = 'cut1'"
    )[0]
    assert (title, domain, alt, text) == (
        "Кот \ufffd",
        "vk\ufffd.com",
        "кот \ufffd",
        "описание \ufffd",
    )
    assert {r[0] for r in rows(database, "SELECT image_id FROM query_results")} == {
        "cut1",
        "whole1",
    }
    assert rows(database, "SELECT title, description FROM query_sites") == [
        ("Сайт \ufffd", "текст \ufffd")
    ]
    ledger = dict(rows(database, "SELECT path, error FROM xhr_files"))
    assert ledger["cut.jpg_xhr_001.json"] == f"1 kept: {serp.MENDED_TEXT}"
    assert ledger["cut.jpg_sites_000.json"] == f"1 kept: {serp.MENDED_TEXT}"
    assert count_of(done.stdout, "results skipped (malformed)") == 0
    assert serp.MENDED_TEXT in done.stdout  # the reason, in the summary's table
    dump_before = dump(database)

    again = import_xhr(workdir, "--lang", "ru")

    assert again.returncode == 0 and dump(database) == dump_before
    russian = import_xhr(workdir, "--lang", "ru", "--db", "ru.db")  # the reason in Russian
    assert "текст обрезан посреди символа" in russian.stdout, russian.stdout


def test_a_batch_sqlite_refuses_is_written_file_by_file(workdir: Path) -> None:
    database = workdir / "yandex_images.db"
    db.connect(database).close()
    conn = sqlite3.connect(database)  # whatever SQLite refuses, here a trigger
    conn.execute(
        "CREATE TRIGGER poison BEFORE INSERT ON images WHEN NEW.id = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
    )
    conn.close()
    xhr = workdir / "XHR"
    write_xhr(xhr, "a.jpg", 1, [entity("a1"), entity("a2")])
    write_xhr(xhr, "b.jpg", 1, [entity("b1"), entity("poison")])
    write_xhr(xhr, "c.jpg", 1, [entity("c1")])

    done = import_xhr(workdir)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert sorted(rows(database, "SELECT id FROM images")) == [("a1",), ("a2",), ("c1",)]
    ledger = dict(rows(database, "SELECT path, error FROM xhr_files WHERE status = 'failed'"))
    assert list(ledger) == ["b.jpg_xhr_001.json"]
    assert "cannot be stored" in ledger["b.jpg_xhr_001.json"]
    assert "poisoned row" in ledger["b.jpg_xhr_001.json"]
    assert count_of(done.stdout, "files failed") == 1
    assert counts(database) == (3, 9, 3)
    before = dump(database)
    assert import_xhr(workdir).returncode == 0
    assert dump(database) == before


def test_first_import_in_bulk_gives_the_rows_of_upserts(workdir: Path, tmp_path: Path) -> None:
    """An image met again in a later batch: its variants merge as upserts would merge them."""
    xhr = workdir / "XHR"
    for page in range(1, 6):
        shared = entity(
            "shared",
            pos=page,
            dups=[(f"https://d{page}.example/s.jpg", 100 * page, 80 * page)],
            **({"origWidth": None} if page % 2 else {}),
        )
        write_xhr(xhr, f"q{page}.jpg", page, [entity(f"own{page}", pos=page), shared])
    bulk = workdir / "yandex_images.db"
    assert import_xhr(workdir, "--batch-files", "1").returncode == 0

    upserted = tmp_path / "upserts.db"
    other = tmp_path / "other"
    write_xhr(other, "first.jpg", 1, [entity("someone")])
    for args in (("--xhr-dir", other), ("--xhr-dir", xhr)):  # not empty: no bulk load
        assert import_xhr(workdir, "--db", upserted, "--batch-files", "1", *args).returncode == 0

    def content(path: Path) -> list[tuple]:
        return rows(
            path,
            "SELECT image_id, variant_type, url, width, height, file_size_bytes "
            "FROM image_variants WHERE image_id != 'someone' ORDER BY 1, 2, 3",
        )

    assert content(bulk) == content(upserted)
    assert len([r for r in content(bulk) if r[0] == "shared"]) == 7  # preview, 5 dups, thumb
    assert rows(bulk, "SELECT origWidth FROM images WHERE id = 'shared'") == [(1280,)]
    names = {r[0] for r in rows(bulk, "SELECT name FROM sqlite_master")}
    assert set(db.DEFERRED_INDEXES) <= names and db.PENDING_VARIANTS not in names


# ------------------------------------------------ the sites tab and search by URL (issue 12.5)


def write_sites(xhr: Path, query: str, sites: list[dict], *, legacy: bool = False) -> Path:
    xhr.mkdir(parents=True, exist_ok=True)
    state = (
        serp.legacy_sites_state(sites)
        if legacy
        else serp.data_state("/images/search?cbir_page=sites&rpt=imageview", None, sites=sites)
    )
    path = xhr / serp.saved_name(query, 0, serp.KIND_SITES)
    path.write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
    return path


CAT_SITES = [
    serp.site(
        "https://vk.com/wall-1_2",
        "Рыжий <b>кот</b>",
        domain="vk.com",
        description="Фото &laquo;кот&raquo;",
        thumb="//avatars.mds.yandex.net/i?id=s1",
        width="1280",
        height=960,
    ),
    serp.site("https://blog.example.org/cats", "Cats", domain="blog.example.org"),
    {"title": "no url at all", "domain": "x.example"},  # skipped, with its reason
    serp.site("https://vk.com/wall-1_2", "the same page again", domain="vk.com"),
]


DOG_SITES = "dog.jpg_sites_000.json"


def test_sites_tab_is_imported_into_its_own_table(workdir: Path) -> None:
    xhr = workdir / "XHR"
    write_xhr(xhr, "cat.jpg", 0, [entity("c1")])
    sites_file = write_sites(xhr, "cat.jpg", CAT_SITES)
    write_sites(
        xhr, "dog.jpg", [{"url": "//ok.ru/dog", "title": "Dog", "thumb": {"url": "x"}}], legacy=True
    )

    done = import_xhr(workdir)

    assert done.returncode == 0, done.stdout + done.stderr
    database = workdir / "yandex_images.db"
    got = rows(
        database,
        "SELECT query, url, page, position, title, title_raw, domain, description, thumb_url, "
        "orig_width, orig_height, xhr_file FROM query_sites ORDER BY query, position",
    )
    assert got == [
        (
            "cat.jpg",
            "https://vk.com/wall-1_2",
            0,
            0,
            "Рыжий кот",
            "Рыжий <b>кот</b>",
            "vk.com",
            "Фото «кот»",
            "https://avatars.mds.yandex.net/i?id=s1",
            1280,
            960,
            "cat.jpg_sites_000.json",
        ),
        (
            "cat.jpg",
            "https://blog.example.org/cats",
            0,
            1,
            "Cats",
            "Cats",
            "blog.example.org",
            None,
            None,
            0,
            0,
            "cat.jpg_sites_000.json",
        ),
        ("dog.jpg", "https://ok.ru/dog", 0, 0, "Dog", "Dog", "ok.ru", *[None] * 4, DOG_SITES),
    ]
    assert counts(database) == (1, 3, 1)  # the sites are not results
    assert count_of(done.stdout, "sites tab pages imported") == 2
    assert count_of(done.stdout, "sites new") == 3
    assert count_of(done.stdout, "empty result pages") == 0
    error = rows(database, "SELECT error FROM xhr_files WHERE path = 'cat.jpg_sites_000.json'")
    assert "1 skipped: site without a usable URL" in error[0][0]
    before = dump(database)
    assert import_xhr(workdir).returncode == 0
    assert dump(database) == before

    write_sites(xhr, "cat.jpg", [*CAT_SITES, serp.site("https://new.example/p", "New", domain="")])
    os.utime(sites_file, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    assert import_xhr(workdir).returncode == 0
    assert rows(database, "SELECT count(*), count(DISTINCT url) FROM query_sites") == [(4, 4)]
    assert rows(database, "SELECT domain FROM query_sites WHERE url LIKE '%new.example%'") == [
        ("new.example",)  # no domain sent: the URL's host
    ]


def test_search_by_url_keeps_the_url_of_each_query(workdir: Path) -> None:
    xhr = workdir / "XHR"
    url = "https://example.org/photos/cat.jpg"
    name = serp.url_query_name(url)
    write_xhr(xhr, name, 0, [entity("u1")])
    write_sites(xhr, name, [serp.site("https://vk.com/wall-9_9", "VK", domain="vk.com")])
    (xhr / serp.URL_QUERIES_FILE).write_text(
        json.dumps({"version": 1, "queries": {name: url}}), encoding="utf-8"
    )

    done = import_xhr(workdir)

    assert done.returncode == 0, done.stdout + done.stderr
    database = workdir / "yandex_images.db"
    assert rows(database, "SELECT query, image_url FROM query_sources") == [(name, url)]
    assert rows(database, "SELECT query, image_id FROM query_results") == [(name, "u1")]
    assert rows(database, "SELECT query FROM query_sites") == [(name,)]
    assert count_of(done.stdout, "searches by URL") == 1


def test_russian_summary_under_a_russian_locale(workdir: Path) -> None:
    write_xhr(workdir / "XHR", "cat.jpg", 1, [entity("r1")])
    (workdir / "XHR" / "broken.jpg_xhr_001.json").write_text("{", encoding="utf-8")

    done = run_script("2_XHRtoDB.py", cwd=workdir, env={"LANG": "ru_RU.UTF-8", "LC_ALL": ""})

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Импорт XHR" in done.stdout and "файлов импортировано" in done.stdout
    assert "Файлы с ошибкой" in done.stdout and "Причины" in done.stdout
    assert "files imported" not in done.stdout


def test_a_second_import_into_the_same_db_stops_with_one_line(workdir: Path) -> None:
    import fcntl

    write_xhr(workdir / "XHR", "cat.jpg", 1, [entity("l1")])
    with open(workdir / "yandex_images.db.import.lock", "a") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)  # a first run, still importing
        done = import_xhr(workdir)
    assert done.returncode == 1
    assert "another 2_XHRtoDB.py is importing into yandex_images.db" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert import_xhr(workdir).returncode == 0  # once it is gone
    assert rows(workdir / "yandex_images.db", "SELECT id FROM images") == [("l1",)]


def test_db_in_a_missing_folder_is_one_line(workdir: Path) -> None:
    write_xhr(workdir / "XHR", "cat.jpg", 1, [entity("m1")])
    done = import_xhr(workdir, "--db", workdir / "nowhere" / "x.db")
    assert done.returncode == 1
    assert "cannot write next to the database" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "Critical error" not in done.stderr


def test_duplicate_variants_without_their_index_are_archived_not_fatal(workdir: Path) -> None:
    """A DB holding variants (no images) and no unique index: no bulk load, and no crash."""
    database = workdir / "yandex_images.db"
    db.connect(database).close()
    conn = sqlite3.connect(database)
    conn.execute("DROP INDEX image_variants_unique")  # as the original scripts had it
    thumb = entity("o1")["viewerData"]["thumb"]["url"].replace("//", "https://", 1)
    for _ in range(2):  # variants of an image the DB does not hold, twice
        conn.execute(
            "INSERT INTO image_variants (image_id, variant_type, url) VALUES ('o1', 'thumb', ?)",
            (thumb,),
        )
    conn.commit()
    conn.close()
    write_xhr(workdir / "XHR", "cat.jpg", 1, [entity("o1")])

    done = import_xhr(workdir)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Critical error" not in done.stderr
    assert rows(database, "SELECT id FROM images") == [("o1",)]
    thumbs = "SELECT count(*) FROM image_variants WHERE image_id = 'o1' AND variant_type = 'thumb'"
    assert rows(database, thumbs) == [(1,)]
    assert rows(database, "SELECT count(*) FROM image_variants_archive") == [(1,)]  # kept
    assert import_xhr(workdir).returncode == 0


def test_cached_normalisers_answer_as_the_plain_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each distinct string is normalised once; a hit answers what the plain function does."""
    from yandex_reverse import xhr_import
    from yandex_reverse.urls import normalize_url

    monkeypatch.setattr(xhr_import, "_CACHE_MAX", 8)  # full caches are emptied, not grown
    values = [None, "", "  ", 7, 2**70, True, 1.5, float("nan"), [], {}, "12", " 12 ", "1e3"]
    values += ["inf", "9" * 30, "//host/x", " https://a.b/c ", "javascript:x", "https://a b/c"]
    values += ["<b>x</b> &amp; y", "plain", "a\ud800b", "HTTP://A.B:80/x?q=1"]
    # the quick URL checks (a clean URL, a protocol-relative one) against normalize_url
    values += ["//a.b/c d", "// a.b/c", "//a.b/c ", "//a.b:123456/x", "//a_b/c", "///x", "//"]
    values += ["https://a.b/c\u00a0", "https://a.b/\u2028", "httpſ://a.b/", "https://K.b/"]
    values += ["https://a.b:1/", "https://a.b:/", "https://a.b#f", "https://a.b?q", "https://a.b"]
    values += ["https://a.b/c\u200b", "https://a.b/\x00", "https://a.b/\x1f", "https://١.b/"]

    def answer(fn: Any, value: Any) -> tuple[str, Any]:
        try:
            answered = fn(value)
        except xhr_import.BadValue as exc:
            return "bad", str(exc)
        # the rows hold NULL (a NaN SQLite binds as NULL) where the plain functions say None
        return "ok", None if answered is xhr_import.NULL else answered

    pairs = [
        (xhr_import._url, normalize_url),
        (xhr_import._plain, xhr_import.plain_text),
        (xhr_import._int, xhr_import.to_int),
        (xhr_import._text, xhr_import.to_text),
        (xhr_import._bool, xhr_import.to_bool),
    ]
    for _ in range(3):  # misses, then hits (and evictions)
        for value in values:
            for fast, plain in pairs:
                assert repr(answer(fast, value)) == repr(answer(plain, value)), (fast, value)
    for cache in (xhr_import._url_cache, xhr_import._plain_cache, xhr_import._int_cache):
        assert 0 < len(cache) <= 8


def test_a_url_sent_several_times_is_normalised_as_once() -> None:
    """origUrl, img_href, a preview's, a dup's and a thumb's URL the same value (as Yandex
    sends them): every column holds what normalize_url makes of it (SAME, the writer's
    origUrl, where that is origUrl), rows hold no None, a variant without a usable URL is
    dropped."""
    from yandex_reverse import xhr_import
    from yandex_reverse.urls import normalize_url

    cols, SAME = xhr_import.ROW_IMAGE_COLUMNS, xhr_import.SAME
    odd = ["https://a.b/c", "//a.b/c", " https://a.b/c ", "//a.b/c d", "javascript:x", "", 7]
    odd += ["HTTP://A.B:80/x", "https://a.b/c\u00a0", "httpſ://a.b/", "//", None, "https://ü.b/"]
    for value in odd:
        item = {"url": value, "w": 10, "h": 20}
        thumb = {"url": value, "size": {"width": 3, "height": "4"}}
        viewer = {"img_href": value, "preview": [item], "dups": [dict(item)], "thumb": thumb}
        got, variants = xhr_import.entity_rows(
            "k", {"id": "e", "origUrl": value, "image": value, "viewerData": viewer}
        )
        url = normalize_url(value)
        expect = xhr_import.NULL if url is None else url
        assert got[cols.index("origUrl")] is expect or got[cols.index("origUrl")] == expect
        assert got[cols.index("image_url")] is expect or got[cols.index("image_url")] == expect
        for name in ("img_href", "best_url"):
            assert got[cols.index(name)] is (xhr_import.NULL if url is None else SAME), name
        kinds = [(v[0], v[1]) for v in variants]
        rows = [(xhr_import.PREVIEW, SAME), (xhr_import.DUPS, SAME), (xhr_import.THUMB, url)]
        assert kinds == ([] if url is None else rows)
        assert None not in got and all(None not in v for v in variants)


KILL_HOOK = """
import os, signal
from yandex_reverse import xhr_import

_write = xhr_import.Writer._write
_calls = [0]


def _killing(self, chunk, index):
    _calls[0] += 1
    last = _calls[0] == int(os.environ["YR_TEST_KILL_AFTER"])
    if last and os.environ.get("YR_TEST_SPILL"):  # the copy overflows the page cache
        self.conn.execute("PRAGMA cache_size = 10")  # and writes pages into the DB file
    _write(self, chunk, index)  # the chunk attached and copied, its transaction still open
    if last:
        with open(os.environ["YR_TEST_MODE"], "w") as out:
            out.write(self.conn.execute("PRAGMA journal_mode").fetchone()[0])
        os.kill(os.getpid(), signal.SIGKILL)


xhr_import.Writer._write = _killing
"""


def _content(path: Path) -> dict[str, list[tuple]]:
    return {
        "images": sorted(rows(path, "SELECT * FROM images")),
        "variants": sorted(
            rows(path, "SELECT image_id, variant_type, url, width, height FROM image_variants")
        ),
        "links": sorted(rows(path, "SELECT * FROM query_results")),
        "ledger": sorted(rows(path, "SELECT path, sha256, entities, status FROM xhr_files")),
    }


def _reference_and_kill_hook(
    xhr: Path, tmp_path: Path, kill_after: int
) -> tuple[dict[str, list[tuple]], dict[str, str]]:
    """The rows of one clean run of ``xhr`` (--batch-files 40), and the environment that
    makes step 2 kill itself (:data:`KILL_HOOK`) inside its ``kill_after``-th hand-over."""
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "XHR").symlink_to(xhr)
    assert import_xhr(reference, "--batch-files", "40").returncode == 0
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK, encoding="utf-8")
    env = {
        "PYTHONPATH": f"{hook}{os.pathsep}{REPO}",
        "YR_TEST_KILL_AFTER": str(kill_after),
        "YR_TEST_MODE": str(tmp_path / "mode"),
    }
    return _content(reference / "yandex_images.db"), env


@pytest.mark.parametrize(("kill_after", "committed"), [(1, 0), (2, 0), (3, 40)])
def test_a_kill_inside_the_handover_loses_and_doubles_nothing(
    workdir: Path, tmp_path: Path, kill_after: int, committed: int
) -> None:
    """Killed after a chunk's rows were copied from the hand-over database, before the
    batch's commit: nothing of that batch is in the DB; a re-run gives the rows of one run."""
    xhr = workdir / "XHR"
    for query in range(24):
        for page in range(1, 3):
            results = [entity(f"q{query}p{page}e{i}", pos=i) for i in range(6)]
            shared = entity("shared", pos=9, dups=[(f"https://d{query}.example/s.jpg", 10, 8)])
            write_xhr(xhr, f"q{query:02d}.jpg", page, [*results, shared])
    expected, env = _reference_and_kill_hook(xhr, tmp_path, kill_after)

    # 48 files, --batch-files 40: chunks of 20 files, the first transaction holds two.
    killed = run_script(
        "2_XHRtoDB.py", "--batch-files", "40", "--workers", "2", cwd=workdir, env=env
    )

    assert killed.returncode == -signal.SIGKILL
    # the bulk load writes with a rollback journal: the kill leaves it hot
    assert (tmp_path / "mode").read_text() == "delete"
    database = workdir / "yandex_images.db"
    assert rows(database, "SELECT count(*) FROM xhr_files") == [(committed,)]
    links = committed // 2 * 13  # per query: 6 + 6 results, "shared" once
    assert rows(database, "SELECT count(*) FROM query_results") == [(links,)]
    done = import_xhr(workdir, "--batch-files", "40")
    assert done.returncode == 0, done.stderr
    assert _content(database) == expected
    names = {r[0] for r in rows(database, "SELECT name FROM sqlite_master")}
    assert set(db.DEFERRED_INDEXES) <= names and db.PENDING_VARIANTS not in names
    assert rows(database, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize(("kill_after", "committed"), [(2, 0), (3, 40)])
def test_a_kill_out_of_wal_mode_with_pages_in_the_db_file_is_rolled_back(
    workdir: Path, tmp_path: Path, kill_after: int, committed: int
) -> None:
    """The first import writes with a rollback journal. Killed once its transaction has
    written pages into the DB file itself (a page cache too small for the batch): the next
    connect rolls the hot journal back, gets WAL back, and a re-run gives the rows of one run."""
    xhr = workdir / "XHR"
    for query in range(24):
        for page in range(1, 3):
            results = [entity(f"q{query}p{page}e{i}", pos=i) for i in range(40)]
            write_xhr(xhr, f"q{query:02d}.jpg", page, results)
    expected, env = _reference_and_kill_hook(xhr, tmp_path, kill_after)
    env["YR_TEST_SPILL"] = "1"
    database = workdir / "yandex_images.db"

    killed = run_script(
        "2_XHRtoDB.py", "--batch-files", "40", "--workers", "2", cwd=workdir, env=env
    )

    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "mode").read_text() == "delete"
    journal = Path(f"{database}-journal")
    assert journal.stat().st_size > 0  # hot: the DB file holds pages of the open batch
    size_killed = database.stat().st_size
    conn = db.connect(database)  # rolls the journal back, then WAL again
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        assert pages * conn.execute("PRAGMA page_size").fetchone()[0] < size_killed
        assert conn.execute("SELECT count(*) FROM xhr_files").fetchone() == (committed,)
        assert conn.execute("SELECT count(*) FROM query_results").fetchone() == (committed * 40,)
    finally:
        conn.close()
    assert not journal.exists()
    done = import_xhr(workdir, "--batch-files", "40")
    assert done.returncode == 0, done.stderr
    assert _content(database) == expected
    assert rows(database, "PRAGMA journal_mode") == [("wal",)]
    assert not journal.exists()


def _consistent(database: Path) -> None:
    """Opens whole and in WAL mode; each file of the ledger has all its links, no more."""
    conn = db.connect(database)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        ledger = conn.execute("SELECT count(*) FROM xhr_files").fetchone()[0]
        links = conn.execute("SELECT count(*) FROM query_results").fetchone()[0]
        queries = conn.execute("SELECT count(DISTINCT query) FROM query_results").fetchone()[0]
    finally:
        conn.close()
    assert links == ledger * 30 + queries  # 30 results a file, "shared" once a query


@pytest.fixture(scope="module")
def first_import(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    """400 files, their DB imported in one run, and how long that run took."""
    root = tmp_path_factory.mktemp("first_import")
    xhr = root / "XHR"
    for query in range(100):
        for page in range(1, 5):
            results = [entity(f"q{query}p{page}e{i}", pos=i) for i in range(30)]
            shared = entity("shared", pos=99, dups=[(f"https://d{query}.example/s.jpg", 10, 8)])
            write_xhr(xhr, f"q{query:03d}.jpg", page, [*results, shared])
    start = time.perf_counter()
    assert import_xhr(root, "--batch-files", "4").returncode == 0
    took = time.perf_counter() - start
    return xhr, _content(root / "yandex_images.db"), took


@pytest.mark.parametrize("at", [0.15, 0.4, 0.65, 0.85, 0.97])
def test_a_first_import_killed_at_any_moment_loses_and_doubles_nothing(
    workdir: Path, first_import: tuple[Path, dict, float], at: float
) -> None:
    """Killed at a moment spread over a first import (page-size change, bulk load with its
    rollback journal, index builds, back to WAL): the DB opens whole, in WAL mode, every
    ledger file with its links; the re-run gives the rows of one run."""
    xhr, expected, took = first_import
    (workdir / "XHR").symlink_to(xhr)
    database = workdir / "yandex_images.db"

    proc = subprocess.Popen(
        [sys.executable, str(REPO / "2_XHRtoDB.py"), "--batch-files", "4"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:  # (a slower run is killed earlier in its work: any moment will do)
        proc.wait(timeout=at * took)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    if database.exists():
        _consistent(database)
    done = import_xhr(workdir, "--batch-files", "4")
    assert done.returncode == 0, done.stderr
    assert _content(database) == expected
    _consistent(database)
    assert not Path(f"{database}-journal").exists()


def test_a_file_the_handover_database_refuses_fails_alone() -> None:
    """A row SQLite cannot bind in the parser fails its file with the reason, not the chunk."""
    import sqlite3 as sqlite

    from yandex_reverse import xhr_import

    good = xhr_import.ParsedFile("a.json", 1, 1, "x")
    bad = xhr_import.ParsedFile("b.json", 1, 1, "y")
    also = xhr_import.ParsedFile("c.json", 1, 1, "z")
    for parsed, eid in ((good, "a1"), (bad, "b1"), (also, "a1")):
        image, variants = xhr_import.entity_rows(eid, entity(eid))
        if parsed is bad:
            image = (*image[:-1], object())  # nothing SQLite can hold
        parsed.images, parsed.variants = [image], [variants]
        parsed.links = [("q", eid, 1, 0, parsed.relative)]

    chunk = xhr_import.pack([good, bad, also])

    assert (good.error, also.error) == (None, None)
    assert bad.error is not None and bad.error.startswith("cannot be stored")
    assert [f.n_images for f in chunk.files] == [1, 0, 1]
    assert chunk.rows is not None
    conn = sqlite.connect(":memory:")
    conn.deserialize(chunk.rows)
    # a1 twice in the chunk: only its first row is marked first
    assert conn.execute("SELECT file, first, id FROM h_images ORDER BY rowid").fetchall() == [
        (0, 1, "a1"),
        (2, 0, "a1"),
    ]
    # each image's variants by rowid range, those of the refused file gone
    spans = conn.execute("SELECT vfrom, vto FROM h_images ORDER BY rowid").fetchall()
    assert spans == [(1, 3), (4, 6)]
    assert conn.execute("SELECT count(*) FROM h_variants").fetchone() == (6,)

    # the next chunk of this process starts from an empty hand-over database
    alone = xhr_import.ParsedFile("d.json", 1, 1, "w")
    image, variants = xhr_import.entity_rows("d1", entity("d1"))
    alone.images, alone.variants = [image], [variants]
    alone.links = [("q", "d1", 1, 0, alone.relative)]
    again = xhr_import.pack([alone])
    assert alone.error is None and again.rows is not None
    conn.deserialize(again.rows)
    assert conn.execute("SELECT file, first, id FROM h_images").fetchall() == [(0, 1, "d1")]
    assert conn.execute("SELECT count(*) FROM h_variants").fetchone() == (3,)
    assert conn.execute("SELECT file, query FROM h_files").fetchall() == [(0, "q")]


def test_chunks_make_whole_batches() -> None:
    from yandex_reverse.xhr_import import PARSE_CHUNK, chunk_size

    for batch in (1, 4, 7, 40, 200, 203, 10_000):
        size = chunk_size(batch)
        assert 1 <= size <= PARSE_CHUNK and batch % size == 0
    assert chunk_size(200) == 20


def test_without_serialize_the_rows_travel_as_tuples_and_give_the_same_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.10 has no Connection.serialize(): the writer binds the rows itself."""
    from yandex_reverse import xhr_import

    xhr = tmp_path / "XHR"
    for page in range(1, 5):
        shared = entity("shared", pos=9, dups=[(f"https://d{page}.example/s.jpg", 10, 8)])
        write_xhr(xhr, f"q{page % 2}.jpg", page, [entity(f"p{page}e{i}") for i in range(3)])
        write_xhr(xhr, f"s{page}.jpg", page, [shared])
    results = {}
    for serialize in (True, False):
        monkeypatch.setattr(xhr_import, "SERIALIZE", serialize)
        database = tmp_path / f"{serialize}.db"
        for _ in range(2):  # the second run finds every file in the ledger
            xhr_import.import_folder(xhr, database, batch_files=3, workers=1)
        results[serialize] = _content(database)
    assert results[True] == results[False]
    assert len(results[True]["ledger"]) == 8 and len(results[True]["images"]) == 13


def test_xhr_files_names_each_file_relative_to_the_folder(tmp_path: Path) -> None:
    from yandex_reverse.xhr_import import xhr_files

    root = tmp_path / "XHR"
    for rel in ("a.json", "b.JSON", "sub/c.json", "sub/deep/d.json", ".hidden/e.json", "f.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("{}", encoding="utf-8")
    (root / ".g.json").write_text("{}", encoding="utf-8")

    for given in (root, Path(f"{root}{os.sep}")):
        found = list(xhr_files(given))
        assert [rel for _, rel in found] == ["a.json", "b.JSON", "sub/c.json", "sub/deep/d.json"]
        for path, rel in found:
            assert Path(path).relative_to(root).as_posix() == rel


def test_the_first_import_gives_the_db_larger_pages_and_a_reader_keeps_them(
    tmp_path: Path,
) -> None:
    """An empty DB gets 16 KiB pages before its bulk load (back in WAL mode); a DB another
    connection is reading keeps its pages and is imported all the same; rows as ever."""
    from yandex_reverse import xhr_import

    xhr = tmp_path / "XHR"
    write_xhr(xhr, "q.jpg", 1, [entity(f"e{i}", pos=i) for i in range(5)])
    fresh, held = tmp_path / "fresh.db", tmp_path / "held.db"
    xhr_import.import_folder(xhr, fresh, workers=1)
    db.connect(held).close()
    reader = sqlite3.connect(held)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM images").fetchone()  # a read transaction open
    try:
        xhr_import.import_folder(xhr, held, workers=1)
    finally:
        reader.close()
    default = sqlite3.connect(":memory:").execute("PRAGMA page_size").fetchone()[0]
    for path, size in ((fresh, xhr_import.BULK_PAGE_SIZE), (held, default)):
        assert rows(path, "PRAGMA page_size") == [(size,)]
        assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert _content(fresh) == _content(held)
    assert rows(fresh, "SELECT count(*) FROM images") == [(5,)]


def test_a_file_that_grows_while_it_is_read_is_read_to_its_end_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read is sized by the file opened; bytes added since are read on, up to the limit."""
    from yandex_reverse import xhr_import

    path = tmp_path / "a.json"
    path.write_bytes(b"a" * 10)
    fstat = os.fstat

    def growing(fd: int) -> os.stat_result:
        answer = fstat(fd)
        with open(path, "ab") as handle:  # 20 bytes more after the size was taken
            handle.write(b"b" * 20)
        return answer

    monkeypatch.setattr(os, "fstat", growing)
    assert xhr_import.read_regular(str(path), os.stat(path)) == b"a" * 10 + b"b" * 20
    monkeypatch.setattr(xhr_import, "MAX_FILE_BYTES", 40)
    with pytest.raises(xhr_import.BadFile, match="larger than"):
        xhr_import.read_regular(str(path), os.stat(path))  # 30 + 20 bytes: over 40


def test_urls_checked_together_answer_as_one_by_one() -> None:
    """origUrl, image and the snippet's URL are checked by one regex: each column still
    holds what normalize_url makes of its own value, also where a value holds spaces
    that would split it into clean URLs."""
    from itertools import product

    from yandex_reverse import xhr_import
    from yandex_reverse.urls import normalize_url

    cols = xhr_import.ROW_IMAGE_COLUMNS
    odd = ["https://a.b/c", "//a.b/c", "https://a.b/c https://d.e/f", "", "//a.b/c d", 7]
    odd += ["https://a.b/c\nhttps://d.e/f", " https://a.b/c", "HTTP://A.B/x", "///x", None]
    for orig, image, link in product(odd, repeat=3):
        entity = {"id": "e", "origUrl": orig, "image": image, "snippet": {"url": link}}
        got, _variants = xhr_import.entity_rows("k", entity)
        for name, value in (("origUrl", orig), ("image_url", image)):
            url = normalize_url(value)
            assert got[cols.index(name)] == url or (
                got[cols.index(name)] is xhr_import.NULL and url is None
            ), (name, orig, image, link)
        expect = xhr_import._url_or_text(link) if link is not None else xhr_import.NULL
        snippet = got[cols.index("snippet_url")]
        assert snippet == expect or (snippet is expect is xhr_import.NULL), (orig, image, link)


def test_dups_urls_checked_together_answer_as_one_by_one(monkeypatch) -> None:
    """The dups' URLs are checked in the same regex as origUrl, image and the snippet's
    URL: every row is what the URLs checked one by one give, also where a dup's URL holds
    spaces that would split it into clean URLs, or is not ASCII."""
    from itertools import product

    from yandex_reverse import xhr_import

    odd = ["https://a.b/c", "//a.b/c", "https://a.b/c https://d.e/f", "", "https://ü.b/c", 7]
    odd += ["https://a.b/c\u00a0", "https://a.b/\x7f", " https://a.b/c", "HTTP://A.B/x", None]
    clean = ["https://a.b/c", "https://é.b/c"]
    cases = []
    for orig, dup1, dup2 in product(clean + odd[3:6], odd, odd):
        dups = [{"url": dup1, "w": 3}, {"url": dup2, "h": "4"}, "not an item", {"w": 1}]
        viewer = {"dups": dups, "preview": [{"url": orig}], "thumb": {"url": "//t.b/x"}}
        entity = {"id": "e", "origUrl": orig, "image": "//i.b/x", "viewerData": viewer}
        entity["snippet"] = {"url": "https://s.b/x"}
        cases.append(entity)
    together = [xhr_import.entity_rows("k", entity) for entity in cases]
    monkeypatch.setattr(xhr_import, "_fast_urls", lambda n, ascii: lambda text: None)
    monkeypatch.setattr(xhr_import, "_fast_urls3", lambda text: None)
    alone = [xhr_import.entity_rows("k", entity) for entity in cases]
    for got, expect, entity in zip(together, alone, cases, strict=True):
        assert repr(got) == repr(expect), entity  # repr: NULL (a NaN) equals nothing


def test_fast_url_patterns_take_what_the_plain_pattern_takes() -> None:
    """The possessive URL pattern matches exactly what the plain one does, and its ASCII
    form never more (its strings are then the plain pattern's too: normalize_url leaves
    them as they are)."""
    import random
    import re

    from yandex_reverse import xhr_import
    from yandex_reverse.urls import normalize_url

    plain = re.compile(r"https?://[a-zA-Z0-9.-]+(?::[0-9]{1,5})?(?:[/?#]\S*)?").fullmatch
    fast = re.compile(xhr_import._FAST_URL).fullmatch
    ascii_only = re.compile(xhr_import._ASCII_URL).fullmatch
    chars = "htps:/?#a.Z-09 \t\x1c\x7f\x00\u00a0\u2028é~%"
    rnd = random.Random(15)
    texts = ["https://a.b", "http://a.b:8080", "https://a.b:123456/", "https://a.b/:x", "https:/"]
    for _ in range(20_000):
        head = rnd.choice(["https://", "http://", "http:/", "htps://", ""])
        texts.append(head + "".join(rnd.choice(chars) for _ in range(rnd.randrange(12))))
    for text in texts:
        assert bool(fast(text)) == bool(plain(text)), text
        if ascii_only(text):
            assert plain(text) and normalize_url(text) == text, text
        elif text.isascii() and text.isprintable() and plain(text):
            raise AssertionError(f"printable ASCII left to the slow way: {text!r}")
