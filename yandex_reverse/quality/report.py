"""Step 7.3's records: ``quality_report.db`` (the original's table, extended),
the rows the scorer makes, categories, ``quality_report.json`` and the histogram.

``quality_report.db`` is keyed by the path relative to the source; a row is
reused while the file's size, mtime, the models and the max side are
unchanged; every batch is committed, so Ctrl-C loses nothing.
"""

from __future__ import annotations

import io
import json
import math
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fsutil import atomic_write_bytes, atomic_write_text
from ..i18n import _, ngettext

if TYPE_CHECKING:
    from .decode import Task
    from .metrics import Scale

DB_NAME = "quality_report.db"
JSON_NAME = "quality_report.json"
HISTOGRAM_NAME = "quality_histogram.png"
CATEGORIES = ("high", "medium", "low")

COLUMNS: dict[str, str] = {
    # the original script's columns
    "filename": "TEXT NOT NULL UNIQUE",
    "width": "INTEGER",
    "height": "INTEGER",
    "format": "TEXT",
    "mode": "TEXT",
    "file_size": "INTEGER",
    "musiq_score": "REAL",
    "clipiqa_raw_score": "REAL",
    "clipiqa_score": "REAL",
    "max_score": "REAL",
    "category": "TEXT",
    "error_message": "TEXT",
    "processing_time": "REAL",
    "vram_usage": "REAL",
    "ram_usage": "REAL",
    "processed_at": "TEXT",
    # added: what makes a row reusable and what the score means
    "path": "TEXT",
    "file_mtime_ns": "INTEGER",
    "models": "TEXT",
    "scale": "TEXT",
    "scores_json": "TEXT",
    "max_side": "INTEGER",
    "error_stage": "TEXT",
    "placed_path": "TEXT",
}


def open_db(path: Path) -> sqlite3.Connection:
    """Open (or create) ``quality_report.db``; a DB from the original script gains columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS image_quality (id INTEGER PRIMARY KEY AUTOINCREMENT, {columns})"
    )
    have = {row[1] for row in conn.execute("PRAGMA table_info(image_quality)")}
    for name, kind in COLUMNS.items():
        if name not in have:
            conn.execute(
                f"ALTER TABLE image_quality ADD COLUMN {name} {kind.replace(' NOT NULL UNIQUE', '')}"
            )
    conn.commit()
    return conn


def upsert(conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or update by ``filename``; the row id stays (the original's changed)."""
    if not rows:
        return
    names = list(COLUMNS)
    placeholders = ", ".join("?" for _ in names)
    updates = ", ".join(f"{n}=excluded.{n}" for n in names if n != "filename")
    sql = (
        f"INSERT INTO image_quality ({', '.join(names)}) VALUES ({placeholders}) "
        f"ON CONFLICT(filename) DO UPDATE SET {updates}"
    )
    with conn:
        conn.executemany(sql, [tuple(row.get(n) for n in names) for row in rows])


def now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def base_row(task: Task, now: str, base: dict[str, Any]) -> dict[str, Any]:
    return {
        "filename": task.filename,
        "width": task.width or None,
        "height": task.height or None,
        "format": task.format,
        "mode": task.mode,
        "file_size": task.file_size,
        "file_mtime_ns": task.mtime_ns,
        "path": str(task.path),
        "processed_at": now,
        "placed_path": None,
        **base,
    }


def error_row(
    task: Task, reason: str, stage: str, now: str, base: dict[str, Any]
) -> dict[str, Any]:
    return {**base_row(task, now, base), "error_message": reason, "error_stage": stage}


def score_row(
    task: Task,
    raw: dict[str, float],
    scales: dict[str, Scale | None],
    now: str,
    base: dict[str, Any],
    seconds: float,
    vram: float | None,
    ram: float,
) -> dict[str, Any]:
    scaled = {name: (scales[name].apply(v) if scales[name] else v) for name, v in raw.items()}
    row = base_row(task, now, base)
    row.update(
        max_score=round(max(scaled.values()), 4),
        scores_json=json.dumps({n: {"raw": raw[n], "scaled": scaled[n]} for n in raw}),
        musiq_score=round(raw["musiq"], 2) if "musiq" in raw else None,
        clipiqa_raw_score=round(raw["clipiqa"], 4) if "clipiqa" in raw else None,
        clipiqa_score=round(raw["clipiqa"] * 100, 2) if "clipiqa" in raw else None,
        processing_time=round(seconds, 4),
        vram_usage=vram,
        ram_usage=ram,
        error_message=None,
        error_stage=None,
    )
    return row


def cutoffs(
    scores: Sequence[float],
    thresholds: tuple[float, float] | None,
    percentiles: tuple[float, float] | None,
) -> tuple[float, float]:
    """(high, medium) score cut-offs: the thresholds, or the percentiles of ``scores``."""
    if percentiles is None:
        assert thresholds is not None
        return thresholds
    import numpy as np

    if not scores:
        return (math.inf, math.inf)
    low_pct, high_pct = percentiles
    return float(np.percentile(scores, high_pct)), float(np.percentile(scores, low_pct))


def categorize(score: float, cut: tuple[float, float]) -> str:
    high, medium = cut
    return "high" if score >= high else "medium" if score >= medium else "low"


def assign_categories(
    conn: sqlite3.Connection,
    models: Sequence[str],
    thresholds: tuple[float, float] | None,
    percentiles: tuple[float, float] | None,
) -> tuple[float, float]:
    """Every scored row of this setup gets its category (percentiles rank them all)."""
    rows = conn.execute(
        "SELECT id, max_score FROM image_quality WHERE error_message IS NULL AND max_score IS NOT NULL"
        " AND models = ?",
        ("+".join(models),),
    ).fetchall()
    cut = cutoffs([r["max_score"] for r in rows], thresholds, percentiles)
    with conn:
        conn.executemany(
            "UPDATE image_quality SET category = ? WHERE id = ?",
            [(categorize(r["max_score"], cut), r["id"]) for r in rows],
        )
        conn.execute("UPDATE image_quality SET category = NULL WHERE error_message IS NOT NULL")
    return cut


def write_reports(
    conn: sqlite3.Connection, dest: Path, models: Sequence[str], cut: tuple[float, float]
) -> dict[str, Any]:
    """JSON of every row (all runs), histogram PNG, per-category figures."""
    report: dict[str, Any] = {}
    per_category: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    scores = []
    errors = 0
    for row in conn.execute("SELECT * FROM image_quality ORDER BY filename"):
        entry = {
            "width": row["width"],
            "height": row["height"],
            "format": row["format"],
            "mode": row["mode"],
            "file_size": row["file_size"],
            "musiq": row["musiq_score"],
            "clipiqa_raw": row["clipiqa_raw_score"],
            "clipiqa": row["clipiqa_score"],
            "max_score": row["max_score"],
            "error": row["error_message"],
            "category": row["category"],
            "path": _relative(row["placed_path"] or row["path"], dest),
            "source_path": _relative(row["path"], dest),
            "processing_time": row["processing_time"],
            "vram_usage": row["vram_usage"],
            "ram_usage": row["ram_usage"],
            "models": row["models"],
            "scale": row["scale"],
            "scores": json.loads(row["scores_json"]) if row["scores_json"] else None,
            "processed_at": row["processed_at"],
        }
        report[row["filename"]] = entry
        if row["error_message"]:
            errors += 1
        elif row["category"] in per_category and row["models"] == "+".join(models):
            per_category[row["category"]].append(row["max_score"])
            scores.append(row["max_score"])
    atomic_write_text(dest / JSON_NAME, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    if scores:
        _histogram(scores, cut, models, dest / HISTOGRAM_NAME)
    return {"per_category": per_category, "errors": errors, "total": len(report)}


def _relative(path: str | None, folder: Path) -> str | None:
    """A path as seen from the report's folder (posix), so the report stays true when
    the working folder is moved or copied to another machine."""
    if not path:
        return None
    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return Path(path).as_posix()


def empty_category_hint(
    per_category: dict[str, list[float]], cut: tuple[float, float]
) -> tuple[str, float, float, tuple[float, float]] | None:
    """With fixed thresholds, the first category no image reached, the lowest and highest
    score, and thresholds that would split these scores 30/40/30; None if all are used."""
    scores = sorted(v for values in per_category.values() for v in values)
    empty = next((c for c in CATEGORIES if not per_category.get(c)), None)
    if empty is None or len(scores) < 3:
        return None
    import numpy as np

    suggestion = (float(np.percentile(scores, 70)), float(np.percentile(scores, 30)))
    return empty, scores[0], scores[-1], suggestion


def preload_plotting() -> None:
    """Import matplotlib for :func:`_histogram` in a background thread, while the
    images are scored (its ~0.5-1 s import then no longer waits at the end of the
    run; the scoring threads spend their time in torch, outside the GIL). A failed
    import here is left for :func:`_histogram` to raise."""
    import threading

    def load() -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot
        except Exception:  # raised again, in place, by _histogram
            pass

    threading.Thread(target=load, name="quality-plot-import", daemon=True).start()


def _histogram(
    scores: list[float], cut: tuple[float, float], models: Sequence[str], target: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    axes.hist(scores, bins=50, color="#4c72b0")
    for value, label, colour in (
        (cut[0], _("high"), "#2ca02c"),
        (cut[1], _("medium"), "#ff7f0e"),
    ):
        if math.isfinite(value):
            axes.axvline(value, color=colour, linestyle="--", label=f"{label} >= {value:.1f}")
    axes.set_xlabel(_("quality score 0-100 ({models})").format(models="+".join(models)))
    axes.set_ylabel(_("images"))
    axes.set_title(ngettext("{n} image", "{n} images", len(scores)).format(n=len(scores)))
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(target, buffer.getvalue())
