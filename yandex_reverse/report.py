"""``yandex-reverse report``: one static HTML file showing where each query photo was found.

Per query photo: its thumbnail (embedded), then every result grouped by the
domain of its source page, with counts: the downloaded file if step 5 has it
(else Yandex's thumbnail), the source page link, domain, title, size, and a
mark on VK/OK.ru results; the "Сайты" (sites) tab when step 1 saved it.
Filters (text, VK/OK.ru only, downloaded only) are inline JavaScript: the
file opens from disk with no server and no network.

Everything from outside (titles, URLs, names) is HTML-escaped, and only
``http(s)`` URLs become links or remote images.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from . import i18n
from .console import StepFailed, console, esc, human_bytes, setup_logging
from .fsutil import atomic_write_text
from .i18n import _, ngettext
from .labels import shown

DEFAULT_DB = Path("yandex_images.db")
DEFAULT_OUT = Path("report.html")
THUMB_SIDE = 200


@dataclass
class Result:
    image_id: str
    title: str
    page: str | None  # the source page (http(s) only)
    domain: str
    original: str | None
    thumb: str | None  # Yandex's thumbnail (http(s) only)
    file: str | None  # the downloaded file, relative to the report
    width: int | None
    height: int | None
    size: int | None
    vk: bool


@dataclass
class Query:
    name: str
    thumb: str | None  # a data: URI
    results: list[Result] = field(default_factory=list)
    sites: list[dict[str, str]] = field(default_factory=list)


def safe_url(value: object) -> str | None:
    """``value`` if it is an absolute http(s) URL, else None (never javascript:, data:, file:)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    return text if parts.scheme.lower() in ("http", "https") and parts.netloc else None


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}


def _thumbnail(path: Path) -> str | None:
    """A small JPEG of the query photo as a data: URI, so the report is one file."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.thumbnail((THUMB_SIDE, THUMB_SIDE))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=80)
    except Exception:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _relative_link(target: Path, report_dir: Path) -> str:
    try:
        rel = target.resolve().relative_to(report_dir.resolve())
        return quote(rel.as_posix())
    except ValueError:
        return target.resolve().as_uri()


def collect(db_path: Path, photos: Path, report_dir: Path) -> list[Query]:
    """Read the pipeline DB: every query photo with its results, downloads and sites."""
    from .hosts import Classifier

    classifier = Classifier()
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        image_cols = _columns(conn, "images")
        page = "coalesce(i.snippet_url, i.url)" if "snippet_url" in image_cols else "i.url"
        rows = conn.execute(
            f"SELECT q.query, i.id, i.title, i.alt, {page}, i.domain, i.origUrl, i.image_url "
            "FROM query_results q JOIN images i ON i.id = q.image_id "
            "ORDER BY q.query, q.page, q.position, i.id"
        ).fetchall()
        thumbs = dict(
            conn.execute(
                "SELECT image_id, min(url) FROM image_variants WHERE variant_type = 'thumb' "
                "GROUP BY image_id"
            )
        )
        downloads: dict[str, tuple] = {}
        if _columns(conn, "downloads"):
            for image_id, path, width, height, size in conn.execute(
                "SELECT image_id, path, width, height, bytes FROM downloads "
                "WHERE status = 'done' AND path IS NOT NULL ORDER BY updated_at"
            ):
                downloads[image_id] = (path, width, height, size)
        sites: dict[str, list[dict[str, str]]] = defaultdict(list)
        if _columns(conn, "query_sites"):  # step 2 fills it when step 1 saved the sites tab
            wanted = ["url", "title", "domain", "description"]
            for values in conn.execute(
                "SELECT query, url, title, domain, description FROM query_sites "
                "ORDER BY query, page, position"
            ):
                sites[values[0]].append(
                    {k: str(v) for k, v in zip(wanted, values[1:], strict=True) if v}
                )
    finally:
        conn.close()
    queries: dict[str, Query] = {}
    for name, image_id, title, alt, page_url, domain, orig, image_url in rows:
        query = queries.get(name)
        if query is None:
            query = queries[name] = Query(name, _thumbnail(photos / name), sites=sites[name])
        page_link = safe_url(page_url)
        host = classifier.classify_url(page_link or orig)
        file = width = height = size = None
        if image_id in downloads:
            path, width, height, size = downloads[image_id]
            target = db_path.parent / path
            if target.is_file():  # a quarantined duplicate has moved: show the thumbnail
                file = _relative_link(target, report_dir)
        query.results.append(
            Result(
                image_id=image_id,
                title=str(title or alt or ""),
                page=page_link,
                domain=host.domain if host.kind == "ok" else str(domain or host.domain),
                original=safe_url(orig),
                thumb=safe_url(thumbs.get(image_id)) or safe_url(image_url),
                file=file,
                width=width,
                height=height,
                size=size,
                vk=host.service in classifier.vk_group,
            )
        )
    return list(queries.values())


# --- HTML ---------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f4f6;color:#222}
header{position:sticky;top:0;background:#fff;padding:8px 16px;border-bottom:1px solid #ddd;z-index:1}
h1{font-size:18px;margin:0 0 6px} .filters label{margin-right:12px}
section.query{background:#fff;margin:12px 16px;padding:12px;border-radius:6px}
section.query>h2{display:flex;align-items:center;gap:12px;font-size:16px;margin:0 0 8px}
section.query>h2 img{max-width:120px;max-height:120px;border-radius:4px}
details.domain>summary{cursor:pointer;font-weight:600;margin:6px 0}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{width:180px;border:1px solid #ddd;border-radius:4px;padding:6px;background:#fafafa}
.card img{width:100%;height:130px;object-fit:contain;background:#eee}
.card .title{font-size:12px;overflow-wrap:anywhere;max-height:3.2em;overflow:hidden}
.card .meta{font-size:11px;color:#666}
.badge{background:#4a76a8;color:#fff;border-radius:3px;padding:0 4px;font-size:11px}
.hidden{display:none}
"""

SCRIPT = """
(function(){
  var text=document.getElementById('filter-text'),vk=document.getElementById('filter-vk'),
      dl=document.getElementById('filter-downloaded');
  function apply(){
    var needle=text.value.trim().toLowerCase();
    document.querySelectorAll('section.query').forEach(function(section){
      var shownInQuery=0;
      section.querySelectorAll('details.domain').forEach(function(group){
        var shown=0;
        group.querySelectorAll('.card').forEach(function(card){
          var ok=(!needle||card.dataset.text.indexOf(needle)>=0)&&
                 (!vk.checked||card.dataset.vk==='1')&&(!dl.checked||card.dataset.downloaded==='1');
          card.classList.toggle('hidden',!ok); if(ok){shown++;}
        });
        group.classList.toggle('hidden',shown===0);
        group.querySelector('.shown').textContent=shown;
        shownInQuery+=shown;
      });
      section.querySelector('.shown-total').textContent=shownInQuery;
    });
  }
  [text,vk,dl].forEach(function(el){el.addEventListener('input',apply);el.addEventListener('change',apply);});
  apply();
})();
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _card(result: Result) -> str:
    image = result.file or result.thumb
    picture = f'<img loading="lazy" alt="" src="{_e(image)}">' if image else ""
    if result.page:
        picture = f'<a href="{_e(result.page)}" rel="noreferrer noopener">{picture}</a>'
    meta = [_e(shown(result.domain))]
    if result.width and result.height:
        meta.append(f"{result.width}×{result.height}")
    if result.size:
        meta.append(_e(human_bytes(result.size)))
    links = []
    if result.page:
        links.append(f'<a class="page" href="{_e(result.page)}" rel="noreferrer noopener">'
                     f"{_e(_('source page'))}</a>")  # fmt: skip
    if result.original:
        links.append(f'<a class="original" href="{_e(result.original)}" rel="noreferrer noopener">'
                     f"{_e(_('original'))}</a>")  # fmt: skip
    if result.file:
        links.append(f'<a class="file" href="{_e(result.file)}">{_e(_("downloaded file"))}</a>')
    badge = f' <span class="badge">{_e(_("VK/OK.ru"))}</span>' if result.vk else ""
    search = f"{result.title} {result.domain}".lower()
    return (
        f'<article class="card" data-id="{_e(result.image_id)}" data-vk="{int(result.vk)}" '
        f'data-downloaded="{int(bool(result.file))}" data-text="{_e(search)}">'
        f'{picture}<div class="title">{_e(result.title)}</div>'
        f'<div class="meta">{" · ".join(meta)}{badge}</div>'
        f'<div class="links">{" · ".join(links)}</div></article>'
    )


def _sites(sites: list[dict[str, str]]) -> str:
    if not sites:
        return ""
    items = []
    for site in sites:
        url = safe_url(site.get("url"))
        label = _e(site.get("title") or site.get("domain") or site.get("url") or "")
        link = f'<a href="{_e(url)}" rel="noreferrer noopener">{label}</a>' if url else label
        items.append(f"<li>{link} {_e(site.get('domain', ''))}</li>")
    summary = _e(_("Sites tab ({n})").format(n=len(sites)))
    return f'<details class="sites"><summary>{summary}</summary><ul>{"".join(items)}</ul></details>'


def _query(query: Query) -> str:
    by_domain: dict[str, list[Result]] = defaultdict(list)
    for result in query.results:
        by_domain[result.domain].append(result)
    groups = sorted(by_domain.items(), key=lambda item: (-len(item[1]), item[0]))
    parts = []
    for domain, results in groups:
        parts.append(
            f'<details class="domain" open data-domain="{_e(domain)}"><summary>{_e(shown(domain))} '
            f'(<span class="shown">{len(results)}</span>/{len(results)})</summary>'
            f'<div class="cards">{"".join(_card(r) for r in results)}</div></details>'
        )
    thumb = f'<img alt="" src="{_e(query.thumb)}">' if query.thumb else ""
    counts = _e(
        ngettext("{n} result", "{n} results", len(query.results)).format(n=len(query.results))
    )
    domains = _e(ngettext("{n} domain", "{n} domains", len(groups)).format(n=len(groups)))
    return (
        f'<section class="query" data-query="{_e(query.name)}"><h2>{thumb}'
        f'<span class="name">{_e(query.name)}</span> <small>'
        f'<span class="shown-total">{len(query.results)}</span> / {counts}, {domains}</small></h2>'
        f"{_sites(query.sites)}{''.join(parts)}</section>"
    )


def render(queries: list[Query]) -> str:
    total = sum(len(q.results) for q in queries)
    title = _e(_("Where each photo was found"))
    summary = _e(
        _("{photos} query photos, {results} results").format(photos=len(queries), results=total)
    )
    return (
        f'<!doctype html><html lang="{i18n.language()}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{title}</title><style>{STYLE}</style></head><body><header><h1>{title}</h1>"
        f'<div class="summary">{summary}</div><div class="filters">'
        f'<label><input id="filter-text" type="search" placeholder="{_e(_("domain or title"))}">'
        f'</label><label><input id="filter-vk" type="checkbox"> {_e(_("VK/OK.ru only"))}</label>'
        f'<label><input id="filter-downloaded" type="checkbox"> {_e(_("downloaded only"))}'
        f"</label></div></header><main>{''.join(_query(q) for q in queries)}</main>"
        f"<script>{SCRIPT}</script></body></html>"
    )


def write_report(db_path: Path, out: Path, photos: Path) -> tuple[Path, list[Query]]:
    if not db_path.is_file():
        from .cli import hint_for

        raise StepFailed(_("database not found: {path}").format(path=db_path) + hint_for(db_path))
    queries = collect(db_path, photos, out.parent)
    atomic_write_text(out, render(queries))
    return out, queries


def build_parser() -> argparse.ArgumentParser:
    from .cli import add_common_flags

    parser = argparse.ArgumentParser(
        prog="yandex-reverse report",
        description=_("One HTML file showing, per query photo, every result and where it is."),
    )
    parser.add_argument(
        "--db", type=Path, default=DEFAULT_DB,
        help=_("the pipeline database (default: {path})").format(path=DEFAULT_DB),
    )  # fmt: skip
    parser.add_argument(
        "--photos", type=Path, default=None,
        help=_("folder of the query photos (default: photos/ if it exists, else the DB's folder)"),
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT,
        help=_("the HTML file to write (default: {path})").format(path=DEFAULT_OUT),
    )  # fmt: skip
    add_common_flags(parser, yes=True, log_file=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file)
    db_path = args.db.absolute()
    photos = args.photos
    if photos is None:
        photos = db_path.parent / "photos"
        if not photos.is_dir():
            photos = db_path.parent
    out, queries = write_report(db_path, args.out.absolute(), photos)
    results = sum(len(q.results) for q in queries)
    console.print(
        esc(
            _("Report: {path} ({photos} query photos, {results} results)").format(
                path=out, photos=len(queries), results=results
            )
        )
    )
    return 0
