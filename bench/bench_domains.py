"""Step 3's domain analysis on 1,000,000 result rows, against the naive approach.

Ours: ``domains.analyse`` (streamed cursor, host cache, Counter) over every
result row: origUrl, the image_url fallback and the source page, plus the VK
ids and query shares. Peer, on the same rows in the same run: the original
analyzer's way, each origUrl classified from scratch (normalise, parse, the
substring rules over the service list, then tldextract for the registrable
domain) with no cache. The peer does less work per row (one URL of three).

    PYTHONPATH=. .venv/bin/python bench/bench_domains.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import report, work_dir
from yandex_reverse import db
from yandex_reverse.domains import analyse
from yandex_reverse.hosts import SERVICES_FILE, Classifier
from yandex_reverse.urls import normalize_url


def build(path: Path, n: int) -> None:
    """n results over ~6,000 hosts (as real result sets: hosts repeat massively)."""
    if path.exists():
        conn = sqlite3.connect(path)
        have = conn.execute("SELECT count(*) FROM images").fetchone()[0]
        conn.close()
        if have == n:
            return
        path.unlink()
        for extra in ("-wal", "-shm"):
            Path(f"{path}{extra}").unlink(missing_ok=True)
    rng = random.Random(7)
    hosts = (
        [f"sun9-{i}.userapi.com" for i in range(1, 100)]
        + [f"sun{i}-{j}.vkuserphoto.ru" for i in range(1, 10) for j in range(1, 40)]
        + ["i.pinimg.com", "st.mycdn.me", "i.okcdn.ru", "farm1.staticflickr.com"]
        + [f"img{i}.site{i % 2500}.ru" for i in range(5000)]
        + [f"cdn.shop{i}.co.uk" for i in range(500)]
        + ["xn--e1afmkfd.xn--p1ai", "upload.wikimedia.org", "i.imgur.com"]
    )
    weights = [50 if ("userapi" in h or "pinimg" in h) else 1 for h in hosts]
    conn = db.connect(path)
    with db.transaction(conn):
        batch: list[tuple] = []
        links: list[tuple] = []
        picks = rng.choices(hosts, weights, k=n)
        for i, host in enumerate(picks):
            orig = f"https://{host}/impg/{i:x}/photo.jpg?size=1280x960"
            if i % 97 == 0:
                orig = "javascript:void(0)" if i % 2 else ""
            elif i % 13 == 0:
                orig = f"//{host}/p/{i}.jpg"
            thumb = f"https://avatars.mds.yandex.net/i?id={i:x}&n=13"
            page = f"https://{rng.choice(('vk.com', 'ok.ru', 'pinterest.com', host))}/wall{i}"
            batch.append((f"r{i}", orig, thumb, page))
            links.append((f"q{i % 2000}.jpg", f"r{i}", 1, i % 30))
            if len(batch) >= 50_000:
                conn.executemany(
                    "INSERT INTO images (id, origUrl, image_url, snippet_url) VALUES (?,?,?,?)",
                    batch,
                )
                conn.executemany("INSERT INTO query_results VALUES (?, ?, ?, ?, NULL)", links)
                batch.clear()
                links.clear()
        conn.executemany(
            "INSERT INTO images (id, origUrl, image_url, snippet_url) VALUES (?,?,?,?)", batch
        )
        conn.executemany("INSERT INTO query_results VALUES (?, ?, ?, ?, NULL)", links)
    conn.close()


def naive(path: Path) -> tuple[int, Counter[str]]:
    """The original's per-row way: parse, substring rules, tldextract, no cache."""
    import tldextract

    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    services = json.loads(SERVICES_FILE.read_text(encoding="utf-8"))["services"]
    rules = [(s["name"], s["suffixes"]) for s in services]
    counts: Counter[str] = Counter()
    conn = sqlite3.connect(path)
    n = 0
    for (url,) in conn.execute("SELECT origUrl FROM images"):
        n += 1
        normalized = normalize_url(url)
        if normalized is None:
            counts["(garbage)"] += 1
            continue
        host = (urlsplit(normalized).hostname or "").lower()
        for name, suffixes in rules:
            if any(suffix in host for suffix in suffixes):
                counts[name] += 1
                break
        else:
            counts[extract(host).top_domain_under_public_suffix or host] += 1
    conn.close()
    return n, counts


def cached_origurl(path: Path) -> int:
    """Ours on the peer's exact task (origUrl only): the same stream, cached hosts."""
    classify = Classifier().classify_url
    counts: Counter = Counter()
    conn = sqlite3.connect(path)
    n = 0
    cursor = conn.execute("SELECT origUrl FROM images")
    while rows := cursor.fetchmany(50_000):
        counts.update([classify(row[0]) for row in rows])
        n += len(rows)
    conn.close()
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    path = work_dir("domains") / f"results_{args.rows}.db"
    start = time.perf_counter()
    build(path, args.rows)
    print(f"DB with {args.rows:,} results ready in {time.perf_counter() - start:.1f} s: {path}")

    conn = db.connect(path, create=False)
    start = time.perf_counter()
    analysis = analyse(conn, Classifier())
    ours_s = time.perf_counter() - start
    conn.close()
    assert analysis.results.urls == args.rows
    print(
        f"ours : {ours_s:6.2f} s  {args.rows / ours_s:12,.0f} rows/s  "
        f"(VK {analysis.vk_results:,}, garbage {analysis.results.garbage:,}, "
        f"empty {analysis.results.empty:,}, other domains {len(analysis.results.other):,})"
    )
    start = time.perf_counter()
    n, _ = naive(path)
    peer_s = time.perf_counter() - start
    print(f"naive: {peer_s:6.2f} s  {n / peer_s:12,.0f} rows/s")
    print(f"speed-up: {peer_s / ours_s:.1f}x (ours does 2-3 URLs per row, the peer 1)")
    start = time.perf_counter()
    cached_origurl(path)
    same_s = time.perf_counter() - start
    print(
        f"ours, origUrl only (the peer's task): {same_s:6.2f} s  {n / same_s:12,.0f} rows/s  "
        f"speed-up {peer_s / same_s:.1f}x"
    )
    report(
        "domains",
        "analysis of 1M result rows",
        "rows/s",
        args.rows / ours_s,
        "naive per-row classify (original's way)",
        n / peer_s,
    )
    report(
        "domains",
        "origUrl classification, 1M rows",
        "rows/s",
        n / same_s,
        "naive per-row classify (original's way)",
        n / peer_s,
    )


if __name__ == "__main__":
    main()
