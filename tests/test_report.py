"""The researcher's report on a small demo run, opened in a real headless Chromium.

The demo (steps 1 → 7.3 against the imitation, then `yandex-reverse report`)
makes the data; the test counts the cards per query photo, checks every
card's source-page link and file against the DB, works the filters, and
checks that hostile titles and URLs stay text and never become links.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_script
from tests.xhr_factory import entity, write_xhr
from yandex_reverse import report
from yandex_reverse.browser import BrowserNotFound, find_browser
from yandex_reverse.console import run_main

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report") / "demo"
    done = subprocess.run(
        [
            sys.executable, "-m", "yandex_reverse", "demo", "--dir", str(folder),
            "--photos", "3", "--per-page", "6", "--pages", "1", "--fault-rate", "0.2",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last == f"Report: {folder / 'report.html'}"  # make demo ends with the report's path
    return folder


def open_page(html_file: Path):  # -> (playwright, browser, page)
    from playwright.sync_api import sync_playwright

    try:
        executable = find_browser(headless=True)
    except BrowserNotFound as exc:
        pytest.skip(str(exc))
    pw = sync_playwright().start()
    browser = pw.chromium.launch(
        headless=True, executable_path=str(executable) if executable else None
    )
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html_file.as_uri())
    return pw, browser, page, requests


def db_rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_cards_and_links_match_the_db_and_the_filters_work(demo: Path) -> None:
    db = demo / "yandex_images.db"
    expected = dict(db_rows(db, "SELECT query, count(*) FROM query_results GROUP BY query"))
    pages = dict(db_rows(db, "SELECT id, coalesce(snippet_url, url) FROM images"))
    done = dict(
        db_rows(
            db, "SELECT image_id, path FROM downloads WHERE status = 'done' AND path IS NOT NULL"
        )
    )
    assert len(expected) == 3 and done
    pw, browser, page, requests = open_page(demo / "report.html")
    try:
        sections = page.locator("section.query")
        assert sections.count() == len(expected)
        for index in range(sections.count()):
            section = sections.nth(index)
            name = section.get_attribute("data-query")
            cards = section.locator("article.card")
            assert cards.count() == expected[name], name
            assert section.locator("h2 img").count() == 1  # the query photo's thumbnail
            for k in range(cards.count()):
                card = cards.nth(k)
                image_id = card.get_attribute("data-id")
                link = card.locator("a.page")
                if pages[image_id] and pages[image_id].startswith("http"):
                    assert link.get_attribute("href") == pages[image_id]
                downloaded = card.get_attribute("data-downloaded") == "1"
                file_link = card.locator("a.file")
                if downloaded:
                    href = file_link.get_attribute("href")
                    assert (demo / href).is_file()
                    assert (demo / href).resolve() == (demo / done[image_id]).resolve()
                else:
                    assert file_link.count() == 0
            # per-domain counts add up to the photo's results
            counts = [
                int(s.split("/")[-1].rstrip(")"))
                for s in section.locator("details.domain > summary").all_inner_texts()
            ]
            assert sum(counts) == expected[name]
        total = sum(expected.values())
        visible = page.locator("article.card:not(.hidden)")
        assert visible.count() == total
        vk = db_rows(db, "SELECT count(*) FROM query_results q JOIN images i ON i.id = q.image_id "
                         "WHERE i.origUrl LIKE '%userapi.com/%' OR i.origUrl LIKE '%vkuserphoto.ru/%'"
                         " OR coalesce(i.snippet_url, i.url) LIKE '%vk.com/%'")[0][0]  # fmt: skip
        page.check("#filter-vk")
        assert 0 < visible.count() == page.locator('article.card[data-vk="1"]').count() <= total
        assert visible.count() >= 1 and vk >= 1
        page.uncheck("#filter-vk")
        page.check("#filter-downloaded")
        assert visible.count() == page.locator('article.card[data-downloaded="1"]').count()
        assert visible.count() < total  # the faulty results were not downloaded
        page.uncheck("#filter-downloaded")
        page.fill("#filter-text", "no-such-domain-anywhere")
        assert visible.count() == 0
        page.fill("#filter-text", "")
        assert visible.count() == total
    finally:
        browser.close()
        pw.stop()
    remote = [u for u in requests if not u.startswith(("file:", "data:"))]
    # Only Yandex thumbnails of results that were not downloaded may be remote.
    assert all(u.startswith("http") for u in remote)


def test_hostile_text_stays_text_and_only_http_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    xhr = tmp_path / "XHR"
    write_xhr(
        xhr,
        "cat.jpg",
        0,
        [
            entity("evil1", orig_url="https://example.com/a.jpg"),
            entity("evil2", pos=1, orig_url="https://example.com/b.jpg"),
        ],
    )
    run_script(
        "2_XHRtoDB.py", "--xhr-dir", xhr, "--db", "yandex_images.db", cwd=tmp_path, check=True
    )
    with sqlite3.connect(tmp_path / "yandex_images.db") as conn:
        conn.execute(
            "UPDATE images SET title = ?, snippet_url = ? WHERE id = 'evil1'",
            ('<script>document.title="pwned"</script><img src=x onerror=alert(1)>',
             "javascript:alert(1)"),
        )  # fmt: skip
        conn.execute(
            "UPDATE images SET title = 'x[/]y', snippet_url = ? WHERE id = 'evil2'",
            ('https://example.com/p?"><script>alert(2)</script>',),
        )
        conn.executemany(
            "INSERT INTO query_sites (query, url, position, title, domain) VALUES (?, ?, ?, ?, ?)",
            [("cat.jpg", "javascript:alert(3)", 0, "<b>bold</b>", "evil.example"),
             ("cat.jpg", "https://example.org/page", 1, "A page", "example.org")],
        )  # fmt: skip
    assert run_main(report.main, ["--db", "yandex_images.db", "--out", "r.html"]) == 0
    pw, browser, page, _requests = open_page(tmp_path / "r.html")
    try:
        assert page.title() != "pwned"
        assert page.locator("main script").count() == 0
        assert page.locator("main img[onerror]").count() == 0
        hrefs = page.locator("main a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
        assert not [h for h in hrefs if h.lower().startswith("javascript")]
        cards = page.locator("article.card")
        assert cards.count() == 2
        assert "<script>" in cards.nth(0).inner_text() or "<script>" in cards.nth(1).inner_text()
        assert page.locator('a.page[href^="https://example.com/p?"]').count() == 1
        sites = page.locator("details.sites li")
        assert sites.count() == 2  # the sites tab, both rows; only the http(s) one is a link
        assert page.locator("details.sites a").evaluate_all(
            "els => els.map(e => e.getAttribute('href'))"
        ) == ["https://example.org/page"]
        assert "<b>bold</b>" in (sites.nth(0).text_content() or "")
    finally:
        browser.close()
        pw.stop()
