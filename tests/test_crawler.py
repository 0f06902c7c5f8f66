"""Step 1 end to end: the real script, a real headless Chromium, the Yandex imitation on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, run_script
from yandex_reverse.browser import BrowserNotFound, find_browser
from yandex_reverse.fake_yandex.results import image_key
from yandex_reverse.fake_yandex.site import FakeYandex, ServerThread

SCRIPT = "1_Parse_XHR_Async.py"
SMALL = {"first_page": 4, "per_page": 3, "pages": 2}

try:
    find_browser(headless=True)
    HAVE_BROWSER = True
except BrowserNotFound:
    HAVE_BROWSER = False


def browser(test):
    """A test that drives a real headless Chromium (skipped where none is installed)."""
    skip = pytest.mark.skipif(not HAVE_BROWSER, reason="no Chromium (make browser)")
    return pytest.mark.browser(skip(test))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(FakeYandex()) as thread:
        yield thread


@pytest.fixture
def fake(server: ServerThread) -> FakeYandex:
    server.fake.reset(settings=True)
    server.fake.configure(**SMALL)
    return server.fake


def photos(folder: Path, names: list[str]) -> list[Path]:
    """Small distinct pictures (their bytes seed the imitation's results)."""
    out = []
    for i, name in enumerate(names):
        path = folder / name
        Image.new("RGB", (40 + i, 30 + 2 * i), (30 * i % 255, 120, 200)).save(path)
        out.append(path)
    return out


def crawl(workdir: Path, server: ServerThread, *args: str, timeout: float = 90):
    return run_script(
        SCRIPT,
        "--base-url",
        server.base_url,
        "--timeout",
        "15",
        "--quiet-period",
        "1.5",
        *args,
        cwd=workdir,
        timeout=timeout,
    )


def progress(workdir: Path) -> dict:
    return json.loads((workdir / "XHR" / ".progress.json").read_text(encoding="utf-8"))["images"]


def records_of(workdir: Path, name: str) -> dict:
    return progress(workdir)[name]


def assert_saved_as_served(workdir: Path, fake: FakeYandex, photo: Path) -> None:
    """Every page the imitation served for ``photo`` is saved, parsed equal; nothing else."""
    served = fake.served[image_key(photo.read_bytes())]
    saved = sorted((workdir / "XHR").glob(f"{photo.name}_xhr_*.json"))
    assert [p.name for p in saved] == [
        f"{photo.name}_xhr_{n:03d}.json" for n in sorted(served.bodies)
    ]
    for page, body in served.bodies.items():
        path = workdir / "XHR" / f"{photo.name}_xhr_{page:03d}.json"
        assert json.loads(path.read_text(encoding="utf-8")) == json.loads(body)


@browser
def test_saves_every_page_the_site_served(workdir: Path, server: ServerThread, fake: FakeYandex):
    queries = photos(workdir, ["cat.jpg", "dog.png", "fox.webp"])
    (workdir / "notes.txt").write_text("not a photo")
    done = crawl(workdir, server, "--max-tabs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    for photo in queries:
        assert_saved_as_served(workdir, fake, photo)
        served = fake.served[image_key(photo.read_bytes())]
        assert sorted(served.pages) == [0, 1, 2]
        record = progress(workdir)[photo.name]
        assert record["status"] == "done"
        assert record["xhr_files"] == 3
        assert record["results"] == served.results == 4 + 3 + 3
    assert "done now" in done.stdout and "XHR files saved" in done.stdout


@browser
def test_step2_imports_what_the_site_served(workdir: Path, server: ServerThread, fake: FakeYandex):
    queries = photos(workdir, ["one.jpg", "two.jpg", "three.png"])
    fake.configure(pages=3, shared_fraction=0.5, overrides={"": {"end": "404"}})
    assert crawl(workdir, server, "--max-tabs", "3").returncode == 0
    imported = run_script("2_XHRtoDB.py", "--xhr-dir", "XHR", "--db", "y.db", cwd=workdir)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    served = {p.name: fake.served[image_key(p.read_bytes())] for p in queries}
    every_id = set().union(*(ids for s in served.values() for ids in s.pages.values()))
    with sqlite3.connect(workdir / "y.db") as conn:
        assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == len(every_id)
        per_query = dict(conn.execute("SELECT query, count(*) FROM query_results GROUP BY query"))
        files = conn.execute("SELECT count(*) FROM xhr_files WHERE status = 'imported'").fetchone()
    assert per_query == {name: s.results for name, s in served.items()}
    assert files[0] == sum(len(s.pages) for s in served.values()) == 3 * 4


@browser
def test_rerun_changes_nothing(workdir: Path, server: ServerThread, fake: FakeYandex):
    photos(workdir, ["a.jpg", "b.jpeg"])
    assert crawl(workdir, server).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in (workdir / "XHR").iterdir()}
    uploads = fake.upload_count
    again = crawl(workdir, server)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 to search, 2 already done" in again.stdout
    assert fake.upload_count == uploads
    after = {p.name: p.stat().st_mtime_ns for p in (workdir / "XHR").iterdir()}
    assert after == before


@browser
def test_replaced_photo_is_searched_again(workdir: Path, server: ServerThread, fake: FakeYandex):
    (photo,) = photos(workdir, ["same_name.jpg"])
    assert crawl(workdir, server).returncode == 0
    Image.new("RGB", (90, 70), (1, 2, 3)).save(photo)  # another picture under the same name
    again = crawl(workdir, server)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 to search, 0 already done" in again.stdout
    assert_saved_as_served(workdir, fake, photo)


@browser
def test_404_end_error_end_empty_and_broken_pages_end_cleanly(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    end404, enderr, odd, few = photos(workdir, ["end404.jpg", "enderr.jpg", "odd.jpg", "few.jpg"])
    fake.configure(
        upload_variant="B",
        extra_content=False,
        overrides={
            image_key(end404.read_bytes()): {"end": "404"},
            image_key(enderr.read_bytes()): {"end": "error", "pages": 1},
            image_key(odd.read_bytes()): {"pages": 3, "empty_pages": [1], "broken_json_page": 2},
            image_key(few.read_bytes()): {"pages": 0},  # one page, no "more" button at all
        },
    )
    done = crawl(workdir, server, "--max-tabs", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    for photo in (end404, enderr, odd, few):
        assert_saved_as_served(workdir, fake, photo)
    assert records_of(workdir, "few.jpg")["xhr_files"] == 1
    records = progress(workdir)
    assert records["end404.jpg"]["end"] == "404"
    assert fake.served[image_key(end404.read_bytes())].end == "404"
    assert records["enderr.jpg"]["end"] == "error"
    assert records["enderr.jpg"]["xhr_files"] == 2
    assert records["odd.jpg"]["pages"] == [0, 1, 2, 3]
    assert records["odd.jpg"]["bad_files"] == 1
    corrupt = workdir / "XHR" / "odd.jpg_xhr_002_CORRUPT_JSON.txt"
    assert corrupt.read_text(encoding="utf-8").startswith('{"blocks"')
    log = (workdir / "XHR" / "errors.log").read_text(encoding="utf-8")
    assert "File: odd.jpg" in log and "Stage: XHR p=2" in log and "JSONDecodeError" in log
    empty = json.loads((workdir / "XHR" / "odd.jpg_xhr_001.json").read_text(encoding="utf-8"))
    assert empty["blocks"][0]["params"]["adapterData"]["serpList"]["items"]["entities"] == {}


@browser
def test_captcha_on_one_photo_marks_it_and_others_finish(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    ok1, blocked, ok2, midway = photos(workdir, ["ok1.jpg", "blocked.jpg", "ok2.jpg", "midway.jpg"])
    fake.configure(
        overrides={
            image_key(blocked.read_bytes()): {"captcha": True},  # at the upload
            image_key(midway.read_bytes()): {"captcha_page": 2},  # a "more" XHR answers it
        }
    )
    run = crawl(workdir, server, "--max-tabs", "1", "--captcha-backoff", "0.1,0.2")
    assert run.returncode == 1
    records = progress(workdir)
    assert records["blocked.jpg"]["status"] == records["midway.jpg"]["status"] == "captcha"
    assert records["midway.jpg"]["stage"] == "load more"
    assert records["ok1.jpg"]["status"] == records["ok2.jpg"]["status"] == "done"
    assert "captcha blocked.jpg" in " ".join(run.stdout.split())
    assert not list((workdir / "XHR").glob("blocked.jpg_xhr_*"))

    fake.configure(overrides={})  # the block is lifted: a re-run finishes only that photo
    again = crawl(workdir, server, "--captcha-backoff", "0.1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert progress(workdir)["blocked.jpg"]["status"] == "done"
    assert progress(workdir)["midway.jpg"]["status"] == "done"
    assert_saved_as_served(workdir, fake, blocked)
    assert_saved_as_served(workdir, fake, midway)
    assert fake.served[image_key(ok1.read_bytes())].uploads == 1
    assert fake.served[image_key(ok2.read_bytes())].uploads == 1


@browser
def test_stops_after_captchas_in_a_row(workdir: Path, server: ServerThread, fake: FakeYandex):
    photos(workdir, ["p1.jpg", "p2.jpg", "p3.jpg", "p4.jpg"])
    fake.configure(captcha_next=1000)
    run = crawl(
        workdir, server, "--max-tabs", "1", "--max-captchas", "2", "--captcha-backoff", "0.1"
    )
    assert run.returncode == 1
    assert "2 captchas in a row" in " ".join(run.stderr.split())
    statuses = [r["status"] for r in progress(workdir).values()]
    assert statuses == ["captcha", "captcha"]
    assert "not started" in run.stdout


@browser
def test_killed_run_resumes(workdir: Path, server: ServerThread, fake: FakeYandex):
    queries = photos(workdir, ["k1.jpg", "k2.jpg", "k3.jpg", "k4.jpg"])
    fake.configure(latency=0.15)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / SCRIPT), "--base-url", server.base_url, "--max-tabs", "1"],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            path = workdir / "XHR" / ".progress.json"
            if path.exists() and any(r["status"] == "done" for r in progress(workdir).values()):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the first photo never finished")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the script, its driver and the browser
        proc.wait(10)
    first = {name for name, r in progress(workdir).items() if r["status"] == "done"}
    assert 1 <= len(first) < 4

    fake.configure(latency=0.0)
    again = crawl(workdir, server, "--max-tabs", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(first)} already done" in again.stdout
    for photo in queries:
        assert progress(workdir)[photo.name]["status"] == "done"
        assert_saved_as_served(workdir, fake, photo)
        if photo.name in first:
            assert fake.served[image_key(photo.read_bytes())].uploads == 1


@browser
def test_changed_markup_fails_clearly_and_selector_file_fixes_it(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    (photo,) = photos(workdir, ["moved.jpg"])
    fake.configure(renamed_similar_tab=True)
    failed = crawl(workdir, server, "--timeout", "2")
    assert failed.returncode == 1
    assert "failed moved.jpg (open similar)" in " ".join(failed.stdout.split())
    assert progress(workdir)["moved.jpg"]["status"] == "failed"
    assert "Stage: open similar" in (workdir / "XHR" / "errors.log").read_text(encoding="utf-8")

    custom = workdir / "my_selectors.json"
    custom.write_text(json.dumps({"similar_tab": "a[data-tab='similar']"}), encoding="utf-8")
    fixed = crawl(workdir, server, "--selectors", str(custom))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert progress(workdir)["moved.jpg"]["status"] == "done"
    assert_saved_as_served(workdir, fake, photo)


@browser
def test_refused_upload_is_reported_and_retried_next_run(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    (photo,) = photos(workdir, ["up.jpg"])
    fake.configure(upload_500_next=1)
    failed = crawl(workdir, server)
    assert failed.returncode == 1
    assert "Yandex refused the upload" in " ".join(failed.stdout.split())
    assert progress(workdir)["up.jpg"] == {**progress(workdir)["up.jpg"], "stage": "upload"}
    again = crawl(workdir, server)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_saved_as_served(workdir, fake, photo)


@browser
def test_hung_tab_is_given_up_and_marked_failed(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    photos(workdir, ["slow.jpg"])
    fake.configure(latency=1.0)
    run = crawl(workdir, server, "--tab-timeout", "2.5")
    assert run.returncode == 1
    assert "gave up after 2.5 s" in " ".join(run.stdout.split())
    assert progress(workdir)["slow.jpg"]["status"] == "failed"


def test_missing_browser_is_a_clear_error(workdir: Path):
    photos(workdir, ["x.jpg"])
    run = run_script(SCRIPT, "--browser", str(workdir / "no-such-chrome"), cwd=workdir)
    assert run.returncode == 1
    assert "browser not found" in run.stderr


def test_unknown_selector_key_is_a_usage_error(workdir: Path):
    photos(workdir, ["x.jpg"])
    bad = workdir / "sel.json"
    bad.write_text('{"similar_tabs": ".x"}', encoding="utf-8")
    run = run_script(SCRIPT, "--selectors", str(bad), cwd=workdir)
    assert run.returncode == 2
    assert "unknown keys similar_tabs" in run.stderr


def test_empty_folder_says_so(workdir: Path):
    run = run_script(SCRIPT, cwd=workdir)
    assert run.returncode == 0
    assert "No query photos" in run.stdout
