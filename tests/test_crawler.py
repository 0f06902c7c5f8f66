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
from glob import escape as glob_escape
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, run_script
from yandex_reverse import serp
from yandex_reverse.browser import BrowserNotFound, find_browser
from yandex_reverse.crawl.progress import PROGRESS_FILE, read_progress
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
    """Every query's record, the journal of a run under way included (read only)."""
    return read_progress(workdir / "XHR" / PROGRESS_FILE)[0]


def start_crawl_until_a_photo_is_done(
    workdir: Path, server: ServerThread, *, capture: bool
) -> subprocess.Popen[str]:
    """Step 1 in its own process group, one tab, returned once a photo is done.

    Fails (after killing the group) when no photo is done within 60 s.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, str(REPO / SCRIPT), "--base-url", server.base_url, "--max-tabs", "1"],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(r["status"] == "done" for r in progress(workdir).values()):
            return proc
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    pytest.fail("the first photo never finished")


def records_of(workdir: Path, name: str) -> dict:
    return progress(workdir)[name]


def pages_to_save(served) -> list[int]:
    """The pages step 1 must save: all served, but a first page without results (not a page)."""
    return [n for n in sorted(served.bodies) if n or served.pages.get(n)]


def assert_saved_as_served(workdir: Path, fake: FakeYandex, photo: Path) -> None:
    """Every page the imitation served for ``photo`` is saved, parsed equal; nothing else."""
    served = fake.served[image_key(photo.read_bytes())]
    saved = sorted((workdir / "XHR").glob(f"{glob_escape(photo.name)}_xhr_*.json"))
    assert [p.name for p in saved] == [
        f"{photo.name}_xhr_{n:03d}.json" for n in pages_to_save(served)
    ]
    for page in pages_to_save(served):
        body = served.bodies[page]
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
    proc = start_crawl_until_a_photo_is_done(workdir, server, capture=False)
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


# ----------------------------------------------------------------- live-page behaviours

BEHAVIOURS = {
    "scroll-loads before the button": {"scroll_loads": 2, "pages": 4},
    "a page taller than the window": {"first_page": 40, "per_page": 12, "scroll_loads": 2},
    "a late button": {"button_delay": 0.3, "scroll_loads": 0},
    "the button back slowly after each load": {"scroll_loads": 1, "button_delay": 0.3},
    "client-side similar route": {"client_route": True},
    "cookie popup at load": {"cookie_popup": "load"},
    "cookie popup late, and back after each load": {"cookie_popup": "again", "cookie_delay": 0.2},
    "end shown as a disabled button": {"end": "disabled"},
    "camera button needs hydration": {"hydration_delay": 1.0},
    "the button wants a real pointer": {"trusted_clicks": True, "pages": 3},
    "several data-states": {"data_states": 3},
    "keys give the order": {"keys_order": True},
    "endpoint B, cbirId reply, plain block names": {
        "upload_variant": "B",
        "plain_block_name": True,
    },
    "endpoint B, params.url reply": {"upload_variant": "B-url", "end": "404"},
    "all at once": {
        "scroll_loads": 2,
        "pages": 4,
        "button_delay": 0.2,
        "client_route": True,
        "cookie_popup": "again",
        "end": "disabled",
        "hydration_delay": 0.5,
        "keys_order": True,
        "upload_variant": "B",
        "plain_block_name": True,
    },
    # variations of the reference the cases above do not reach
    "infinite scroll, no button at all": {"scroll_loads": 99, "pages": 4, "first_page": 40},
    "the end is a page without results, not a 404": {"end": "empty"},
    "a page fails once and the page retries it": {"retry_pages": [1, 2]},
    "an answer slower than the quiet period": {"slow_pages": [2], "slow_delay": 2.5},
    "pages asked two at a time, answered out of order": {"fetch_batch": 2, "pages": 4},
    "every page asked twice": {"duplicate_fetches": True},
    "camera button: the desktop class only": {"camera_markup": "desktop"},
    "camera button: inline, opens on mousedown": {"camera_markup": "inline"},
    "camera button: legacy markup": {"camera_markup": "legacy"},
    "another file input before the panel's": {"decoy_file_input": True},
    "the more button without its usual class": {"more_markup": "plain", "scroll_loads": 0},
    "the grid scrolls in its own element": {
        "scroll_container": True,
        "scroll_loads": 2,
        "first_page": 40,
        "per_page": 12,
    },
    "titles cut in the middle of an emoji": {"lone_surrogates": True},
    "pages overlap": {"repeat_results": 2},
    "keys miss an entity and name a stale one": {"keys_order": True, "partial_keys": True},
    "Похожие by a link that redirects": {"similar_redirect": True},
    "no results at all": {"first_page": 0, "pages": 0},
    "client-side route ending in a 404": {"client_route": True, "end": "404"},
    "a dropped connection, retried by the page": {"drop_pages": [1]},
    "answers typed text/javascript": {"xhr_content_type": "text/javascript; charset=utf-8"},
    "serpList/fetchByFilters with rpt=imageview": {"xhr_variant": "filters"},
    "client-side route that keeps the URL": {"client_route": True, "route_keeps_url": True},
    # the ends still not modelled before (issue 12, robustness)
    "an error notice whose retry button loads the page": {
        "error_retry": True,
        "error_pages": [2],
        "error_times": 3,  # the page's script tries 3 times: one notice, one retry
    },
    "an error notice back after a retry, the second one loads": {
        "error_retry": True,
        "error_pages": [1],
        "error_times": 6,
        "pages": 3,
    },
    "an error notice that stays whatever is retried": {"error_retry": True, "end": "error"},
    "an error notice, the more button left to retry with": {"error_pages": [2], "error_times": 3},
    "empty pages for ever, the button staying": {"end": "endless", "scroll_loads": 0},
    "the more control is a link to a server-rendered next page": {"more_link": True, "pages": 3},
    "a link to the next page, several data-states": {"more_link": True, "data_states": 3},
    "the new ones at once": {
        "scroll_container": True,
        "scroll_loads": 1,
        "first_page": 40,
        "pages": 3,  # asked two at a time: (1, 2), (3, 4), and 4 is the empty end
        "fetch_batch": 2,
        "duplicate_fetches": True,
        "retry_pages": [3],
        "slow_pages": [1],
        "slow_delay": 2.0,
        "camera_markup": "inline",
        "decoy_file_input": True,
        "more_markup": "plain",
        "lone_surrogates": True,
        "repeat_results": 1,
        "end": "empty",
    },
}


def served_ids(fake: FakeYandex, key: str) -> set[str]:
    return set().union(*fake.served[key].pages.values())


def cut_title_ids(fake: FakeYandex, key: str) -> set[str]:
    """Results whose title ends in half an emoji (a lone surrogate): step 2 keeps them, the
    half character replaced by U+FFFD, and counts them with that reason."""
    out = set()
    for body in fake.served[key].bodies.values():
        for eid, entity in serp.find_entities(json.loads(body)).items():
            if any(0xD800 <= ord(c) <= 0xDFFF for c in entity.get("alt", "")):
                out.add(eid)
    return out


def imported_ids(db: Path, query: str) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT image_id FROM query_results WHERE query = ?", (query,))
        return {r[0] for r in rows}
    finally:
        conn.close()


@browser
@pytest.mark.parametrize("behaviour", list(BEHAVIOURS), ids=list(BEHAVIOURS))
def test_each_live_behaviour_ends_with_every_result_saved_once(
    workdir: Path, server: ServerThread, fake: FakeYandex, behaviour: str
):
    queries = photos(workdir, ["a.jpg", "b.png"])
    switches = BEHAVIOURS[behaviour]
    fake.configure(**switches)
    pages = switches.get("pages", SMALL["pages"])
    pages += 1 if switches.get("end") == "empty" else 0  # the page without results is served too
    end = {"404": "404", "error": "error"}.get(switches.get("end", ""), "quiet")
    # a generous quiet period where the page itself pauses (a late button)
    quiet = "4" if "button_delay" in switches else "1.5"
    done = crawl(workdir, server, "--max-tabs", "2", "--quiet-period", quiet)
    assert done.returncode == 0, done.stdout + done.stderr
    for photo in queries:
        key = image_key(photo.read_bytes())
        served = fake.served[key]
        if switches.get("end") == "endless":  # to a few empty pages past the end, not for ever
            assert pages + 1 + 3 <= len(served.pages) <= pages + 1 + 5, served.pages
            assert sorted(served.pages) == list(range(len(served.pages))), served.pages
        else:
            assert sorted(served.pages) == list(range(pages + 1)), served.pages  # to the end
        assert served.end == switches.get("end", "button")
        assert_saved_as_served(workdir, fake, photo)
        record = progress(workdir)[photo.name]
        assert record["status"] == "done", record
        assert record["pages"] == pages_to_save(served)
        assert record["end"] == end
        assert record["results"] == len(served_ids(fake, key))
    imported = run_script("2_XHRtoDB.py", "--xhr-dir", "XHR", "--db", "y.db", cwd=workdir)
    if not any(served_ids(fake, image_key(p.read_bytes())) for p in queries):
        assert imported.returncode == 1 and "no *.json files" in imported.stderr  # nothing found
        queries = []
    else:
        assert imported.returncode == 0, imported.stdout + imported.stderr
    cut = 0
    for photo in queries:
        key = image_key(photo.read_bytes())
        assert imported_ids(workdir / "y.db", photo.name) == served_ids(fake, key)  # nothing lost
        cut += len(cut_title_ids(fake, key))
    if cut:  # kept, mended and counted
        assert serp.MENDED_TEXT in imported.stdout, imported.stdout
        conn = sqlite3.connect(workdir / "y.db")
        mended = conn.execute("SELECT count(*) FROM images WHERE alt LIKE '%' || char(65533)")
        assert mended.fetchone()[0] > 0
        conn.close()
    uploads = fake.upload_count
    again = crawl(workdir, server)
    assert again.returncode == 0 and "0 to search, 2 already done" in again.stdout
    assert fake.upload_count == uploads


@browser
def test_order_of_keys_is_kept_in_saved_files(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    (photo,) = photos(workdir, ["k.jpg"])
    fake.configure(keys_order=True)
    assert crawl(workdir, server).returncode == 0
    for page, ids in fake.served[image_key(photo.read_bytes())].pages.items():
        data = json.loads((workdir / "XHR" / f"k.jpg_xhr_{page:03d}.json").read_text("utf-8"))
        assert list(serp.find_entities(data)) == ids


@browser
def test_too_large_upload_is_reencoded_and_the_original_kept(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    photo = workdir / "big.png"
    Image.frombytes("RGB", (160, 160), os.urandom(160 * 160 * 3)).save(photo)
    original = photo.read_bytes()
    fake.configure(max_upload_bytes=int(len(original) * 0.8))
    done = crawl(workdir, server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert photo.read_bytes() == original
    assert fake.served[image_key(original)].cbir_id is None  # answered 413
    (searched,) = [s for s in fake.served.values() if s.cbir_id]
    assert sorted(searched.pages) == [0, 1, 2]
    saved = sorted(p.name for p in (workdir / "XHR").glob("big.png_xhr_*.json"))
    assert saved == [f"big.png_xhr_{n:03d}.json" for n in sorted(searched.bodies)]
    assert progress(workdir)["big.png"]["status"] == "done"
    assert not [p for p in (workdir / "XHR").iterdir() if p.name.startswith(".upload-")]


@browser
def test_photo_over_the_5_mib_limit_is_sent_reencoded(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    photo = workdir / "huge.png"
    Image.frombytes("RGB", (1400, 1400), os.urandom(1400 * 1400 * 3)).save(photo)
    assert photo.stat().st_size > 5 * 1024 * 1024
    fake.configure(max_upload_bytes=5 * 1024 * 1024)
    done = crawl(workdir, server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert fake.upload_count == 1  # no 413 first: it was re-encoded before the upload
    (searched,) = fake.served.values()
    assert searched.cbir_id and sorted(searched.pages) == [0, 1, 2]


@browser
def test_files_that_are_not_images_are_not_uploaded(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    photos(workdir, ["good.jpg"])
    (workdir / "empty.jpg").write_bytes(b"")
    (workdir / "text.jpg").write_text("this is not a picture")
    done = crawl(workdir, server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert fake.upload_count == 1
    out = " ".join(done.stdout.split())
    assert "not an image empty.jpg (check photo): empty file (0 bytes)" in out
    assert "not an image text.jpg (check photo): not an image" in out
    assert progress(workdir)["text.jpg"]["status"] == "not an image"
    again = crawl(workdir, server)
    assert "0 to search, 3 already done" in again.stdout and fake.upload_count == 1


@browser
def test_under_construction_switches_to_yandex_ru_through_the_proxy(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    (photo,) = photos(workdir, ["uc.jpg"])
    fake.configure(under_construction=True)
    proxy = server.base_url.removesuffix("/images/")
    done = run_script(
        SCRIPT,
        "--base-url",
        "http://yandex.com/images/",
        "--proxy",
        proxy,
        "--quiet-period",
        "1.5",
        cwd=workdir,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = " ".join(done.stdout.split())
    assert out.count("under construction: using http://yandex.ru/images/") == 1
    assert_saved_as_served(workdir, fake, photo)


@browser
def test_sites_tab_is_saved_in_both_shapes(workdir: Path, server: ServerThread, fake: FakeYandex):
    new, old = photos(workdir, ["new.jpg", "old.jpg"])
    fake.configure(overrides={image_key(old.read_bytes()): {"legacy_sites": True}})
    done = crawl(workdir, server, "--tabs", "similar,sites", "--max-tabs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    for photo in (new, old):
        served = fake.served[image_key(photo.read_bytes())]
        assert len(served.sites) == 5
        path = workdir / "XHR" / f"{photo.name}_sites_000.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data == json.loads(served.sites_body)
        assert [s["url"] for s in serp.sites_of(data)] == served.sites
        assert_saved_as_served(workdir, fake, photo)
        assert progress(workdir)[photo.name]["sites"] == 5
    assert "sites (pages showing the picture)" in done.stdout


@browser
def test_search_by_url_is_resumable_and_mapped(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    urls = ["https://example.com/a/кот.jpg", "https://pics.example.org/b.png?size=2"]
    listing = workdir / "urls.txt"
    listing.write_text("# my list\n" + "\n".join(urls) + "\n\n", encoding="utf-8")
    proxy = server.base_url.removesuffix("/images/")
    env = {"HTTPS_PROXY": proxy}
    args = ("--urls", "urls.txt", "--base-url", "http://yandex.ru/images/", "--quiet-period", "1.5")
    done = run_script(SCRIPT, *args, "--tabs", "similar,sites", cwd=workdir, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    mapping = serp.read_url_queries(workdir / "XHR")
    assert mapping == {serp.url_query_name(u): u for u in urls}
    for url in urls:
        served = fake.served[image_key(url.encode("utf-8"))]
        name = serp.url_query_name(url)
        assert served.url == url and sorted(served.pages) == [0, 1, 2]
        saved = sorted(p.name for p in (workdir / "XHR").glob(f"{name}_xhr_*.json"))
        assert saved == [f"{name}_xhr_{n:03d}.json" for n in sorted(served.bodies)]
        assert (workdir / "XHR" / f"{name}_sites_000.json").is_file()
        assert progress(workdir)[name]["url"] == url
    imported = run_script("2_XHRtoDB.py", "--xhr-dir", "XHR", "--db", "y.db", cwd=workdir)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    for url in urls:
        key = image_key(url.encode("utf-8"))
        assert imported_ids(workdir / "y.db", serp.url_query_name(url)) == served_ids(fake, key)
    searches = fake.served[image_key(urls[0].encode("utf-8"))].uploads
    again = run_script(SCRIPT, *args, cwd=workdir, env=env)
    assert "0 to search, 2 already done" in again.stdout
    assert fake.served[image_key(urls[0].encode("utf-8"))].uploads == searches


@browser
def test_unreachable_site_stops_the_run_with_one_line(workdir: Path):
    photos(workdir, [f"u{i}.jpg" for i in range(6)])
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = run_script(
        SCRIPT, "--base-url", f"http://127.0.0.1:{port}/images/", "--max-tabs", "1", cwd=workdir
    )
    assert run.returncode == 1
    err = " ".join(run.stderr.split())
    assert err.count("cannot connect to") == 1 and "check --base-url and --proxy" in err
    statuses = sorted(r["status"] for r in progress(workdir).values())
    assert statuses == ["failed"] * 3
    assert "not started" in run.stdout


@browser
def test_ctrl_c_prints_a_clean_summary_and_a_rerun_finishes(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    queries = photos(workdir, ["c1.jpg", "c2.jpg", "c3.jpg", "c4.jpg"])
    fake.configure(latency=0.15)
    proc = start_crawl_until_a_photo_is_done(workdir, server, capture=True)
    try:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 130, out + err
    assert "Step 1" in out and "interrupted" in out
    assert "Interrupted by user" in err
    assert "Future exception" not in err and "Traceback" not in err + out
    fake.configure(latency=0.0)
    again = crawl(workdir, server, "--max-tabs", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    for photo in queries:
        assert_saved_as_served(workdir, fake, photo)


@browser
def test_eight_tabs_pass_six_requests_at_once_and_each_accepts_the_cookie_popup(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    """Chromium opens at most 6 connections to one host per context: 8 tabs in one context
    never had more than 6 requests at the site at once. Every answer here takes 1.5 s, so
    each tab has a request waiting at the site nearly all the time (the 8 start pages come
    together) and a 7th at once shows the tabs are spread over contexts. The popup's
    answer is a cookie of one context: the tabs of the second one meet it again and accept it."""
    queries = photos(workdir, [f"t{i}.jpg" for i in range(16)])
    fake.configure(latency=1.5, end="404", cookie_popup="load")
    done = crawl(workdir, server, "--max-tabs", "8", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert fake.max_in_flight > 6, fake.max_in_flight
    for photo in queries:
        assert_saved_as_served(workdir, fake, photo)
        record = progress(workdir)[photo.name]
        assert record["status"] == "done" and record["end"] == "404", record
    assert fake.cookie_requests > 0


@browser
def test_profile_keeps_cookies_and_delay_paces(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    photos(workdir, ["p1.jpg", "p2.jpg"])
    fake.configure(cookie_popup="load")
    profile = workdir / "profile"
    first = crawl(
        workdir, server, "--profile", str(profile), "--max-tabs", "1", "--delay", "0.1-0.2"
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert profile.is_dir() and any(profile.iterdir())
    fake.reset()
    again = crawl(workdir, server, "--profile", str(profile), "--force")
    assert again.returncode == 0, again.stdout + again.stderr
    assert fake.cookie_requests > 0  # the popup's answer survived the browser


def test_bad_flags_are_usage_errors(workdir: Path):
    photos(workdir, ["x.jpg"])
    for flags, message in (
        (["--tabs", "similar,videos"], "--tabs"),
        (["--delay", "2-1"], "--delay"),
        (["--delay", "soon"], "--delay"),
        (["--quiet-period", "0"], "--quiet-period"),
        (["--proxy", "nohost"], "--proxy"),
    ):
        run = run_script(SCRIPT, *flags, cwd=workdir)
        assert run.returncode == 2 and message in run.stderr, (flags, run.stderr)
    (workdir / "u.txt").write_text("ftp://x/y.jpg\n", encoding="utf-8")
    run = run_script(SCRIPT, "--urls", "u.txt", cwd=workdir)
    assert run.returncode == 2 and "line 1 is not an http(s) URL" in run.stderr


@browser
def test_sites_tab_and_url_search_through_steps_2_and_3(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    (photo,) = photos(workdir, ["cat.jpg"])
    url = "https://example.com/dog.jpg"
    (workdir / "urls.txt").write_text(url + "\n", encoding="utf-8")
    for extra in ((), ("--urls", "urls.txt")):
        done = crawl(workdir, server, "--tabs", "sites,similar", *extra)
        assert done.returncode == 0, done.stdout + done.stderr
    imported = run_script("2_XHRtoDB.py", "--xhr-dir", "XHR", "--db", "y.db", cwd=workdir)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    name = serp.url_query_name(url)
    conn = sqlite3.connect(workdir / "y.db")
    try:
        for query, key in (
            (photo.name, image_key(photo.read_bytes())),
            (name, image_key(url.encode())),
        ):
            got = conn.execute(
                "SELECT url FROM query_sites WHERE query = ? ORDER BY position", (query,)
            )
            assert [r[0] for r in got] == fake.served[key].sites
            assert imported_ids(workdir / "y.db", query) == served_ids(fake, key)
        assert conn.execute("SELECT query, image_url FROM query_sources").fetchall() == [
            (name, url)
        ]
    finally:
        conn.close()
    analysed = run_script("3_VK_Domain_Analyzer.py", "--db", "y.db", "--no-export", cwd=workdir)
    assert analysed.returncode == 0, analysed.stdout + analysed.stderr
    report = json.loads((workdir / "domains_report.json").read_text(encoding="utf-8"))
    assert report["views"]["sites tab"]["urls"] == 10
    assert report["sites_tab"]["query_images"] == 2


HOSTILE_NAMES = [
    "кот фото №1.JPG",  # Cyrillic, a space, an upper-case extension
    "a'b\"c;<x>&[y]*?.jpg",  # quotes, markup, glob characters
    "-starts-with-a-dash.png",
    "looks_xhr_001.json.jpg",  # a saved file's name inside the photo's
    "e\u0301te\u0301 ✓ 🐈.webp",  # combining accents, an emoji
    "%2F..%2Fx #1.jpeg",
    "п" * 110 + ".jpg",  # 224 bytes: a long name near the file-name limit
]


@browser
def test_hostile_and_non_ascii_photo_names_are_saved_and_imported(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    queries = photos(workdir, HOSTILE_NAMES)
    done = crawl(workdir, server, "--max-tabs", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    for photo in queries:
        assert_saved_as_served(workdir, fake, photo)
        assert progress(workdir)[photo.name]["status"] == "done"
    imported = run_script("2_XHRtoDB.py", "--xhr-dir", "XHR", "--db", "y.db", cwd=workdir)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    for photo in queries:
        key = image_key(photo.read_bytes())
        assert imported_ids(workdir / "y.db", photo.name) == served_ids(fake, key), photo.name
    again = crawl(workdir, server)
    assert again.returncode == 0 and f"0 to search, {len(queries)} already done" in again.stdout


@browser
@pytest.mark.parametrize("style", ["redirect", "header"])
def test_captcha_instead_of_a_results_page_marks_the_photo(
    workdir: Path, server: ServerThread, fake: FakeYandex, style: str
):
    (photo,) = photos(workdir, ["redirected.jpg"])
    key = image_key(photo.read_bytes())
    fake.configure(captcha_style=style, overrides={key: {"captcha_page": 2}})
    run = crawl(workdir, server, "--captcha-backoff", "0.1")
    assert run.returncode == 1, run.stdout + run.stderr
    record = progress(workdir)["redirected.jpg"]
    assert record["status"] == "captcha" and record["stage"] == "load more", record
    fake.configure(overrides={})
    again = crawl(workdir, server)
    assert again.returncode == 0, again.stdout + again.stderr
    assert progress(workdir)["redirected.jpg"]["status"] == "done"
    assert_saved_as_served(workdir, fake, photo)


@browser
def test_a_page_that_cannot_be_written_fails_its_photo_with_one_line(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    # a folder where a page is to be written (a long name was the way once: now shortened)
    _, fine = photos(workdir, ["blocked.jpg", "fine.jpg"])
    (workdir / "XHR" / serp.saved_name("blocked.jpg", 1)).mkdir(parents=True)
    done = crawl(workdir, server, "--max-tabs", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    record = progress(workdir)["blocked.jpg"]
    assert record["status"] == "failed" and "Is a directory" in record["error"], record
    assert progress(workdir)["fine.jpg"]["status"] == "done"
    assert_saved_as_served(workdir, fake, fine)


@browser
def test_a_photo_name_near_255_bytes_is_saved_under_a_short_name_and_imported(
    workdir: Path, server: ServerThread, fake: FakeYandex
):
    name = "д" * 122 + ".jpg"  # 248 bytes: "<name>_xhr_000.json" would pass 255
    (photo,) = photos(workdir, [name])
    done = crawl(workdir, server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert progress(workdir)[name]["status"] == "done"
    key = image_key(photo.read_bytes())
    served = fake.served[key]
    saved = sorted(p.name for p in (workdir / "XHR").glob("*_xhr_*.json"))
    assert saved == [serp.saved_name(name, n) for n in pages_to_save(served)]
    assert all(len(n.encode("utf-8")) <= 255 and n.startswith("д" * 50) for n in saved)
    for page in pages_to_save(served):
        path = workdir / "XHR" / serp.saved_name(name, page)
        assert json.loads(path.read_text(encoding="utf-8")) == json.loads(served.bodies[page])
    assert serp.read_query_names(workdir / "XHR") == {serp.query_stem(name): name}
    imported = run_script("2_XHRtoDB.py", "--xhr-dir", "XHR", "--db", "y.db", cwd=workdir)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert imported_ids(workdir / "y.db", name) == served_ids(fake, key)  # linked to the photo
    uploads = fake.upload_count
    again = crawl(workdir, server)
    assert again.returncode == 0 and "0 to search, 1 already done" in again.stdout
    assert fake.upload_count == uploads
