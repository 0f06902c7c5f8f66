"""Step 3 as a user runs it: XHR files → step 2 → 3_VK_Domain_Analyzer.py."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import dump, rows, run_script
from tests.xhr_factory import entity, write_xhr
from yandex_reverse import db, serp
from yandex_reverse.hosts import Classifier

SCRIPT = "3_VK_Domain_Analyzer.py"


def _e(eid: str, url: str, pos: int = 0) -> dict:
    # No dups: every result has exactly one preview (its origUrl) and a Yandex thumb.
    return entity(eid, pos=pos, orig_url=url, dups=[])


CAT_0 = [
    _e("v1", "https://sun9-52.userapi.com/impg/v1/img.jpg?size=1280x960&type=album"),
    _e("v2", "//pp.userapi.com/c1/v2/x.jpg", 1),
    _e("v3", "https://sun2.beltelecom-by-minsk.userapi.com/x.jpg", 2),
    _e("p1", "https://i.pinimg.com/736x/a.jpg", 3),
]
CAT_1 = [
    _e("o1", "https://st.mycdn.me/image.jpg", 4),
    _e("o2", "https://i.okcdn.ru/x.jpg", 5),
    _e("x1", "https://notuserapi.com/x.jpg", 6),
    _e("x2", "https://img.example.co.uk/a.jpg", 7),
    _e("x3", "https://cdn.example.co.uk/b.jpg", 8),
    _e("i1", "https://xn--e1afmkfd.xn--p1ai/a.jpg", 9),
    _e("i2", "https://пример.рф/b.jpg", 10),
]
DOG_0 = [
    CAT_0[0],
    _e("p2", "https://i.pinimg.com/736x/b.jpg", 1),
    _e("g1", "javascript:alert(1)", 2),
]
BIRD_0 = [_e("p3", "https://www.pinterest.com/pin/1.jpg")]
VK_IDS = {"v1", "v2", "v3"}


@pytest.fixture
def source_db(workdir: Path) -> Path:
    xhr = workdir / "XHR"
    write_xhr(xhr, "cat.jpg", 0, CAT_0)
    write_xhr(xhr, "cat.jpg", 1, CAT_1)
    write_xhr(xhr, "dog.jpg", 0, DOG_0)
    write_xhr(xhr, "bird.jpg", 0, BIRD_0)
    run_script(
        "2_XHRtoDB.py", "--xhr-dir", xhr, "--db", "yandex_images.db", cwd=workdir, check=True
    )
    return workdir / "yandex_images.db"


def test_counts_per_service_and_domain_exact(source_db: Path, workdir: Path) -> None:
    done = run_script(SCRIPT, "--top", "2", cwd=workdir, check=True)
    report = json.loads((workdir / "domains_report.json").read_text(encoding="utf-8"))
    results = report["views"]["results"]
    assert report["results"] == 14
    # mycdn.me and okcdn.ru are OK.ru, not VK; the ISP cache of userapi is VK.
    assert results["services"] == {"VK": 3, "Pinterest": 3, "OK.ru": 2}
    assert results["empty"] == 1  # step 2 refused javascript: and stored no origUrl
    assert results["garbage"] == 0
    # Registrable domains by the public suffix list; punycode and Unicode merged.
    assert results["other_domains_top"] == {"example.co.uk": 2, "пример.рф": 2}
    assert results["other_domains_unique"] == 3
    assert results["other_urls"] == 5
    variants = report["views"]["variants"]
    assert variants["services"] == {"Yandex": 14, "VK": 3, "Pinterest": 3, "OK.ru": 2}
    assert variants["urls"] == 14 + 13  # thumbs + previews (none for g1)
    pages = report["views"]["source pages"]
    assert pages["services"] == {"VK": 14}  # the factory's snippet pages are on vk.com
    vk = report["vk"]
    assert (vk["results"], vk["vk_group_results"]) == (3, 5)
    assert (vk["query_images"], vk["query_images_found_on_vk"]) == (3, 2)
    assert vk["query_images_found_on_vk_group"] == 2
    assert vk["query_images_found_on_vk_percent"] == pytest.approx(66.67)
    assert report["export"] == {"images": 3, "new_images": 3, "variants": 6, "query_links": 4}
    # The terminal report: services, the top --top other domains, the VK share.
    assert "Top services" in done.stdout
    assert "example.co.uk" in done.stdout and "пример.рф" in done.stdout
    assert "notuserapi.com" not in done.stdout  # beyond --top 2
    assert "…and 1 more domains" in done.stdout
    assert "query images found on VK" in done.stdout


def test_csv_and_chart_written(source_db: Path, workdir: Path) -> None:
    out = workdir / "reports"
    run_script(SCRIPT, "--no-export", "--report-dir", out, cwd=workdir, check=True)
    with (out / "domains_report.csv").open(encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    got = {(r["view"], r["kind"], r["name"]): int(r["count"]) for r in table}
    assert got[("results", "service", "VK")] == 3
    assert got[("results", "service", "OK.ru")] == 2
    assert got[("results", "domain", "notuserapi.com")] == 1
    assert got[("results", "empty", "(empty)")] == 1
    assert got[("variants", "service", "Yandex")] == 14
    from PIL import Image

    with Image.open(out / "domains_report.png") as chart:
        assert chart.format == "PNG" and chart.width > 300
    assert not (workdir / "vk_images.db").exists()  # --no-export
    assert not list(out.glob("*.tmp*"))


def test_vk_export_contents(source_db: Path, workdir: Path) -> None:
    run_script(SCRIPT, cwd=workdir, check=True)
    vk = workdir / "vk_images.db"
    cols = ", ".join(f'"{c}"' for c in (*db.IMAGE_COLUMNS, *db.IMAGE_EXTRA_COLUMNS))
    want = rows(source_db, f"SELECT {cols} FROM images WHERE id IN ('v1','v2','v3') ORDER BY id")
    assert rows(vk, f"SELECT {cols} FROM images ORDER BY id") == want
    vcols = ", ".join(db.VARIANT_COLUMNS)
    want_v = rows(
        source_db,
        f"SELECT {vcols} FROM image_variants WHERE image_id IN ('v1','v2','v3') ORDER BY id",
    )
    assert len(want_v) == 6
    assert rows(vk, f"SELECT {vcols} FROM image_variants ORDER BY id") == want_v  # ids kept
    links = rows(vk, "SELECT query, image_id FROM query_results ORDER BY 1, 2")
    assert links == [("cat.jpg", "v1"), ("cat.jpg", "v2"), ("cat.jpg", "v3"), ("dog.jpg", "v1")]
    assert rows(vk, "PRAGMA user_version") == [(db.SCHEMA_VERSION,)]


def test_rerun_changes_nothing_and_updates_changed_rows(source_db: Path, workdir: Path) -> None:
    run_script(SCRIPT, cwd=workdir, check=True)
    vk = workdir / "vk_images.db"
    first = dump(vk)
    second_run = run_script(SCRIPT, cwd=workdir, check=True)
    assert dump(vk) == first
    assert "of them new in the VK DB" in second_run.stdout
    report = json.loads((workdir / "domains_report.json").read_text(encoding="utf-8"))
    assert report["export"]["new_images"] == 0 and report["export"]["images"] == 3
    conn = sqlite3.connect(source_db)
    conn.execute("UPDATE images SET alt = 'renamed' WHERE id = 'v2'")
    conn.commit()
    conn.close()
    run_script(SCRIPT, cwd=workdir, check=True)
    assert rows(vk, "SELECT alt FROM images WHERE id = 'v2'") == [("renamed",)]
    assert rows(vk, "SELECT count(*) FROM images") == [(3,)]
    assert rows(vk, "SELECT count(*) FROM image_variants") == [(6,)]


def test_missing_db_is_an_error_and_creates_nothing(workdir: Path) -> None:
    done = run_script(SCRIPT, "--db", "nothing.db", cwd=workdir)
    assert done.returncode == 1
    assert "database not found" in done.stderr and "nothing.db" in done.stderr
    assert not (workdir / "nothing.db").exists()
    assert not (workdir / "vk_images.db").exists()


def test_empty_db_reports_zeros(workdir: Path) -> None:
    db.connect(workdir / "yandex_images.db").close()
    done = run_script(SCRIPT, cwd=workdir, check=True)
    report = json.loads((workdir / "domains_report.json").read_text(encoding="utf-8"))
    assert report["results"] == 0
    assert report["vk"]["results"] == 0 and report["vk"]["results_percent"] == 0.0
    assert report["views"]["results"]["services"] == {}
    assert report["export"] is None
    assert "No VK results" in done.stdout
    assert not (workdir / "vk_images.db").exists()


def test_legacy_db_garbage_urls_counted(workdir: Path) -> None:
    path = workdir / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(db._ORIGINAL_DDL)
    urls = [
        ("a", "//vk.com/photo1.jpg", None),
        ("b", "http://[::1/broken", None),  # unparseable
        ("c", "ftp://files.example.com/x.jpg", None),  # not http(s)
        ("d", "relative/path.jpg", None),
        ("e", "", "https://sun9-1.vkuserphoto.ru/s/v1/ig2/x.jpg"),  # VK by image_url fallback
        ("f", "https://bad_host!.com/x.jpg", None),
        ("g", "HTTPS://I.IMGUR.COM/x.png", None),
    ]
    conn.executemany("INSERT INTO images (id, origUrl, image_url) VALUES (?, ?, ?)", urls)
    conn.commit()
    conn.close()
    run_script(SCRIPT, "--db", path, "--vk-db", "vk.db", cwd=workdir, check=True)
    report = json.loads((workdir / "domains_report.json").read_text(encoding="utf-8"))
    results = report["views"]["results"]
    assert results["services"] == {"VK": 1, "Imgur": 1}
    assert results["garbage"] == 4
    assert results["empty"] == 1
    assert report["vk"]["results"] == 2
    assert rows(workdir / "vk.db", "SELECT id FROM images ORDER BY id") == [("a",), ("e",)]


def test_classifier_suffix_rules() -> None:
    c = Classifier()
    assert c.classify_url("https://sun9-52.userapi.com/x").service == "VK"
    assert c.classify_url("https://userapi.com.evil.org/x").service is None
    assert c.classify_url("https://vk.com.evil.org/x").domain == "evil.org"
    assert c.classify_url("https://mycdn.me/x").service == "OK.ru"
    assert c.classify_url("https://user:pw@Farm1.StaticFlickr.com:443/x").service == "Flickr"
    assert c.classify_url("https://www.xn--e1afmkfd.xn--p1ai/x").domain == "пример.рф"
    assert c.classify_url("http://192.168.0.1/x").domain == "192.168.0.1"
    for garbage in ("mailto:a@b.c", "javascript://x", "http:/x/y", "https://[::1/x", "a/b/c"):
        assert c.classify_url(garbage).kind == "garbage", garbage
    assert c.classify_url(None).kind == "empty"
    assert c.classify_url("  ").kind == "empty"


def test_other_domains_of_every_view_reach_the_terminal(workdir: Path) -> None:
    """All results on VK, their source pages elsewhere: the terminal lists those pages."""
    pages = ["https://blog.example.org/a", "https://news.example.net/b", "https://forum.test.ru/c"]
    results = [
        entity(f"v{i}", pos=i, dups=[], snippet_url=page, domain="x")
        for i, page in enumerate(pages)
    ]
    write_xhr(workdir / "XHR", "cat.jpg", 1, results)
    run_script("2_XHRtoDB.py", cwd=workdir, check=True)

    done = run_script(SCRIPT, "--no-export", cwd=workdir, check=True)

    report = json.loads((workdir / "domains_report.json").read_text(encoding="utf-8"))
    assert report["views"]["results"]["other_domains_unique"] == 0
    listed = report["views"]["source pages"]["other_domains_top"]
    assert listed == {"example.org": 1, "example.net": 1, "test.ru": 1}
    assert "Other domains — source pages" in done.stdout
    for domain in listed:
        assert domain in done.stdout
    assert "Other unique domains (source pages): 3" in done.stdout


def test_sites_tab_is_counted_in_a_view_of_its_own(workdir: Path) -> None:
    xhr = workdir / "XHR"
    write_xhr(xhr, "cat.jpg", 0, [_e("p1", "https://i.pinimg.com/736x/a.jpg")])
    write_xhr(xhr, "dog.jpg", 0, [_e("p2", "https://i.pinimg.com/736x/b.jpg")])
    sites = {
        "cat.jpg": [
            serp.site("https://vk.com/wall-1_1", "VK post", domain="vk.com"),
            serp.site("https://m.vk.com/photo1_2", "VK photo", domain="m.vk.com"),
            serp.site("https://www.example.co.uk/cats", "Cats", domain="example.co.uk"),
        ],
        "dog.jpg": [serp.site("https://ok.ru/group/1", "OK", domain="ok.ru")],
    }
    for query, items in sites.items():
        state = serp.data_state("/images/search?cbir_page=sites", None, sites=items)
        (xhr / serp.saved_name(query, 0, serp.KIND_SITES)).write_text(
            json.dumps(state), encoding="utf-8"
        )
    run_script("2_XHRtoDB.py", cwd=workdir, check=True)

    done = run_script(SCRIPT, "--no-export", cwd=workdir, check=True)

    report = json.loads((workdir / "domains_report.json").read_text(encoding="utf-8"))
    view = report["views"]["sites tab"]
    assert view["urls"] == 4
    assert view["services"] == {"VK": 2, "OK.ru": 1}
    assert view["other_domains_top"] == {"example.co.uk": 1}
    assert report["sites_tab"] == {"pages": 4, "query_images": 2, "query_images_on_vk_pages": 1}
    assert report["results"] == 2  # the sites are not results
    assert "Top services — sites tab (4 URLs)" in done.stdout
    assert "query images on VK pages (sites tab)" in done.stdout
    with (workdir / "domains_report.csv").open(encoding="utf-8") as handle:
        got = {(r["view"], r["kind"], r["name"]): int(r["count"]) for r in csv.DictReader(handle)}
    assert got[("sites tab", "service", "VK")] == 2


def test_russian_report_under_a_russian_locale(source_db: Path, workdir: Path) -> None:
    env = {"LANG": "ru_RU.UTF-8", "LC_ALL": ""}
    done = run_script(SCRIPT, "--no-export", cwd=workdir, env=env, check=True)
    assert "Главные сервисы — результаты" in done.stdout
    assert "Прочие домены — результаты" in done.stdout and "Доля VK" in done.stdout
    assert "Top services" not in done.stdout
    report = json.loads((workdir / "domains_report.json").read_text(encoding="utf-8"))
    assert "source pages" in report["views"]  # the report's keys stay English data
