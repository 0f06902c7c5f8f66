"""Step 5 (`5_Download_async.py`) driven as a user runs it: DBs built by step 2 from
XHR files, downloads through the image web on 127.0.0.1 as an HTTP proxy."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.conftest import REPO, run_script
from tests.xhr_factory import entity, write_xhr
from yandex_reverse.download.checks import inspect_image
from yandex_reverse.download.fetch import parse_retry_after
from yandex_reverse.fake_yandex.image_web import ImageWebServer

NAME_SHAPE = (
    r"^[A-Za-z0-9-]+_(original|preview|dups|thumb)_\d+x\d+_[0-9a-f]{8}\.(jpg|png|webp|gif)$"
)

# fault -> (status, reason the ledger's error starts with, retryable, falls back to the dup)
FAULT_EXPECTATIONS: dict[str, tuple[str, str | None, int, bool]] = {
    "404": ("failed", "HTTP 404", 0, True),
    "410": ("failed", "HTTP 410", 0, True),
    "500once": ("done", None, 0, False),
    "429": ("done", None, 0, False),
    "429date": ("done", None, 0, False),
    "503": ("done", None, 0, False),
    "timeout": ("failed", "timeout", 1, False),
    "drip": ("failed", "timeout", 1, False),
    "reset": ("failed", "connection reset", 1, False),
    "truncated": ("failed", "truncated body", 1, False),
    "html200": ("failed", "not an image: HTML page", 0, True),
    "wrongtype": ("done", None, 0, False),
    "oversize": ("failed", "too large", 0, True),
    "redirect": ("done", None, 0, False),
    "redirectloop": ("failed", "too many redirects", 0, True),
}
TRANSIENT = {f for f, (_s, _r, retry, _fb) in FAULT_EXPECTATIONS.items() if retry}
FAST = ("--timeout", "3", "--retries", "1", "--max-bytes", "1000000")


@pytest.fixture(scope="module")
def web():
    with ImageWebServer() as server:
        yield server


def image_url(eid: str, *, host: str = "sun9-52.userapi.com", size=(640, 480), query: str = ""):
    w, h = size
    return f"http://{host}/impg/{eid}/{eid}.jpg?size={w}x{h}&quality=95&type=album{query}"


def result(eid: str, *, host: str = "sun9-52.userapi.com", query: str = "", size=(640, 480)):
    """A result as Yandex sends it: the original, one preview (= original) and one dup."""
    orig = image_url(eid, host=host, query=query, size=size)
    return entity(
        eid,
        orig_url=orig,
        orig_size=size,
        previews=[(orig, *size)],
        dups=[(f"http://i.pinimg.com/736x/ab/cd/{eid}.jpg", 736, 552)],
        thumb=(f"http://avatars.mds.yandex.net/i?id={eid}-thumb&n=13", 320, 240),
    )


def build_db(workdir: Path, entities: list[dict], db_name: str = "yandex_images.db") -> Path:
    """Write the XHR files and import them with the real step 2."""
    write_xhr(workdir / "XHR", "query.jpg", 1, entities)
    run_script("2_XHRtoDB.py", "--xhr-dir", "XHR", "--db", db_name, cwd=workdir, check=True)
    return workdir / db_name


def download(workdir: Path, web: ImageWebServer, *args: str) -> subprocess.CompletedProcess[str]:
    return run_script(
        "5_Download_async.py", "--proxy", web.proxy_url, *args, cwd=workdir, timeout=120
    )


def ledger(db_path: Path) -> dict[str, dict]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return {r["url"]: dict(r) for r in conn.execute("SELECT * FROM downloads")}
    finally:
        conn.close()


def images_on_disk(folder: Path) -> dict[str, str]:
    """name -> sha256 of every image file (sidecars, logs and locks left out)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.suffix in (".jpg", ".png", ".webp", ".gif")
    }


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".part")]


def hits(web: ImageWebServer, needle: str) -> int:
    return sum(n for url, n in web.hits.items() if needle in url)


def uid() -> str:
    return uuid.uuid4().hex[:6]


# ------------------------------------------------------------------ faults


@pytest.fixture(scope="module")
def faulty_run(web, tmp_path_factory):
    """One run over a result per fault (each on its own host) plus good ones."""
    workdir = tmp_path_factory.mktemp("faults")
    tag = uid()
    entities = [
        result(f"{tag}f{i}", host=f"sun9-{i}.userapi.com", query=f"&yr_fault={fault}")
        for i, fault in enumerate(FAULT_EXPECTATIONS)
    ]
    entities.append(
        result(
            f"{tag}wait", host="sun9-90.userapi.com", query="&yr_fault=429&yr_times=99&yr_retry=900"
        )
    )
    entities += [result(f"{tag}ok{i}", host="sun9-91.userapi.com") for i in range(3)]
    db_path = build_db(workdir, entities)
    done = download(workdir, web, *FAST)
    assert done.returncode == 0, done.stderr
    return workdir, db_path, tag, done


def test_every_fault_ends_with_its_status_and_reason(faulty_run):
    _workdir, db_path, tag, done = faulty_run
    rows = ledger(db_path)
    for i, (fault, (status, reason, retryable, _fb)) in enumerate(FAULT_EXPECTATIONS.items()):
        url = image_url(f"{tag}f{i}", host=f"sun9-{i}.userapi.com", query=f"&yr_fault={fault}")
        row = rows[url]
        assert row["status"] == status, (fault, row)
        assert row["retryable"] == retryable, (fault, row)
        if reason:
            assert row["error"].startswith(reason), (fault, row["error"])
            assert reason in done.stdout  # counted in the summary, by reason
        else:
            assert row["error"] is None and row["http_status"] == 200, (fault, row)
    assert (
        rows[image_url(f"{tag}f0", host="sun9-0.userapi.com", query="&yr_fault=404")]["http_status"]
        == 404
    )
    # A host asking for a 15-minute pause is not waited for: retryable, reason given.
    waited = rows[
        image_url(
            f"{tag}wait", host="sun9-90.userapi.com", query="&yr_fault=429&yr_times=99&yr_retry=900"
        )
    ]
    assert (waited["status"], waited["retryable"]) == ("failed", 1)
    assert waited["error"].startswith("host asks to wait")


def test_good_images_are_valid_files_named_by_content(faulty_run):
    workdir, db_path, _tag, _done = faulty_run
    out = workdir / "yandex_images"
    assert not temp_files(out)
    done_rows = [r for r in ledger(db_path).values() if r["status"] == "done"]
    assert done_rows
    for row in done_rows:
        path = workdir / row["path"]
        assert path.parent == out and path.is_file()
        assert re.match(NAME_SHAPE, path.name), path.name
        with Image.open(path) as im:
            im.load()
            assert (im.width, im.height) == (row["width"], row["height"])
            assert f"_{im.width}x{im.height}_" in path.name  # the size received, not the DB's
            assert path.suffix == {"JPEG": ".jpg", "PNG": ".png"}[im.format]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
        assert path.stat().st_size == row["bytes"]
        side = path.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
        keys = [line.split(": ", 1)[0] for line in side]
        assert keys == [
            "url", "origin_url", "image_id", "variant_type", "width", "height", "final_url",
            "query_photo", "source_page", "title",
        ]  # fmt: skip
        assert side[0] == f"url: {row['url']}"
        assert path.name.startswith(row["image_id"] + "_")
    # wrongtype: the extension and type come from the content, not the header
    wrong = next(r for r in done_rows if "yr_fault=wrongtype" in r["url"])
    assert wrong["content_type"] == "image/jpeg" and wrong["path"].endswith(".jpg")
    # redirect: the sidecar names the URL the image finally came from
    redirected = next(r for r in done_rows if "yr_fault=redirect" in r["url"])
    side = (workdir / redirected["path"]).with_suffix(".txt").read_text(encoding="utf-8")
    assert "final_url: http://sun9-" in side and "yr_fault" not in side.split("final_url:")[1]


def test_permanent_failure_falls_back_to_another_copy_transient_does_not(faulty_run):
    workdir, db_path, tag, _done = faulty_run
    rows = ledger(db_path)
    files = {p.name for p in (workdir / "yandex_images").iterdir()}
    for i, (fault, (status, _reason, _retry, falls_back)) in enumerate(FAULT_EXPECTATIONS.items()):
        eid = f"{tag}f{i}"
        dup_url = f"http://i.pinimg.com/736x/ab/cd/{eid}.jpg"
        if falls_back:
            assert rows[dup_url]["status"] == "done", fault
            assert any(n.startswith(f"{eid}_dups_736x552_") for n in files), fault
        else:
            assert dup_url not in rows, fault  # the best URL keeps its turn
        if status == "done":
            assert any(n.startswith(f"{eid}_original_640x480_") for n in files), fault
    # Thumbnails are never fetched in the default mode.
    assert not any("avatars.mds.yandex.net" in url for url in rows)


def test_rerun_downloads_nothing_and_retry_failed_retries_only_transient(faulty_run, web, tmp_path):
    src, _db, tag, _done = faulty_run
    workdir = tmp_path / "copy"
    shutil.copytree(src, workdir)
    db_path = workdir / "yandex_images.db"
    before_files = images_on_disk(workdir / "yandex_images")
    before_hits = sum(web.hits.values())

    again = download(workdir, web, *FAST)
    assert again.returncode == 0, again.stderr
    assert sum(web.hits.values()) == before_hits  # not one request
    assert images_on_disk(workdir / "yandex_images") == before_files
    assert "may succeed (--retry-failed)" in again.stdout

    counts = {f: hits(web, f"{tag}f{i}.jpg") for i, f in enumerate(FAULT_EXPECTATIONS)}
    retried = download(workdir, web, *FAST, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    for i, fault in enumerate(FAULT_EXPECTATIONS):
        asked = hits(web, f"{tag}f{i}.jpg") - counts[fault]
        assert (asked > 0) == (fault in TRANSIENT), fault
    rows = ledger(db_path)
    for fault in TRANSIENT:
        row = next(r for u, r in rows.items() if f"yr_fault={fault}" in u)
        assert row["attempts"] == 4  # two per run, counted across runs
    assert not temp_files(workdir / "yandex_images")


# ------------------------------------------------------------------ sharing and dedup


def test_same_url_fetched_once_and_same_content_stored_once(web, workdir):
    tag = uid()
    shared = result(f"{tag}s", host="sun9-20.userapi.com")
    shared_url = shared["origUrl"]
    twins = [
        entity(f"{tag}t{i}", orig_url=shared_url, previews=[(shared_url, 640, 480)], dups=[])
        for i in range(3)
    ]
    # Same picture name and size on two hosts: identical bytes.
    a = image_url(f"{tag}same", host="a.example-cdn.com")
    b = image_url(f"{tag}same", host="b.example-cdn.org")
    same = [
        entity(f"{tag}a", orig_url=a, previews=[(a, 640, 480)], dups=[]),
        entity(f"{tag}b", orig_url=b, previews=[(b, 640, 480)], dups=[]),
    ]
    db_path = build_db(workdir, [shared, *twins, *same])
    done = download(workdir, web, "--concurrency", "8")
    assert done.returncode == 0, done.stderr
    assert web.hits[shared_url] == 1
    rows = ledger(db_path)
    assert rows[a]["status"] == rows[b]["status"] == "done"
    assert rows[a]["path"] == rows[b]["path"]  # the second points at the first file
    files = images_on_disk(workdir / "yandex_images")
    assert len(files) == len(set(files.values())) == 2  # the shared URL's file and a's
    assert "same content as a file on disk" in done.stdout


# ------------------------------------------------------------------ limits, filters, modes


def test_limit_does_a_subset_and_the_next_run_goes_on(web, workdir):
    tag = uid()
    db_path = build_db(
        workdir, [result(f"{tag}{i}", host=f"sun9-{30 + i}.userapi.com") for i in range(5)]
    )
    first = download(workdir, web, "--limit", "2")
    assert first.returncode == 0, first.stderr
    assert len(images_on_disk(workdir / "yandex_images")) == 2
    said = " ".join(first.stdout.split())
    assert "0 pending; 3 results not tried yet" in said  # not "0 pending" alone
    download(workdir, web, "--limit", "2")
    assert len(images_on_disk(workdir / "yandex_images")) == 4
    download(workdir, web)
    assert len(images_on_disk(workdir / "yandex_images")) == 5
    assert {r["status"] for r in ledger(db_path).values()} == {"done"}


def test_min_side_skips_small_images_and_takes_a_larger_copy(web, workdir):
    tag = uid()
    small = result(f"{tag}small", host="sun9-40.userapi.com", size=(200, 150))
    db_path = build_db(workdir, [small])
    done = download(workdir, web, "--min-side", "300", "--min-bytes", "1000")
    assert done.returncode == 0, done.stderr
    rows = ledger(db_path)
    row = rows[small["origUrl"]]
    assert row["status"] == "skipped" and row["error"].startswith("smaller than --min-side 300")
    assert rows[f"http://i.pinimg.com/736x/ab/cd/{tag}small.jpg"]["status"] == "done"
    assert len(images_on_disk(workdir / "yandex_images")) == 1


def test_all_variants_downloads_every_copy(web, workdir):
    tag = uid()
    db_path = build_db(workdir, [result(f"{tag}v", host="sun9-41.userapi.com")])
    done = download(workdir, web, "--what", "all-variants")
    assert done.returncode == 0, done.stderr
    kinds = sorted(name.split("_")[1] for name in images_on_disk(workdir / "yandex_images"))
    assert kinds == ["dups", "original", "thumb"]  # the preview is the original's URL
    assert len(ledger(db_path)) == 3


# ------------------------------------------------------------------ interruption


def many_results(tag: str, n: int, *, hold_from: int | None = None) -> list[dict]:
    """``n`` results on four hosts; from ``hold_from`` on, the image web holds their
    answers until the test releases ``tag`` (no race against the clock)."""
    return [
        result(
            f"{tag}{i:02d}",
            host=f"sun9-{50 + i % 4}.userapi.com",
            query="&yr_delay=0.05"
            + (f"&yr_hold={tag}" if hold_from is not None and i >= hold_from else ""),
        )
        for i in range(n)
    ]


def comparable(db_path: Path) -> dict[str, tuple]:
    keys = ("status", "bytes", "content_type", "sha256", "http_status", "width", "height", "error")
    return {
        url: (*(r[k] for k in keys), Path(r["path"]).name if r["path"] else None)
        for url, r in ledger(db_path).items()
    }


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Poll until ``condition()``; FAIL (never fall through) when it does not come."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_interrupted_run_then_rerun_equals_an_uninterrupted_run(web, tmp_path, sig):
    tag = uid()
    # The first 5 results answer; the other 19 are held by the image web until the
    # signal has been sent, so the run is always cut mid-way, however busy the CPU.
    entities = many_results(tag, 24, hold_from=5)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir()
    cut.mkdir()
    whole_db, cut_db = build_db(whole, entities), build_db(cut, entities)
    # Room for every request at once: a held answer never blocks one that answers.
    limits = ("--concurrency", "30", "--per-host", "8")
    args = ("--proxy", web.proxy_url, *limits)

    proc = subprocess.Popen(
        [sys.executable, str(REPO / "5_Download_async.py"), *args],
        cwd=cut,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out = cut / "yandex_images"
    try:
        wait_for(lambda: out.is_dir() and len(images_on_disk(out)) >= 5, "5 files on disk")
        # The held results have been asked for (the run is inside its downloads).
        wait_for(lambda: hits(web, f"yr_hold={tag}") >= 1, "a held request")
        proc.send_signal(sig)
        proc.communicate(timeout=120)
    finally:
        web.release(tag)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert not temp_files(out)  # Ctrl-C cleans up after itself
    assert len(images_on_disk(out)) == 5, "the run was cut mid-way"

    assert download(whole, web, *limits).returncode == 0
    again = download(cut, web, *limits)
    assert again.returncode == 0, again.stderr
    assert not temp_files(out)
    assert images_on_disk(out) == images_on_disk(whole / "yandex_images")
    assert comparable(cut_db) == comparable(whole_db)
    assert {r["status"] for r in ledger(cut_db).values()} == {"done"}


def test_temp_files_left_by_a_crash_are_removed(web, workdir):
    tag = uid()
    build_db(workdir, [result(f"{tag}c", host="sun9-42.userapi.com")])
    out = workdir / "yandex_images"
    out.mkdir()
    (out / ".dl-0123456789abcdef-999.part").write_bytes(b"\xff\xd8half")
    keep = out / "someone_else.part"  # not ours: left alone
    keep.write_bytes(b"x")
    done = download(workdir, web)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in temp_files(out)] == [keep.name]
    assert "Removed 1 temporary file" in done.stdout


# ------------------------------------------------------------------ questions and errors


def test_without_a_terminal_the_default_db_is_yandex_images(web, workdir):
    tag = uid()
    build_db(workdir, [result(f"{tag}d", host="sun9-43.userapi.com")])
    done = download(workdir, web)  # no --db, stdin not a terminal
    assert done.returncode == 0, done.stderr
    assert len(images_on_disk(workdir / "yandex_images")) == 1


def test_vk_db_goes_to_its_own_folder(web, workdir):
    tag = uid()
    build_db(workdir, [result(f"{tag}k", host="sun9-44.userapi.com")], db_name="vk_images.db")
    done = download(workdir, web, "--db", "vk_images.db")
    assert done.returncode == 0, done.stderr
    assert len(images_on_disk(workdir / "vk_images")) == 1


def test_missing_db_is_a_clear_error(workdir):
    done = run_script("5_Download_async.py", "--db", "nope.db", cwd=workdir)
    assert done.returncode == 1
    assert "database not found: nope.db" in done.stderr
    assert not (workdir / "nope.db").exists() and not (workdir / "nope").exists()


def test_bad_flags_exit_2(workdir):
    (workdir / "yandex_images.db").touch()
    done = run_script("5_Download_async.py", "--concurrency", "0", cwd=workdir)
    assert done.returncode == 2 and "--concurrency" in done.stderr


def test_empty_db_reports_without_dividing_by_zero(web, workdir):
    build_db(workdir, [])
    done = download(workdir, web)
    assert done.returncode == 0, done.stderr
    assert "Download summary" in done.stdout and "0.0 files/s" in done.stdout


# ------------------------------------------------------------------ checks as functions


def test_retry_after_in_seconds_and_as_http_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_decompression_bomb_and_truncated_images_are_refused(tmp_path):
    import io
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    )
    with pytest.raises(Exception, match="decompression bomb"):
        inspect_image(bomb)
    good = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 10, 10)).save(good, "JPEG")
    assert inspect_image(good.getvalue()) == ("JPEG", 400, 300)
    with pytest.raises(Exception, match="broken image"):
        inspect_image(good.getvalue()[: len(good.getvalue()) // 2])


def test_on_a_terminal_it_asks_for_the_source_like_the_original(web, workdir):
    tag = uid()
    build_db(workdir, [result(f"{tag}y", host="sun9-45.userapi.com")])
    build_db(workdir, [result(f"{tag}q", host="sun9-46.userapi.com")], db_name="vk_images.db")
    primary, secondary = os.openpty()  # standard input is a terminal
    try:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "5_Download_async.py"), "--proxy", web.proxy_url],
            cwd=workdir,
            stdin=secondary,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        os.write(primary, b"7\n2\n\n")  # a wrong answer, vk_images.db, the default mode
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(primary)
        os.close(secondary)
    assert proc.returncode == 0, err
    assert "Choose image source" in out and "Invalid choice" in out
    assert len(images_on_disk(workdir / "vk_images")) == 1
    assert not (workdir / "yandex_images").exists()


# ------------------------------------------------------------------ attacks (#13)


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text and "never retrieved" not in text, text


def test_a_second_run_on_the_same_db_into_another_folder_stops_with_one_line(web, workdir):
    tag = uid()
    entities = many_results(tag, 6, hold_from=0)
    build_db(workdir, entities)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "5_Download_async.py"), "--proxy", web.proxy_url],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: hits(web, f"yr_hold={tag}") >= 1, "the first run's requests")
        second = download(workdir, web, "--out", "elsewhere")
    finally:
        web.release(tag)
        _first_out, first_err = proc.communicate(timeout=120)
    assert second.returncode == 1
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "another download is running from yandex_images.db" in lines[0]
    assert "yandex_images" in lines[0]  # names the folder the first run writes to
    no_traceback(second.stdout, second.stderr)
    assert not (workdir / "elsewhere").exists()  # nothing made for the refused run
    assert proc.returncode == 0, first_err
    assert len(images_on_disk(workdir / "yandex_images")) == 6


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped elsewhere): a disk that fills up mid-run."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace')}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_stops_with_one_line_and_a_rerun_finishes(web, workdir, small_disk):
    tag = uid()
    n = 30  # ~65 KB each: about twice what the disk holds
    build_db(
        workdir, [result(f"{tag}{i:02d}", host=f"sun9-{60 + i % 3}.userapi.com") for i in range(n)]
    )
    out = small_disk / "images"
    full = download(workdir, web, "--out", str(out))
    assert full.returncode == 1, full.stdout
    said = " ".join(full.stderr.split())  # one message (rich wraps it at the width)
    assert said.count("Error:") == 1 and said.startswith("Error: stopped: disk full"), said
    assert "free)" in said and "run the same command again" in said
    no_traceback(full.stdout, full.stderr)
    assert "Download summary" in full.stdout  # the figures of what was done
    assert not temp_files(out)
    kept = images_on_disk(out)
    assert kept and len(kept) < n
    rows = ledger(workdir / "yandex_images.db")
    for row in rows.values():  # what the ledger calls done is on disk, whole
        if row["status"] == "done":
            assert (workdir / row["path"]).is_file()

    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    again = download(workdir, web, "--out", str(out))
    assert again.returncode == 0, again.stderr
    no_traceback(again.stdout, again.stderr)
    files = images_on_disk(out)
    assert len(files) == n and len(set(files.values())) == n  # each picture once
    assert all(kept[name] == files[name] for name in kept)  # earlier files untouched
    rows = ledger(workdir / "yandex_images.db")
    assert sorted(Path(r["path"]).name for r in rows.values() if r["status"] == "done") == sorted(
        files
    )


def test_bombs_and_foreign_formats_never_reach_a_decoder_even_forty_at_once(web, workdir):
    tag = uid()
    bombs = [
        entity(
            f"{tag}b{i:02d}",
            orig_url=image_url(
                f"{tag}b{i:02d}", host=f"sun9-{i % 5}.bomb.ru", query="&yr_fault=bomb"
            ),
            previews=[],
            dups=[],
        )
        for i in range(40)
    ]
    eps = entity(
        f"{tag}eps",
        orig_url=image_url(f"{tag}eps", host="sun9-9.eps.ru", query="&yr_fault=eps"),
        previews=[],
        dups=[],
    )
    good = [result(f"{tag}g{i:02d}", host=f"sun9-{i % 5}.good.ru") for i in range(20)]
    db_path = build_db(workdir, [*bombs, eps, *good])
    done = download(workdir, web, "--concurrency", "40", "--per-host", "40")
    assert done.returncode == 0, done.stderr
    no_traceback(done.stdout, done.stderr)
    rows = ledger(db_path)
    for bomb in bombs:
        row = rows[bomb["origUrl"]]
        assert row["status"] == "failed" and row["error"].startswith(
            "refused: decompression bomb"
        ), row
    assert rows[eps["origUrl"]]["error"] == "not an image: unrecognised content"
    assert all(rows[g["origUrl"]]["status"] == "done" for g in good)
    files = images_on_disk(workdir / "yandex_images")
    assert len(files) == 20 and all(f"{tag}g" in name for name in files)
    assert "refused: decompression bomb" in done.stdout  # counted by reason


def secret_hits(web: ImageWebServer) -> int:
    return sum(n for url, n in web.hits.items() if urlsplit(url).path.endswith("/secret.jpg"))


def _resolves_to_loopback() -> str | None:
    """A DNS name (not ``localhost`` itself) that resolves to a loopback address here."""
    import socket

    for name in (socket.gethostname(), "localhost.localdomain", "ip6-localhost"):
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except OSError:
            continue
        if (
            name != "localhost"
            and infos
            and all(i[4][0].startswith("127.") or i[4][0] == "::1" for i in infos)
        ):
            return name
    return None


def test_result_urls_and_redirects_to_private_addresses_are_refused(web, workdir, tmp_path):
    tag = uid()
    port = web.port
    secret = f"/sun9-99.userapi.com/impg/{tag}/secret.jpg"  # what a loopback fetch would hit
    targets = {
        "literal": f"http://127.0.0.1:{port}{secret}?n=1",
        "decimal": f"http://2130706433:{port}{secret}?n=2",
        "octal": f"http://0177.0.0.1:{port}{secret}?n=3",
        "fullwidth": f"http://ｌｏｃａｌｈｏｓｔ:{port}{secret}?n=4",
        "ipv6": f"http://[::1]:{port}{secret}?n=5",
        "private": f"http://10.0.0.5{secret}?n=6",
        "linklocal": "http://169.254.169.254/latest/meta-data/x.jpg",
        "redirect": image_url(
            f"{tag}r", host="sun9-98.userapi.com",
            query=f"&yr_fault=redirectto&yr_to=http://127.0.0.1:{port}{secret}?n=7",
        ),
    }  # fmt: skip
    name = _resolves_to_loopback()
    if name:
        targets["dns"] = f"http://{name}:{port}{secret}?n=8"
    entities = [
        entity(f"{tag}{kind}", orig_url=url, previews=[], dups=[]) for kind, url in targets.items()
    ]
    entities.append(result(f"{tag}ok", host="sun9-97.userapi.com"))
    db_path = build_db(workdir, entities)
    done = download(workdir, web)
    assert done.returncode == 0, done.stderr
    no_traceback(done.stdout, done.stderr)
    rows = ledger(db_path)
    for kind, url in targets.items():
        stored_url = next(u for u in rows if u.endswith(url.rsplit("?", 1)[-1]) or u == url)
        row = rows[stored_url]
        assert row["status"] == "failed", (kind, row)
        assert row["error"].startswith("refused: private address"), (kind, row["error"])
        assert row["retryable"] == 0
    assert secret_hits(web) == 0  # not one request reached the loopback target
    assert rows[entities[-1]["origUrl"]]["status"] == "done"  # the rest of the run is intact
    assert "refused: private address" in done.stdout

    # The same DB with --allow-private (the user's own choice, e.g. a LAN mirror).
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    build_db(allowed, entities)
    ok = download(allowed, web, "--allow-private")
    assert ok.returncode == 0, ok.stderr
    rows = ledger(allowed / "yandex_images.db")
    assert rows[targets["literal"]]["status"] == "done"
    assert rows[targets["redirect"]]["status"] == "done"
    assert secret_hits(web) >= 2


def test_a_file_stored_but_not_recorded_is_adopted_or_removed_never_stored_twice(web, workdir):
    """kill -9 between the rename and the ledger write, made exact: the files stay,
    their ledger rows are rolled back to what such a kill leaves (pending or none)."""
    from yandex_reverse.download.store import file_name

    tag = uid()
    a = image_url(f"{tag}same", host="a.example-cdn.com")
    b = image_url(f"{tag}same", host="b.example-cdn.org")  # the same bytes as a
    entities = [
        result(f"{tag}p", host="sun9-71.userapi.com"),
        result(f"{tag}n", host="sun9-72.userapi.com"),
        result(f"{tag}k", host="sun9-73.userapi.com"),
        entity(f"{tag}a", orig_url=a, previews=[(a, 640, 480)], dups=[]),
        entity(f"{tag}b", orig_url=b, previews=[(b, 640, 480)], dups=[]),
    ]
    db_path = build_db(workdir, entities)
    first = download(workdir, web)
    assert first.returncode == 0, first.stderr
    out = workdir / "yandex_images"
    before_files, before_rows = images_on_disk(out), comparable(db_path)
    pending_url, none_url = entities[0]["origUrl"], entities[1]["origUrl"]
    # One of a, b stored the file, the other points at it. Had the kill come while
    # the other stored its own copy, that copy would be on disk under its name.
    rows = ledger(db_path)
    first, second = (a, b) if Path(rows[a]["path"]).name.startswith(f"{tag}a_") else (b, a)
    second_id = f"{tag}b" if second == b else f"{tag}a"
    b_name = file_name(second_id, "original", 640, 480, second, ".jpg")
    a_path = workdir / rows[first]["path"]
    shutil.copyfile(a_path, out / b_name)
    # A file with our name shape that no URL of this DB gives: not ours, left alone.
    stranger = out / "someone_original_640x480_0123abcd.jpg"
    shutil.copyfile(a_path, stranger)
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "UPDATE downloads SET status = 'pending', path = NULL, sha256 = NULL, bytes = NULL "
            "WHERE url = ?",
            (pending_url,),
        )
        conn.execute("DELETE FROM downloads WHERE url IN (?, ?)", (none_url, second))
    conn.close()
    requests = sum(web.hits.values())

    again = download(workdir, web)
    assert again.returncode == 0, again.stderr
    no_traceback(again.stdout, again.stderr)
    assert sum(web.hits.values()) == requests  # nothing fetched again
    assert "2 adopted" in again.stdout and "1 removed" in again.stdout
    assert "Left alone: 1 file" in again.stdout
    assert stranger.is_file()
    stranger.unlink()
    assert images_on_disk(out) == before_files  # each picture once, b's copy gone
    assert comparable(db_path) == before_rows
    assert not (out / b_name).exists() and not (out / b_name).with_suffix(".txt").exists()


def test_offline_says_so_at_once_and_hints_at_the_connection_and_proxy(workdir):
    import socket

    tag = uid()
    build_db(workdir, [result(f"{tag}{i:02d}", host=f"sun9-{i}.userapi.com") for i in range(12)])
    with socket.socket() as s:  # a port nobody listens on: the "proxy" is not there
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    done = run_script(
        "5_Download_async.py", "--proxy", dead, "--retries", "0", cwd=workdir, timeout=120
    )
    assert done.returncode == 0, done.stderr
    no_traceback(done.stdout, done.stderr)
    said = " ".join(done.stdout.split())
    assert said.count("No answer from the network yet") == 1
    assert said.count("network errors in a row") == 1
    assert f"the proxy {dead} answers" in said
    assert said.index("No answer from the network yet") < said.index("Download summary")


# ------------------------------------------------------------------ address lookups


def test_a_lost_dns_answer_is_asked_again_and_the_second_answer_is_checked(monkeypatch):
    """The system resolver waits 5 s before it asks again; the fetcher asks again itself
    and the answer it gets is checked like any other (a private address is refused)."""
    import asyncio
    import threading

    from yarl import URL

    from yandex_reverse.download import fetch

    lost = threading.Event()  # the first query's answer: never, until the test ends
    lock = threading.Lock()
    calls: list[str] = []

    def lookup(host: str, port: int) -> list[str] | None:
        with lock:
            calls.append(host)
            first = calls.count(host) == 1
        if first:
            lost.wait(60)
            return None
        return ["10.1.2.3"] if host.startswith("lan") else []

    monkeypatch.setattr(fetch, "_addresses", lookup)
    monkeypatch.setattr(fetch, "LOOKUP_AGAIN", 0.01)
    tag = uid()

    async def verdicts() -> tuple[str | None, str | None]:
        async with fetch.Fetcher(fetch.FetchOptions(), Path(".")) as fetcher:
            lan = await fetcher.refusal(URL(f"http://lan-{tag}.example/a.jpg"))
            public = await fetcher.refusal(URL(f"http://www-{tag}.example/a.jpg"))
            return lan, public

    try:
        lan, public = asyncio.run(verdicts())
        assert not lost.is_set()  # both answered while the first queries were still lost
    finally:
        lost.set()
    assert lan == f"lan-{tag}.example resolves to 10.1.2.3 (private)"
    assert public is None  # no such name here: passes, as before
    assert calls.count(f"lan-{tag}.example") == 2


def test_units_of_a_host_whose_lookup_hangs_hold_up_no_other_host(web, workdir, monkeypatch):
    """More units of a host whose DNS does not answer than the pool has slots come first:
    the other hosts' units are downloaded meanwhile (none of the waiting ones holds a
    slot of the pool or a connection), then the waiting host's, all in one run."""
    from yandex_reverse.console import run_main
    from yandex_reverse.download import fetch, main

    tag = uid()
    slow_host = f"slow-{tag}.userapi.com"
    slow = [
        entity(f"{tag}s{i}", orig_url=image_url(f"{tag}s{i}", host=slow_host), previews=[], dups=[])
        for i in range(70)  # more than the pool of units at work (64 at --concurrency 2)
    ]
    fast = [
        entity(
            f"{tag}f{i}", orig_url=image_url(f"{tag}f{i}", host=f"fast{i % 2}-{tag}.userapi.com"),
            previews=[], dups=[],
        )
        for i in range(5)
    ]  # fmt: skip
    db_path = build_db(workdir, slow + fast)
    seen_when_answered: list[int] = []

    def lookup(host: str, port: int) -> list[str] | None:
        if host == slow_host:  # answers once the other hosts' images are in (60 s at most)
            deadline = time.monotonic() + 60
            while hits(web, f"/{tag}f") < len(fast) and time.monotonic() < deadline:
                time.sleep(0.02)
            seen_when_answered.append(hits(web, f"/{tag}f"))
        return []

    monkeypatch.setattr(fetch, "_addresses", lookup)
    out = workdir / "yandex_images"
    argv = ["--db", str(db_path), "--out", str(out), "--proxy", web.proxy_url]
    assert run_main(main, [*argv, "--concurrency", "2"]) == 0
    assert seen_when_answered and seen_when_answered[0] == len(fast)
    rows = ledger(db_path)
    assert len(rows) == len(slow) + len(fast)
    assert {row["status"] for row in rows.values()} == {"done"}
    assert len(images_on_disk(out)) == len(slow) + len(fast)


def test_bodies_are_settled_in_batches_and_a_cancelled_download_is_not_settled(monkeypatch):
    import asyncio
    import threading

    from yandex_reverse.download.fetch import Candidate
    from yandex_reverse.download.run import Settler

    monkeypatch.setattr(Settler, "THREADS", 1)  # what comes while "a" is settled waits
    monkeypatch.setattr(Settler, "INLINE", False)  # the threads' way (see the next test)

    first_taken, go_on = threading.Event(), threading.Event()
    settled: list[str] = []

    def work(body, candidate: Candidate, image_id: str) -> str:
        if image_id == "a":
            first_taken.set()
            go_on.wait(60)
        if image_id == "bad":
            raise OSError(28, "No space left on device")
        settled.append(image_id)
        return f"outcome {image_id}"

    async def scenario() -> list[object]:
        settler = Settler(work)  # type: ignore[arg-type]
        try:
            futures = {"a": settler.submit(None, Candidate("u", "original"), "a")}  # type: ignore[arg-type]
            await asyncio.to_thread(first_taken.wait, 60)
            for name in ("b", "gone", "bad", "c"):  # queued while "a" is being settled
                futures[name] = settler.submit(None, Candidate("u", "original"), name)  # type: ignore[arg-type]
            futures["gone"].cancel()
            go_on.set()
            return await asyncio.gather(*futures.values(), return_exceptions=True)
        finally:
            go_on.set()
            settler.close()

    results = asyncio.run(scenario())
    assert results[0] == "outcome a" and results[1] == "outcome b" and results[4] == "outcome c"
    assert isinstance(results[2], asyncio.CancelledError)
    assert isinstance(results[3], OSError) and results[3].errno == 28
    assert sorted(settled) == ["a", "b", "c"]  # the cancelled one never reached the store


def test_bodies_are_settled_on_the_loop_until_settling_proves_slow_then_in_threads():
    import asyncio
    import threading
    import time as time_
    from types import SimpleNamespace

    from yandex_reverse.download.fetch import Candidate
    from yandex_reverse.download.run import Settler

    where: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()

    def work(body, candidate: Candidate, image_id: str) -> str:
        if image_id.startswith("slow"):
            time_.sleep(Settler.INLINE_SLOW * 4)  # a write that blocks
        if image_id == "bad":
            raise OSError(28, "No space left on device")
        where.append((image_id, threading.get_ident() == loop_thread))
        return f"outcome {image_id}"

    small = SimpleNamespace(temp=None, size=100_000)
    big = SimpleNamespace(temp=None, size=Settler.INLINE_MAX_BYTES + 1)  # always a thread's
    spilled = SimpleNamespace(temp="spilled.part", size=1000)  # a body in a temporary file

    async def scenario() -> tuple[list[object], list[object]]:
        settler = Settler(work)  # type: ignore[arg-type]
        try:
            first = [
                await settler.submit(small, Candidate("u", "original"), name)  # type: ignore[arg-type]
                for name in ("a", "b")
            ]
            for body, name in ((big, "big"), (spilled, "spilled")):
                first.append(await settler.submit(body, Candidate("u", "original"), name))  # type: ignore[arg-type]
            failed = settler.submit(small, Candidate("u", "original"), "bad")  # type: ignore[arg-type]
            first.append(await asyncio.gather(failed, return_exceptions=True))
            slow = [f"slow{i}" for i in range(Settler.INLINE_SLOW_TIMES)]
            for name in slow:
                first.append(await settler.submit(small, Candidate("u", "original"), name))  # type: ignore[arg-type]
            later = [
                await settler.submit(small, Candidate("u", "original"), name)  # type: ignore[arg-type]
                for name in ("c", "d")
            ]
            return first, later
        finally:
            settler.close()

    first, later = asyncio.run(scenario())
    assert first[:4] == ["outcome a", "outcome b", "outcome big", "outcome spilled"]
    bad = first[4][0]  # type: ignore[index]
    assert isinstance(bad, OSError) and bad.errno == 28  # handed to the waiting download
    assert later == ["outcome c", "outcome d"]
    on_loop = dict(where)
    assert (
        on_loop["a"]
        and on_loop["b"]
        and all(on_loop[name] for name in on_loop if name.startswith("slow"))
    )
    assert not on_loop["big"] and not on_loop["spilled"]  # large bodies: a thread's, always
    assert not on_loop["c"] and not on_loop["d"]  # once slow, the threads take over


def test_sidecar_lines_read_with_a_page_equal_those_asked_per_result(workdir):
    from yandex_reverse.download.ledger import LedgerReader, page_contexts

    tag = uid()
    entities = [result(f"{tag}{i}", host=f"sun9-{i}.userapi.com") for i in range(6)]
    write_xhr(workdir / "XHR", "zebra photo.jpg", 1, entities[:4])  # found by two photos
    db_path = build_db(workdir, entities)
    ids = {e["id"] for e in entities} | {f"{tag}missing"}
    reader = LedgerReader(db_path)
    conn = sqlite3.connect(db_path)
    try:
        assert page_contexts(conn, ids) == {i: reader.context(i) for i in ids}
        both = reader.context(entities[0]["id"])[0]
        assert both == ("query_photo", "query.jpg, zebra photo.jpg")
    finally:
        conn.close()
        reader.close()
