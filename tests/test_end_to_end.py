"""The whole pipeline, steps 1 → 7.3, as ``make demo`` runs it, on a small set.

Checks the numbers that flow from step to step: the results the imitation
served = the rows imported = the rows analysed; the downloads = the results
with a good URL; the files sorted = the files left after deduplication. A
second run resumes every step and changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, rows
from yandex_reverse.imageinfo import iter_images

pytestmark = pytest.mark.browser


def run_demo(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "yandex_reverse.demo", "--dir", str(folder),
            "--photos", "3", "--per-page", "6", "--pages", "1", "--fault-rate", "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1"},
    )  # fmt: skip


def scalar(db: Path, sql: str) -> int:
    return rows(db, sql)[0][0]


def images_in(folder: Path, *, recursive: bool = True) -> set[str]:
    return {p.name for p in iter_images(folder, recursive=recursive)}


def test_pipeline_numbers_flow_from_step_to_step_and_a_rerun_resumes(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    first = run_demo(demo)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    numbers = json.loads((demo / "demo_summary.json").read_text(encoding="utf-8"))
    database = demo / "yandex_images.db"

    # 1 → 2 → 3: what Yandex served is what was imported and what was analysed.
    served = numbers["results served by the imitation (this run)"]
    assert served > 0
    assert numbers["results in yandex_images.db"] == served
    assert (
        numbers["photo → result links in yandex_images.db"]
        == numbers["photo → result links served (this run)"]
    )
    report = json.loads((demo / "domains_report.json").read_text(encoding="utf-8"))
    assert report["results"] == served
    assert report["views"]["results"]["urls"] == served
    assert sum(report["views"]["results"]["services"].values()) == served  # all known hosts
    vk_rows = scalar(demo / "vk_images.db", "SELECT count(*) FROM images")
    vk_in_main = scalar(
        database,
        "SELECT count(*) FROM images WHERE origUrl LIKE '%.userapi.com/%' "
        "OR origUrl LIKE '%.vkuserphoto.ru/%'",
    )
    assert vk_rows == vk_in_main == report["vk"]["results"] > 0

    # 5: every result has a good URL here (no faults), so every result got its
    # original; identical content (a repost at the same size) is stored once.
    downloads = demo / "yandex_images"
    on_disk = images_in(downloads)  # the quarantine _duplicates/ is inside
    assert numbers["downloads failed"] == 0
    assert numbers["downloads done"] == served
    distinct = scalar(
        database, "SELECT count(DISTINCT sha256) FROM downloads WHERE status = 'done'"
    )
    assert len(on_disk) == numbers["images downloaded (on disk)"] == distinct
    assert not list(downloads.rglob("*.part"))

    # 6: quarantined + kept = downloaded; the report lists exactly what moved.
    kept = images_in(downloads, recursive=False)
    quarantined = images_in(downloads / "_duplicates")
    assert len(kept) + len(quarantined) == distinct
    assert numbers["duplicates in quarantine"] == len(quarantined)

    # 7.x: every step sorted exactly the files left after deduplication.
    for stage in ("orientation", "megapixels"):
        assert images_in(demo / "sorted" / stage) == kept, stage
    quality = demo / "sorted" / "quality"
    by_quality = [images_in(quality / category) for category in ("high", "medium", "low")]
    assert set().union(*by_quality) == kept
    assert sum(map(len, by_quality)) == len(kept)
    assert scalar(
        demo / "sorted" / "quality" / "quality_report.db", "SELECT count(*) FROM image_quality"
    ) == len(kept)

    # A second run resumes every step: nothing uploaded, downloaded, moved or copied again.
    before = sorted(
        str(p.relative_to(demo)) for p in demo.rglob("*") if p.is_file() and "log" not in p.suffix
    )
    second = run_demo(demo)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    again = json.loads((demo / "demo_summary.json").read_text(encoding="utf-8"))
    assert again["results served by the imitation (this run)"] == 0
    for key in (
        "results in yandex_images.db",
        "images after deduplication",
        "duplicates in quarantine",
        "sorted by orientation",
        "sorted by megapixels",
        "sorted by quality",
    ):
        assert again[key] == numbers[key], key
    after = sorted(
        str(p.relative_to(demo)) for p in demo.rglob("*") if p.is_file() and "log" not in p.suffix
    )
    new_files = set(after) - set(before)
    assert all("_backup_" in f or f.endswith(".json") for f in new_files), new_files
