"""``make demo``: the whole pipeline, steps 1 → 7.3, against the offline imitation.

It starts the imitation of Yandex Images and of the image web on 127.0.0.1,
makes a dozen query photos and runs the nine numbered scripts in order,
exactly as a user would (with flags instead of answers), in a fresh ``demo/``
folder. Every step resumes, so a second ``make demo`` reuses what is there
and finishes quickly. At the end it prints where everything is and how many
images reached each stage.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from .cli import add_common_flags
from .console import StepFailed, console, esc, table
from .fake_yandex.image_web import ImageWebServer
from .fake_yandex.site import FakeYandex, ServerThread
from .fsutil import atomic_write_text
from .i18n import N_, _
from .imageinfo import iter_images
from .run import DOWNLOADS, REPORT, SORTED, pipeline, run_pipeline

PHOTOS = 12


def make_photos(folder: Path, count: int = PHOTOS) -> list[Path]:
    """Deterministic query photos (gradients and shapes), a few PNGs among JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for index in range(count):
        ext = ".png" if index % 5 == 4 else ".jpg"
        path = folder / f"photo_{index + 1:02d}{ext}"
        made.append(path)
        if path.exists():
            continue
        width, height = (640, 480) if index % 3 else (480, 640)
        image = Image.new("RGB", (width, height))
        draw = ImageDraw.Draw(image)
        for y in range(height):
            shade = (index * 37 + y * 255 // height) % 256
            draw.line([(0, y), (width, y)], fill=(shade, (index * 91) % 256, 255 - shade))
        for k in range(4):
            x, y = (index * 53 + k * 97) % width, (index * 31 + k * 71) % height
            draw.ellipse([x, y, x + 90, y + 60], fill=((k * 80) % 256, 200, (index * 20) % 256))
        image.save(path, quality=90) if ext == ".jpg" else image.save(path)
    return made


def scalar(db_path: Path, sql: str) -> int:
    if not db_path.exists():
        return 0
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql).fetchone()[0] or 0
    finally:
        conn.close()


def count_images(folder: Path, *, recursive: bool = True) -> int:
    return sum(1 for _ in iter_images(folder, recursive=recursive)) if folder.is_dir() else 0


def run(
    demo: Path,
    *,
    photos: int = PHOTOS,
    per_page: int = 12,
    pages: int = 2,
    fault_rate: float = 0.1,
    quality_model: str = "piqe",
) -> dict[str, int]:
    """Run steps 1 → 7.3 in ``demo``; return how many images reached each stage."""
    made = make_photos(demo / "photos", photos)
    fake = FakeYandex(pages=pages, first_page=per_page, per_page=per_page, fault_rate=fault_rate)
    with ServerThread(fake) as yandex, ImageWebServer() as web:
        console.print(
            esc(_("Yandex imitation: {yandex}   image web (proxy): {proxy}")).format(
                yandex=esc(yandex.base_url), proxy=esc(web.proxy_url)
            ),
        )
        extra = {
            "crawl": ["--base-url", yandex.base_url, "--max-tabs", "4"],
            "domains": ["--top", "15"],
            "download": ["--proxy", web.proxy_url, "--timeout", "5", "--retries", "1"],
            "quality": ["--model", quality_model],
        }
        run_pipeline(demo, pipeline(photos="photos"), extra)
    downloads = demo / DOWNLOADS
    sorted_dir = demo / SORTED
    database = demo / "yandex_images.db"
    per_photo = [
        {eid for ids in record.pages.values() for eid in ids} for record in fake.served.values()
    ]
    return {
        N_("query photos"): len(made),
        N_("XHR files"): sum(1 for _ in (demo / "XHR").glob("*.json")),
        N_("results served by the imitation (this run)"): len(set().union(*per_photo)),
        N_("photo → result links served (this run)"): sum(map(len, per_photo)),
        N_("photo → result links in yandex_images.db"): scalar(
            database, "SELECT count(*) FROM query_results"
        ),
        N_("results in yandex_images.db"): scalar(database, "SELECT count(*) FROM images"),
        N_("VK results in vk_images.db"): scalar(
            demo / "vk_images.db", "SELECT count(*) FROM images"
        ),
        N_("downloads done"): scalar(
            database, "SELECT count(*) FROM downloads WHERE status = 'done'"
        ),
        N_("downloads failed"): scalar(
            database, "SELECT count(*) FROM downloads WHERE status = 'failed'"
        ),
        N_("images downloaded (on disk)"): count_images(downloads),  # _duplicates/ is inside
        N_("duplicates in quarantine"): count_images(downloads / "_duplicates"),
        N_("images after deduplication"): count_images(downloads, recursive=False),
        N_("sorted by orientation"): count_images(sorted_dir / "orientation"),
        N_("sorted by megapixels"): count_images(sorted_dir / "megapixels"),
        N_("sorted by quality"): sum(
            count_images(sorted_dir / "quality" / category)
            for category in ("high", "medium", "low")
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="yandex-reverse demo",
        description=_("The whole pipeline, steps 1 → 7.3, against the offline imitation."),
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("demo"), help=_("working folder (default: demo)")
    )
    parser.add_argument(
        "--photos",
        type=int,
        default=PHOTOS,
        help=_("query photos (default {n})").format(n=PHOTOS),
    )
    parser.add_argument("--per-page", type=int, default=12, help=_("results per page (default 12)"))
    parser.add_argument(
        "--pages", type=int, default=2, help=_("XHR pages after the first (default 2)")
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.1,
        help=_("share of results whose original URL fails (404, 429, HTML ...; default 0.1)"),
    )
    parser.add_argument(
        "--quality-model",
        default="piqe",
        help=_(
            "pyiqa metric for step 7.3 (default piqe: needs no weights, so the demo runs offline)"
        ),
    )
    add_common_flags(parser)
    args = parser.parse_args(argv)
    demo = args.dir.absolute()
    demo.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        numbers = run(
            demo,
            photos=args.photos,
            per_page=args.per_page,
            pages=args.pages,
            fault_rate=args.fault_rate,
            quality_model=args.quality_model,
        )
    except StepFailed as exc:
        console.print(f"[red]{esc(_('Demo stopped: {reason}').format(reason=exc))}[/red]")
        return 1
    console.rule(f"[bold]{esc(_('Demo finished'))}")
    rows = [(_(stage), count) for stage, count in numbers.items()]  # the keys stay English (JSON)
    console.print(table(_("What reached each stage"), (_("stage"), _("count")), rows))
    console.print(
        _(
            "Working folder: {folder}\n"
            "  photos/            the query photos\n"
            "  XHR/               saved Yandex answers (+ .progress.json, errors.log)\n"
            "  yandex_images.db   results; vk_images.db: the VK subset\n"
            "  domains_report.*   domain statistics (JSON, CSV, PNG)\n"
            "  yandex_images/     downloaded originals; _duplicates/ holds the quarantine\n"
            "  sorted/            orientation/, megapixels/, quality/ (+ quality_report.db/.json)\n"
            "  report.html        where each photo was found\n"
            "  demo_summary.json  the table above\n"
            "Total time: {seconds:.0f} s. Run `make demo` again: every step resumes."
        ).format(folder=demo, seconds=time.perf_counter() - started),
        markup=False,
    )
    atomic_write_text(demo / "demo_summary.json", json.dumps(numbers, indent=2, ensure_ascii=False))
    console.print(esc(_("Report: {path}").format(path=demo / REPORT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
