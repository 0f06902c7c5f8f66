"""Step 7.3's command: flags and questions, then scan, score, categorise, sort, report.

The scoring itself is :class:`~.scorer.Scorer`; the DB, categories and report
files are in :mod:`.report`.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import console, i18n, raycluster
from ..cli import Yes, add_common_flags, sorted_dest
from ..console import UsageError, one_line
from ..i18n import N_, _, ngettext
from ..imageinfo import iter_images
from ..labels import shown
from .decode import Task
from .metrics import PRETRAINED_ENV, weights_problem
from .report import (
    CATEGORIES,
    DB_NAME,
    HISTOGRAM_NAME,
    JSON_NAME,
    assign_categories,
    empty_category_hint,
    open_db,
    preload_plotting,
    upsert,
    write_reports,
)
from .scorer import Scorer, ScoreSettings

DEFAULT_THRESHOLDS = (65.0, 50.0)


@dataclass
class Options:
    source: Path
    dest: Path
    models: tuple[str, ...]
    mode: str
    device: str
    batch_size: int | None
    max_side: int
    thresholds: tuple[float, float] | None
    percentiles: tuple[float, float] | None
    weights_dir: Path | None
    dry_run: bool
    errors_folder: bool
    recursive: bool
    workers: int | None
    precision: str = "auto"
    executor: str = "local"  # or "ray": see ray_exec.py
    ray_address: str | None = None
    gpus_per_worker: float | None = None

    def settings(self) -> ScoreSettings:
        return ScoreSettings.from_env(
            models=self.models,
            device=self.device,
            batch_size=self.batch_size,
            max_side=self.max_side,
            weights_dir=self.weights_dir,
            workers=self.workers,
            precision=self.precision,
        )


def _pair(text: str, flag: str) -> tuple[float, float]:
    try:
        first, second = (float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(
            _("{flag} takes two numbers separated by a comma, not {text!r}").format(
                flag=flag, text=text
            )
        ) from None
    return first, second


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="7_3_separate_images_by_quality.py",
        description=_(
            "Score every image with pyiqa (MUSIQ, CLIPIQA or any no-reference metric) and "
            "sort it into high/, medium/ and low/. All scores are put on one 0-100 scale, "
            "higher is better: MUSIQ as is, CLIPIQA x100, any other metric through its "
            "documented score range, inverted when lower is better (piqe: 100 - piqe). "
            "'both' uses the higher of MUSIQ and CLIPIQA x100. Re-runs score only new or "
            "changed images."
        ),
    )
    parser.add_argument("--source", type=Path, help=_("folder with the images (asked if missing)"))
    parser.add_argument(
        "--dest", type=Path, help=_("output folder (default: sorted/quality in the working folder)")
    )
    parser.add_argument(
        "--model",
        help=_(
            "musiq (default), clipiqa, both, or any pyiqa no-reference metric name "
            "(e.g. piqe, entropy, topiq_nr)"
        ),
    )
    parser.add_argument("--mode", choices=("copy", "move"), help=_("copy (default) or move"))
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help=_("auto (default): a CUDA GPU when torch sees one, else the CPU"),
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help=_(
            "images per model call (default 16 on a GPU; on the CPU 1 for MUSIQ, 2 for the others); "
            "halved on out-of-memory"
        ),
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32"),
        default="auto",
        help=_(
            "auto (default): MUSIQ runs in bfloat16 on CPUs with bfloat16 units (about 2x "
            "faster) when the first batch's scores stay within 0.05 of float32; fp32: always "
            "float32"
        ),
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=1920,
        help=_("longer side is shrunk to this in memory before scoring (default 1920, 0 = never)"),
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--thresholds",
        help=_(
            "HIGH,MEDIUM on the 0-100 scale: >= HIGH is high, >= MEDIUM medium, "
            "else low (default 65,50)"
        ),
    )
    group.add_argument(
        "--percentiles",
        help=_(
            "LOW,HIGH percent ranks instead of scores, e.g. 30,70: bottom 30%% low, "
            "top 30%% high (ranked over every scored image in the report)"
        ),
    )
    parser.add_argument(
        "--weights-dir",
        type=Path,
        help=_(
            "torch hub folder with the weight files (pyiqa/<file>, clip/<file>, "
            "checkpoints/<file>) for machines without internet; default: torch's own "
            "($TORCH_HOME/hub, ~/.cache/torch/hub)"
        ),
    )
    parser.add_argument(
        "--dry-run", action="store_true", help=_("score and write the reports, move nothing")
    )
    parser.add_argument("-y", "--yes", action=Yes, help=_("start without asking"))
    parser.add_argument(
        "--errors-folder",
        action="store_true",
        help=_("put images that cannot be scored into <dest>/errors (default: leave in place)"),
    )
    parser.add_argument(
        "--recursive", action="store_true", help=_("also score images in subfolders")
    )
    parser.add_argument(
        "--workers",
        type=int,
        help=_("worker threads (default: one per CPU core; with a GPU: decode threads)"),
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=Path("7_3_separate_images_by_quality.log"),
        help=_("details and tracebacks (default: 7_3_separate_images_by_quality.log)"),
    )
    raycluster.add_flags(parser, gpus=True)
    add_common_flags(parser)
    return parser


MODEL_CHOICES = (
    ("musiq", N_("MUSIQ only (recommended; needs its weights file)")),
    ("clipiqa", N_("CLIPIQA only (faster, less accurate; needs CLIP's weights)")),
    ("both", N_("both (the higher score is used)")),
    ("piqe", N_("PIQE (needs no weights; fast, judges blur, noise and blocking only)")),
)


def _ask_model(default: str) -> str:
    choices = [(value, i18n._(label)) for value, label in MODEL_CHOICES]  # marked with N_
    return console.ask_choice(_("Quality model"), choices, flag="--model", default=default)


def _models(answer: str) -> tuple[str, ...]:
    model = answer.strip().lower()
    return ("musiq", "clipiqa") if model == "both" else (model,)


def _pretrained() -> bool:
    return os.environ.get(PRETRAINED_ENV, "1") != "0"


def resolve_options(args: argparse.Namespace) -> Options:
    """Flags first; questions (as in the original) only on a terminal."""
    raycluster.check_flags(args)
    source: Path
    while True:
        source = (
            args.source.expanduser().absolute()
            if args.source
            else console.ask_folder(_("Folder with the images"), flag="--source")
        )
        if not source.is_dir():
            raise UsageError(_("not a folder: {path} (--source)").format(path=source))
        count = sum(1 for _ in iter_images(source, recursive=args.recursive))
        if count or args.source or not console.is_interactive():
            break
        console.console.print(
            "[yellow]"
            + _("No images in {folder}. Try again.").format(folder=console.esc(source))
            + "[/yellow]"
        )
    console.console.print(
        ngettext("Found {n} image in {folder}", "Found {n} images in {folder}", count).format(
            n=count, folder=console.esc(source)
        )
    )

    weights = args.weights_dir.expanduser().absolute() if args.weights_dir else None
    if weights is not None and not weights.is_dir():
        raise UsageError(_("--weights-dir is not a folder: {path}").format(path=weights))
    models = _models(args.model or _ask_model("musiq"))
    asking = console.is_interactive() and not console.answering_with_defaults()
    if args.model is None and not asking:
        # The default taken unasked (--yes, no terminal): without its weights, piqe,
        # with one line saying so and where the weights go. A --model given stays.
        problem = weights_problem(models, weights, pretrained=_pretrained())
        if problem is not None:
            console.console.print(
                "[yellow]"
                + console.esc(_("Taking piqe, which needs no weights: {problem}").format(
                    problem=problem
                ))
                + "[/yellow]"
            )  # fmt: skip
            models = ("piqe",)
    # On a terminal the weights are checked now, before the other questions; without
    # one a --model given stops the step with the same line when it loads the metric.
    while asking:
        problem = weights_problem(models, weights, pretrained=_pretrained())
        if problem is None:
            break
        console.console.print(f"[yellow]{console.esc(problem)}[/yellow]")
        models = _models(_ask_model("piqe"))
    mode = args.mode or console.ask_choice(
        _("Sort mode"),
        [("copy", _("copy (originals stay)")), ("move", _("move"))],
        flag="--mode",
        default="copy",
    )
    default_dest = sorted_dest("quality")
    if args.dest:
        dest = args.dest.expanduser().absolute()
    else:
        where = console.ask_choice(
            _("Output folder"),
            [("default", f"{default_dest}"), ("other", _("another path"))],
            flag="--dest",
            default="default",
        )
        dest = default_dest
        if where == "other":
            dest = console.clean_path_answer(console.ask_text(_("Output folder"), flag="--dest"))
    thresholds = percentiles = None
    if args.percentiles:
        percentiles = _pair(args.percentiles, "--percentiles")
        if not 0 <= percentiles[0] <= percentiles[1] <= 100:
            raise UsageError(_("--percentiles LOW,HIGH need 0 <= LOW <= HIGH <= 100"))
    else:
        thresholds = _pair(args.thresholds, "--thresholds") if args.thresholds else None
        thresholds = thresholds or DEFAULT_THRESHOLDS
        if thresholds[0] < thresholds[1]:
            raise UsageError(_("--thresholds HIGH,MEDIUM need HIGH >= MEDIUM"))
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(_("--batch-size must be at least 1"))
    if args.max_side < 0:
        raise UsageError(_("--max-side must be 0 (never shrink) or a positive number"))
    return Options(
        source=source,
        dest=dest,
        models=models,
        mode=mode,
        device=args.device,
        batch_size=args.batch_size,
        max_side=args.max_side,
        thresholds=thresholds,
        percentiles=percentiles,
        weights_dir=weights,
        dry_run=args.dry_run,
        errors_folder=args.errors_folder,
        recursive=args.recursive,
        workers=args.workers,
        precision=args.precision,
        executor=args.executor,
        ray_address=args.ray_address,
        gpus_per_worker=args.gpus_per_worker,
    )


@dataclass
class RunStats:
    found: int = 0
    reused: int = 0
    scored: int = 0
    errors: int = 0
    placed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    peak_gpu_bytes: int = 0


def scan(opts: Options) -> list[Task]:
    tasks = []
    exclude = [opts.dest]
    for path in iter_images(opts.source, recursive=opts.recursive, exclude=exclude):
        try:
            st = path.stat()
        except OSError:
            continue
        filename = path.relative_to(opts.source).as_posix()
        tasks.append(Task(path, filename, st.st_size, st.st_mtime_ns))
    return tasks


def is_reusable(row: sqlite3.Row | None, task: Task, opts: Options) -> bool:
    """A stored row stands while the file and the scoring setup are unchanged.
    Decode errors stand too (the file is what it is); model errors are retried."""
    if row is None:
        return False
    same = (
        row["file_size"] == task.file_size
        and row["file_mtime_ns"] == task.mtime_ns
        and row["models"] == "+".join(opts.models)
        and row["max_side"] == opts.max_side
    )
    return same and row["error_stage"] in (None, "decode")


def score_images(
    tasks: list[Task], opts: Options, conn: sqlite3.Connection, stats: RunStats
) -> None:
    """Score in this process (decode threads, model batches), commit after every batch."""
    scorer = Scorer(opts.settings())
    preload_plotting()  # the histogram's import, alongside the scoring
    with console.progress(_("Scoring"), total=len(tasks)) as advance:
        for rows in scorer.iter_rows(tasks):
            upsert(conn, rows)
            stats.errors += sum(1 for r in rows if r["error_message"])
            stats.scored += sum(1 for r in rows if not r["error_message"])
            advance(len(rows))
    note_device(stats, scorer.halvings, scorer.peak_gpu_bytes())


def note_device(stats: RunStats, halvings: int, peak_gpu_bytes: int) -> None:
    """Batch halvings on out-of-memory (said now) and the peak GPU memory (in the summary)."""
    if halvings:
        console.console.print(
            ngettext(
                "Batch size halved {n} time on out-of-memory",
                "Batch size halved {n} times on out-of-memory",
                halvings,
            ).format(n=halvings)
        )
    stats.peak_gpu_bytes = peak_gpu_bytes


def sort_files(
    tasks: list[Task], opts: Options, conn: sqlite3.Connection, stats: RunStats
) -> list[tuple[str, str]]:
    """Place every present, scored image into its category folder; return the failures."""
    from ..fsutil import place_file

    failed: list[tuple[str, str]] = []
    names = [t.filename for t in tasks]
    found = {}
    for start in range(0, len(names), 500):
        part = names[start : start + 500]
        marks = ",".join("?" for _ in part)
        for row in conn.execute(f"SELECT * FROM image_quality WHERE filename IN ({marks})", part):
            found[row["filename"]] = row
    updates = []
    for task in console.track(tasks, _("Sorting"), total=len(tasks)):
        row = found.get(task.filename)
        if row is None:
            continue
        if row["error_message"]:
            failed.append((task.filename, row["error_message"]))
            if not opts.errors_folder:
                continue
            folder = "errors"
        else:
            folder = row["category"] or "low"
        if not task.path.exists():
            continue
        try:
            placed = place_file(task.path, opts.dest / folder, mode=opts.mode, dry_run=opts.dry_run)
        except OSError as exc:
            failed.append((task.filename, _("not placed: {reason}").format(reason=one_line(exc))))
            continue
        stats.placed[f"{folder}: {placed.status}"] += 1
        if not opts.dry_run:
            updates.append((str(placed.target), task.filename))
    with conn:
        conn.executemany("UPDATE image_quality SET placed_path = ? WHERE filename = ?", updates)
    return failed


def print_report(
    opts: Options,
    stats: RunStats,
    summary: dict[str, Any],
    cut: tuple[float, float],
    failed: list[tuple[str, str]],
) -> None:
    per = summary["per_category"]
    scored = sum(len(v) for v in per.values())
    labels = {
        "high": _("High (>= {high:.1f})").format(high=cut[0]),
        "medium": _("Medium ({medium:.1f} - {high:.1f})").format(medium=cut[1], high=cut[0]),
        "low": _("Low (< {medium:.1f})").format(medium=cut[1]),
    }
    rows = [
        (
            labels[c],
            len(per[c]),
            f"{len(per[c]) / scored * 100:.1f}%" if scored else "",
            sum(per[c]) / len(per[c]) if per[c] else None,
        )
        for c in CATEGORIES
    ]
    console.console.print(
        console.table(
            _("Quality categories (all scored images in the report)"),
            (_("category"), _("images"), _("share"), _("mean score")),
            rows,
        )
    )
    hint = None if opts.percentiles else empty_category_hint(per, cut)
    if hint:
        empty, lowest, highest, (high, medium) = hint
        console.console.print(
            "[yellow]"
            + _(
                "No image is {category}: with {models} the scores run from {lowest:.1f} to "
                "{highest:.1f}, and the thresholds are {cut_high:g},{cut_medium:g}. Try "
                "--percentiles 30,70 (rank the images) or --thresholds {high:.1f},{medium:.1f} "
                "(30% high, 30% low on these scores)."
            ).format(
                category=empty,
                models="+".join(opts.models),
                lowest=lowest,
                highest=highest,
                cut_high=cut[0],
                cut_medium=cut[1],
                high=high,
                medium=medium,
            )
            + "[/yellow]"
        )
    for name, reason in failed[:20]:
        console.console.print(
            "[yellow]" + _("not scored:") + f"[/yellow] {console.esc(name)}: {console.esc(reason)}"
        )
    if len(failed) > 20:
        console.console.print(
            _("... and {n} more (see {file})").format(n=len(failed) - 20, file=JSON_NAME)
        )
    counts: list[tuple[str, Any]] = [
        (_("images found"), stats.found),
        (_("unchanged, score reused"), stats.reused),
        (_("scored now"), stats.scored),
        (_("could not be scored now"), stats.errors),
        (
            _("not scored (left in place)") if not opts.errors_folder else _("not scored"),
            len(failed),
        ),
    ]
    for key, value in sorted(stats.placed.items()):
        folder, status = key.split(": ", 1)  # "high: copied" (folder name: sorting's status)
        key = f"{folder}: {shown(status)}"
        counts.append((_("would be {what}").format(what=key) if opts.dry_run else key, value))
    if stats.peak_gpu_bytes:
        counts.append((_("peak GPU memory"), console.human_bytes(stats.peak_gpu_bytes)))
    console.print_summary(
        _("Quality sorting (dry run: nothing moved)") if opts.dry_run else _("Quality sorting"),
        counts,
    )
    console.console.print(_("Database: {path}").format(path=console.esc(opts.dest / DB_NAME)))
    console.console.print(_("JSON report: {path}").format(path=console.esc(opts.dest / JSON_NAME)))
    if (opts.dest / HISTOGRAM_NAME).exists():
        console.console.print(
            _("Histogram: {path}").format(path=console.esc(opts.dest / HISTOGRAM_NAME))
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.setup_logging(args.log_file)
    opts = resolve_options(args)
    thresholds = (
        _("percentiles {low:g}/{high:g}").format(low=opts.percentiles[0], high=opts.percentiles[1])
        if opts.percentiles
        else _("high >= {high:g}, medium >= {medium:g}").format(
            high=opts.thresholds[0],  # type: ignore[index]
            medium=opts.thresholds[1],  # type: ignore[index]
        )
    )
    console.console.print(
        _(
            "Source: {source}\nOutput: {dest}\nModels: {models}\nMode: {mode}{dry}\n"
            "Max side: {max_side}\nCategories: {categories}"
        ).format(
            source=console.esc(opts.source),
            dest=console.esc(opts.dest),
            models="+".join(opts.models),
            mode=opts.mode,
            dry=_(" (dry run)") if opts.dry_run else "",
            max_side=opts.max_side or _("none"),
            categories=thresholds,
        )
    )
    if not opts.dry_run and not console.confirm(
        _("Start quality assessment?"), assume_yes=args.yes
    ):
        console.console.print(_("Cancelled."))
        return 0
    conn = open_db(opts.dest / DB_NAME)
    try:
        stats = RunStats()
        with ExitStack() as on_ray:
            cluster = None
            if opts.executor == "ray":  # Ray starts while the folder is listed
                from .ray_exec import ray_session, score_on_ray

                tasks, cluster = on_ray.enter_context(ray_session(opts, scan))
            else:
                tasks = scan(opts)
            stats.found = len(tasks)
            stored = {row["filename"]: row for row in conn.execute("SELECT * FROM image_quality")}
            todo = [t for t in tasks if not is_reusable(stored.get(t.filename), t, opts)]
            stats.reused = len(tasks) - len(todo)
            if todo and cluster is not None:
                score_on_ray(todo, opts, conn, stats, cluster)
            elif todo:
                score_images(todo, opts, conn, stats)
        cut = assign_categories(conn, opts.models, opts.thresholds, opts.percentiles)
        failed = sort_files(tasks, opts, conn, stats)
        summary = write_reports(conn, opts.dest, opts.models, cut)
    finally:
        conn.close()
    print_report(opts, stats, summary, cut, failed)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console.run_main(main))
