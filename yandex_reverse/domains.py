"""Step 3: which sites the results live on, how much of it is VK, and the VK subset.

Four views are counted separately: the results' originals (``origUrl``),
every variant URL (``image_variants.url``), the source pages
(``snippet_url``) and the "Сайты" tab (``query_sites.url``: the pages where
the query picture itself appears, when step 1 saved that tab). A host is classified once and cached: a million result rows
hold only a few thousand distinct hosts, so the per-row work is one
``str.split`` and a dictionary lookup. Services come from ``services.json`` by
registrable-domain suffix; the registrable domain of everything else comes
from tldextract's bundled public suffix list (never fetched from the network).

A result is VK when the host of its ``origUrl`` is VK, or, with no usable
``origUrl``, the host of its ``image_url`` (the original analyzer's rule).
The VK results, their variants and query links are copied by column name into
``vk_images.db`` with upserts, so a re-run updates it and never duplicates.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from . import db
from .cli import add_common_flags
from .console import StepFailed, UsageError, console, esc, progress, setup_logging, table
from .fsutil import atomic_write_bytes, atomic_write_text
from .hosts import EMPTY, GARBAGE, Classifier, Host
from .i18n import _
from .labels import shown

# ---------------------------------------------------------------- analysis


@dataclass
class View:
    """Counts of one kind of URL (results, variants or source pages)."""

    name: str
    urls: int = 0
    empty: int = 0
    garbage: int = 0
    services: Counter[str] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_hosts(cls, name: str, hosts: Counter[Host]) -> View:
        """Expand the per-host counts (one entry per distinct host) into the view."""
        view = cls(name)
        for host, count in hosts.items():
            view.urls += count
            if host.kind == "empty":
                view.empty += count
            elif host.kind == "garbage":
                view.garbage += count
            elif host.service is not None:
                view.services[host.service] += count
            else:
                view.other[host.domain] += count
        return view

    def as_dict(self, top: int) -> dict[str, Any]:
        return {
            "urls": self.urls,
            "empty": self.empty,
            "garbage": self.garbage,
            "services": dict(self.services.most_common()),
            "other_domains_top": dict(self.other.most_common(top)),
            "other_domains_unique": len(self.other),
            "other_urls": sum(self.other.values()),
        }


@dataclass
class Analysis:
    results: View
    variants: View
    pages: View
    sites: View = field(default_factory=lambda: View("sites tab"))
    vk_results: int = 0
    vk_group_results: int = 0
    queries: int = 0
    queries_with_vk: int = 0
    queries_with_vk_group: int = 0
    site_queries: int = 0  # query photos with a sites tab
    site_queries_on_vk: int = 0  # ... of which the picture appears on a VK page

    @property
    def views(self) -> tuple[View, ...]:
        return (self.results, self.variants, self.pages, self.sites)


def analyse(conn: sqlite3.Connection, classifier: Classifier, *, batch: int = 50_000) -> Analysis:
    """Stream every URL once; VK result ids go to ``temp.vk_ids`` for the export.

    Per batch the work is list comprehensions and ``Counter.update`` over
    cached :class:`Host` objects; the ids reach SQLite as one JSON array per
    batch (``json_each``), far cheaper than a row-by-row ``executemany``.
    """
    # Plain rowid tables: images.id is unique already, and appending is cheap.
    for name in ("vk_ids", "vk_group_ids"):
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} (id TEXT)")
        conn.execute(f"DELETE FROM temp.{name}")
    classify = classifier.classify_url
    vk, group = classifier.vk, classifier.vk_group
    results: Counter[Host] = Counter()
    pages: Counter[Host] = Counter()
    variants: Counter[Host] = Counter()
    total = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    cursor = conn.execute("SELECT id, origUrl, image_url, snippet_url FROM images")
    with progress(_("Results"), total) as advance:
        while rows := cursor.fetchmany(batch):
            hosts = [classify(row[1]) for row in rows]
            results.update(hosts)
            pages.update([classify(row[3]) for row in rows])
            # No usable origUrl: the original's fallback, the grid image URL.
            services = [
                host.service if host.kind == "ok" else classify(row[2]).service
                for row, host in zip(rows, hosts, strict=True)
            ]
            vk_ids = [row[0] for row, s in zip(rows, services, strict=True) if s == vk]
            group_ids = [row[0] for row, s in zip(rows, services, strict=True) if s in group]
            for name, ids in (("vk_ids", vk_ids), ("vk_group_ids", group_ids)):
                if ids:
                    conn.execute(
                        f"INSERT INTO temp.{name} SELECT value FROM json_each(?)",
                        (json.dumps(ids),),
                    )
            advance(len(rows))
    total_variants = conn.execute("SELECT count(*) FROM image_variants").fetchone()[0]
    cursor = conn.execute("SELECT url FROM image_variants")
    with progress(_("Variants"), total_variants) as advance:
        while rows := cursor.fetchmany(batch):
            variants.update([classify(row[0]) for row in rows])
            advance(len(rows))
    out = Analysis(
        View.from_hosts("results", results),
        View.from_hosts("variants", variants),
        View.from_hosts("source pages", pages),
    )
    _analyse_sites(conn, classifier, out, batch)
    out.vk_results = _count(conn, "SELECT count(*) FROM temp.vk_ids")
    out.vk_group_results = _count(conn, "SELECT count(*) FROM temp.vk_group_ids")
    out.queries = _count(conn, "SELECT count(DISTINCT query) FROM query_results")
    # Driven by the (smaller) id table through the query_results_image index.
    share = (
        "SELECT count(DISTINCT q.query) FROM temp.{} v JOIN query_results q ON q.image_id = v.id"
    )
    out.queries_with_vk = _count(conn, share.format("vk_ids"))
    out.queries_with_vk_group = _count(conn, share.format("vk_group_ids"))
    return out


def _analyse_sites(
    conn: sqlite3.Connection, classifier: Classifier, out: Analysis, batch: int
) -> None:
    """The sites tab: its pages' domains, and how many query photos appear on VK."""
    if not db.table_exists(conn, "query_sites"):  # a DB opened without migrating
        return
    classify, vk = classifier.classify_url, classifier.vk
    hosts: Counter[Host] = Counter()
    queries: set[str] = set()
    on_vk: set[str] = set()
    total = conn.execute("SELECT count(*) FROM query_sites").fetchone()[0]
    cursor = conn.execute("SELECT query, url FROM query_sites")
    with progress(_("Sites tab"), total) as advance:
        while rows := cursor.fetchmany(batch):
            for query, url in rows:
                host = classify(url)
                hosts[host] += 1
                queries.add(query)
                if host.service == vk:
                    on_vk.add(query)
            advance(len(rows))
    out.sites = View.from_hosts("sites tab", hosts)
    out.site_queries, out.site_queries_on_vk = len(queries), len(on_vk)


# ---------------------------------------------------------------- VK export


@dataclass
class Export:
    images: int = 0
    new_images: int = 0
    variants: int = 0
    links: int = 0


def _count(conn: sqlite3.Connection, sql: str) -> int:
    return conn.execute(sql).fetchone()[0]


def export_vk(conn: sqlite3.Connection, vk_path: Path) -> Export:
    """Copy ``temp.vk_ids`` with their variants and query links into ``vk_path``.

    Set-based through ``ATTACH``: columns by name (those both DBs have),
    images upserted on ``id``, variants keep their ids (the old download
    tracker's keys) and replace a row with the same id or the same
    ``(image_id, variant_type, url)``, links upserted on ``(query, image_id)``.
    """
    db.connect(vk_path).close()  # create or migrate to the current schema
    conn.execute("ATTACH DATABASE ? AS vk", (str(vk_path),))
    try:
        image_cols = [c for c in db.columns_of(conn, "images") if c in _vk_columns(conn, "images")]
        variant_cols = [
            c
            for c in db.columns_of(conn, "image_variants")
            if c in _vk_columns(conn, "image_variants")
        ]
        out = Export()
        with db.transaction(conn):
            before = _count(conn, "SELECT count(*) FROM vk.images")
            cols = ", ".join(f'"{c}"' for c in image_cols)
            updates = ", ".join(f'"{c}" = excluded."{c}"' for c in image_cols if c != "id")
            conn.execute(
                f"INSERT INTO vk.images ({cols}) SELECT {cols} FROM main.images "
                f"WHERE id IN temp.vk_ids ON CONFLICT(id) DO UPDATE SET {updates}"
            )
            out.images = _count(conn, "SELECT count(*) FROM temp.vk_ids")
            out.new_images = _count(conn, "SELECT count(*) FROM vk.images") - before
            cols = ", ".join(f'"{c}"' for c in variant_cols)
            cursor = conn.execute(
                f"INSERT OR REPLACE INTO vk.image_variants ({cols}) SELECT {cols} "
                f"FROM main.image_variants WHERE image_id IN temp.vk_ids"
            )
            out.variants = cursor.rowcount
            cursor = conn.execute(
                "INSERT INTO vk.query_results (query, image_id, page, position, xhr_file) "
                "SELECT query, image_id, page, position, xhr_file FROM main.query_results "
                "WHERE image_id IN temp.vk_ids ON CONFLICT(query, image_id) DO UPDATE SET "
                "page = excluded.page, position = excluded.position, xhr_file = excluded.xhr_file"
            )
            out.links = cursor.rowcount
    finally:
        conn.execute("DETACH DATABASE vk")
    return out


def _vk_columns(conn: sqlite3.Connection, table_name: str) -> set[str]:
    return {row[1] for row in conn.execute(f'PRAGMA vk.table_info("{table_name}")')}


# ---------------------------------------------------------------- reports


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def report_data(a: Analysis, db_path: Path, top: int, exported: Export | None) -> dict[str, Any]:
    total = a.results.urls
    return {
        "database": str(db_path),
        "generated_at": db.now_iso(),
        "results": total,
        "vk": {
            "results": a.vk_results,
            "results_percent": _pct(a.vk_results, total),
            "vk_group_results": a.vk_group_results,
            "vk_group_results_percent": _pct(a.vk_group_results, total),
            "query_images": a.queries,
            "query_images_found_on_vk": a.queries_with_vk,
            "query_images_found_on_vk_percent": _pct(a.queries_with_vk, a.queries),
            "query_images_found_on_vk_group": a.queries_with_vk_group,
        },
        "views": {v.name: v.as_dict(top) for v in a.views},
        "sites_tab": {
            "pages": a.sites.urls,
            "query_images": a.site_queries,
            "query_images_on_vk_pages": a.site_queries_on_vk,
        },
        "export": None
        if exported is None
        else {
            "images": exported.images,
            "new_images": exported.new_images,
            "variants": exported.variants,
            "query_links": exported.links,
        },
    }


def report_csv(a: Analysis, top: int) -> str:
    """One row per (view, kind, name): kind is service, domain, garbage or empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["view", "kind", "name", "count", "percent"])
    for view in a.views:
        for name, count in view.services.most_common():
            writer.writerow([view.name, "service", name, count, _pct(count, view.urls)])
        for name, count in view.other.most_common(top):
            writer.writerow([view.name, "domain", name, count, _pct(count, view.urls)])
        writer.writerow(
            [view.name, "garbage", GARBAGE, view.garbage, _pct(view.garbage, view.urls)]
        )
        writer.writerow([view.name, "empty", EMPTY, view.empty, _pct(view.empty, view.urls)])
    return buffer.getvalue()


def chart_png(view: View, limit: int = 20) -> bytes:
    """A horizontal bar chart of the top services (plus "other domains")."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    items = view.services.most_common(limit)
    other = sum(view.other.values())
    if other:
        items.append((_("other domains"), other))
    items.sort(key=lambda item: item[1])
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.4 * len(items) + 1.2)))
    try:
        names = [name for name, _ in items]
        counts = [count for _, count in items]
        bars = ax.barh(names, counts, color="#4a76a8")
        ax.bar_label(bars, labels=[f"{c:,}" for c in counts], padding=3)
        ax.set_title(_("Results by service ({n} result URLs)").format(n=f"{view.urls:,}"))
        ax.set_xlabel(_("results"))
        if not items:
            ax.text(0.5, 0.5, _("no results"), ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def view_texts(name: str) -> tuple[str, str, str]:
    """A view's three headings in the user's language (whole sentences: "results"
    alone is a different word in Russian in every one of them)."""
    texts = {
        "results": (
            _("Top services — results ({n} URLs)"),
            _("Other domains — results — top {top}"),
            _("Other unique domains (results): {n}"),
        ),
        "variants": (
            _("Top services — variants ({n} URLs)"),
            _("Other domains — variants — top {top}"),
            _("Other unique domains (variants): {n}"),
        ),
        "source pages": (
            _("Top services — source pages ({n} URLs)"),
            _("Other domains — source pages — top {top}"),
            _("Other unique domains (source pages): {n}"),
        ),
        "sites tab": (
            _("Top services — sites tab ({n} URLs)"),
            _("Other domains — sites tab — top {top}"),
            _("Other unique domains (sites tab): {n}"),
        ),
    }
    return texts[name]


def _wide(out: Table) -> Table:
    """A table at least as wide as its title, so a title is never wrapped."""
    out.min_width = len(str(out.title or "")) + 2
    return out


def print_report(a: Analysis, top: int) -> None:
    for view in a.views:
        if view is a.sites and not view.urls:
            continue  # step 1 saved no sites tab
        rows: list[tuple[str, int, str]] = [
            (name, count, f"{_pct(count, view.urls):.2f}%")
            for name, count in view.services.most_common()
        ]
        rows.append((_("other domains"), sum(view.other.values()), ""))
        rows.append((shown(GARBAGE), view.garbage, ""))
        rows.append((shown(EMPTY), view.empty, ""))
        top_title, other_title, unique_line = view_texts(view.name)
        title = top_title.format(n=f"{view.urls:,}")
        console.print(_wide(table(title, (_("service"), _("count"), "%"), rows)))
        # Every view's other domains, as the JSON report has them: the results'
        # table alone can be empty while the source pages hold hundreds.
        if view.other:
            top_domains = view.other.most_common(top)
            title = other_title.format(top=top)
            console.print(_wide(table(title, (_("domain"), _("count")), top_domains)))
            more = len(view.other) - len(top_domains)
            if more > 0:
                console.print(_("…and {n} more domains").format(n=f"{more:,}"))
        console.print(unique_line.format(n=f"{len(view.other):,}"))
    share = [
        (_("results on VK"), a.vk_results, a.results.urls, _pct(a.vk_results, a.results.urls)),
        (
            _("results on VK or OK.ru"),
            a.vk_group_results,
            a.results.urls,
            _pct(a.vk_group_results, a.results.urls),
        ),
        (
            _("query images found on VK"),
            a.queries_with_vk,
            a.queries,
            _pct(a.queries_with_vk, a.queries),
        ),
        (
            _("query images found on VK or OK.ru"),
            a.queries_with_vk_group,
            a.queries,
            _pct(a.queries_with_vk_group, a.queries),
        ),
    ]
    if a.site_queries:
        share.append(
            (
                _("query images on VK pages (sites tab)"),
                a.site_queries_on_vk,
                a.site_queries,
                _pct(a.site_queries_on_vk, a.site_queries),
            )
        )
    headers = ("", _("count"), _("of"), "%")
    console.print(table(_("VK share"), headers, share))


def write_reports(a: Analysis, data: dict[str, Any], report_dir: Path, top: int) -> list[Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        report_dir / "domains_report.json",
        report_dir / "domains_report.csv",
        report_dir / "domains_report.png",
    ]
    atomic_write_text(paths[0], json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    atomic_write_text(paths[1], report_csv(a, top))
    atomic_write_bytes(paths[2], chart_png(a.results))
    return paths


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="3_VK_Domain_Analyzer.py",
        description=_(
            "Domain statistics of the search results (services, other domains, VK share, "
            "the sites tab) and the VK results exported to a separate DB of the same schema."
        ),
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=Path("yandex_images.db"),
        help=_("source DB (default: yandex_images.db)"),
    )
    parser.add_argument(
        "--vk-db",
        type=Path,
        default=Path("vk_images.db"),
        help=_("DB the VK results are exported to (default: vk_images.db)"),
    )
    parser.add_argument(
        "--top",
        type=int,
        default=100,
        help=_("how many other domains to list per view (default: 100)"),
    )
    parser.add_argument("--no-export", action="store_true", help=_("analyse only, write no VK DB"))
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("."),
        help=_("folder for domains_report.json/.csv/.png (default: the working folder)"),
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=Path("3_VK_Domain_Analyzer.log"),
        help=_("details and tracebacks (default: 3_VK_Domain_Analyzer.log)"),
    )
    add_common_flags(parser, yes=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 0:
        raise UsageError(_("--top must be 0 or more"))
    setup_logging(args.log_file)
    if args.db.resolve() == args.vk_db.resolve() and not args.no_export:
        raise UsageError(_("--db and --vk-db are the same file"))
    try:
        conn = db.connect(args.db, create=False)
    except FileNotFoundError as exc:
        raise StepFailed(
            _("database not found: {path} (run 2_XHRtoDB.py first, or pass --db)").format(
                path=args.db
            )
        ) from exc
    except db.SchemaError as exc:
        raise StepFailed(str(exc)) from exc
    try:
        analysis = analyse(conn, Classifier())
        exported = None
        if not args.no_export:
            if analysis.vk_results:
                exported = export_vk(conn, args.vk_db)
            else:
                console.print(_("No VK results: nothing to export."))
    finally:
        conn.close()
    print_report(analysis, args.top)
    data = report_data(analysis, args.db, args.top, exported)
    paths = write_reports(analysis, data, args.report_dir, args.top)
    if exported is not None:
        console.print(
            table(
                _("VK export → {path}").format(path=args.vk_db),
                ("", _("count")),
                [
                    (_("VK results exported"), exported.images),
                    (_("of them new in the VK DB"), exported.new_images),
                    (_("variants"), exported.variants),
                    (_("query links"), exported.links),
                ],
            )
        )
    for path in paths:
        console.print(_("Report: {path}").format(path=esc(path)))
    return 0
