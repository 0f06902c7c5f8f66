"""Step 7.3 on Ray (``--executor ray``): Ray Data scores, the driver writes and sorts.

The images to score (what :func:`~.cli.scan` found and the report cannot
reuse) become a Ray dataset of (path, filename, size, mtime) rows;
``map_batches`` runs them through :class:`QualityActor`, a pool of actors that
each build one :class:`~.scorer.Scorer` (the models load once per actor) and
turn a batch of files into report rows, exactly the rows the local path
makes. Actors take ``--gpus-per-worker`` GPUs each where the cluster has GPUs
(default 1), else one CPU each. The rows come back to the driver, the only
writer of ``quality_report.db``, which commits them batch by batch and then
categorises and sorts as the local path does. The files must be at the same
path on every node (a shared folder).

An actor that dies is restarted by Ray Data and its batch run again; rows are
upserted by file name, so a batch scored twice is stored once, and Ctrl-C or a
crash loses at most the batches not yet committed (a re-run scores only those).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import console, raycluster
from ..console import StepFailed, UsageError, esc, log, one_line
from ..i18n import _
from .decode import Task
from .report import upsert
from .scorer import Scorer, ScoreSettings

if TYPE_CHECKING:
    from .cli import Options, RunStats

# Images per actor call: a lost actor loses little, and each call's fixed cost (Ray
# Data's block hand-off, the scorer's thread pool, ~13 ms idle between calls) is spread
# over enough images. 8 -> 32 (600 piqe images, 2 CPU actors, 3 pairs, load ~2): first
# to last call 6.4 -> 5.1 s, idle between calls 0.6 -> 0.06 s per actor, actors' CPU
# 15.1 -> 13.4 s (a timeline probe of the actors' calls, issue 16 note).
BATCH = 32
BATCH_GPU = 32
FATAL = "_fatal"  # a row that is an actor's construction error, not a score


class QualityActor:
    """One per Ray worker: the metrics loaded once, a batch of files in, rows out."""

    def __init__(self, settings: ScoreSettings) -> None:
        self.scorer: Scorer | None = None
        self.fatal: str | None = None
        try:
            self.scorer = Scorer(settings)
        except (StepFailed, UsageError) as exc:
            # Missing weights, an unknown metric: handed to the driver as data, which
            # ends the step with the local path's one line (an actor that raised here
            # would be restarted over and over, and Ray would bury the line).
            self.fatal = json.dumps({FATAL: type(exc).__name__, "message": str(exc)})

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        n = len(batch["path"])
        if self.scorer is None:
            return {"row": [self.fatal or "{}"] * n, "actor": [0] * n, "halvings": [0] * n,
                    "peak": [0] * n}  # fmt: skip
        tasks = [
            Task(Path(str(path)), str(name), int(size), int(mtime))
            for path, name, size, mtime in zip(
                batch["path"], batch["filename"], batch["file_size"], batch["mtime_ns"], strict=True
            )
        ]
        # Rows as JSON text: every value comes back exactly (floats included) and
        # Arrow never has to guess a column type from a batch of NULLs.
        rows = [json.dumps(row) for row in self.scorer.score(tasks)]
        # This actor's counters so far, on every row (Ray Data may merge batches).
        halvings, peak = self.scorer.halvings, self.scorer.peak_gpu_bytes()
        return {"row": rows, "actor": [os.getpid()] * n, "halvings": [halvings] * n,
                "peak": [peak] * n}  # fmt: skip


def plan(opts: Options, cluster: raycluster.Cluster) -> tuple[ScoreSettings, int, float, int]:
    """(settings for the actors, how many actors, GPUs and CPUs each)."""
    gpus = opts.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster.gpus and opts.device != "cpu" else 0.0
    if opts.device == "cuda" and not gpus:
        raise UsageError(_("--device cuda: the Ray cluster has no GPU (or --gpus-per-worker is 0)"))
    if gpus and gpus > cluster.gpus:
        raise UsageError(
            _("--gpus-per-worker {want:g}: the Ray cluster has {have:g} GPU(s)").format(
                want=gpus, have=cluster.gpus
            )
        )
    base = opts.settings()
    if gpus:
        actors = max(1, math.floor(cluster.gpus / gpus + 1e-9))
        cpus = max(1, min(8, cluster.cpus // actors))  # the decode threads that feed a GPU
        return replace(base, device="cuda", workers=opts.workers or cpus), actors, gpus, cpus
    actors = max(1, cluster.cpus)  # one image at a time per core, as the local path
    return replace(base, device="cpu", workers=1), actors, 0.0, 1


@contextmanager
def ray_session(
    opts: Options, scan: Callable[[Options], list[Task]]
) -> Iterator[tuple[list[Task], raycluster.Cluster]]:
    """Ray for the scoring, started while a thread lists the source folder.

    Yields the scan's tasks and the cluster; Ray stops when the block ends.
    """
    with ThreadPoolExecutor(2, thread_name_prefix="scan") as pool:
        listing = pool.submit(scan, opts)
        # ray.data's imports (0.5 s on a quiet machine) while ray.init waits for its
        # processes, not after it.
        imported = pool.submit(importlib.import_module, "ray.data")
        try:
            with raycluster.session(opts.ray_address) as cluster:
                imported.result()
                raycluster.quiet_loggers()
                yield listing.result(), cluster
        finally:
            listing.cancel()


def score_on_ray(
    tasks: list[Task],
    opts: Options,
    conn: sqlite3.Connection,
    stats: RunStats,
    cluster: raycluster.Cluster,
) -> None:
    """Score ``tasks`` on the Ray of :func:`ray_session`; commit each batch of rows."""
    import ray.data

    settings, actors, gpus, cpus = plan(opts, cluster)
    text = (
        _("Executor: Ray, {cluster}; {n} scoring actor(s), {gpus:g} GPU each")
        if gpus
        else _("Executor: Ray, {cluster}; {n} scoring actor(s), 1 CPU each")
    )
    console.console.print(text.format(cluster=esc(cluster.describe()), n=actors, gpus=gpus))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    items = [
        {
            "path": str(t.path),
            "filename": t.filename,
            "file_size": t.file_size,
            "mtime_ns": t.mtime_ns,
        }
        for t in tasks
    ]
    scored = ray.data.from_items(
        items, override_num_blocks=max(actors, math.ceil(len(items) / BATCH))
    ).map_batches(
        QualityActor,
        fn_constructor_args=(settings,),
        batch_size=BATCH_GPU if gpus else BATCH,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus,
    )
    halvings: dict[int, int] = {}  # actor process -> its halvings so far
    peak = 0
    with console.progress(_("Scoring"), total=len(tasks)) as advance:
        try:
            for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
                rows = [json.loads(text) for text in batch["row"]]
                fatal = next((r for r in rows if FATAL in r), None)
                if fatal is not None:
                    kind = UsageError if fatal[FATAL] == "UsageError" else StepFailed
                    raise kind(fatal["message"])
                upsert(conn, rows)
                for actor, halved, top in zip(
                    batch["actor"], batch["halvings"], batch["peak"], strict=True
                ):
                    halvings[int(actor)] = max(halvings.get(int(actor), 0), int(halved))
                    peak = max(peak, int(top))
                stats.errors += sum(1 for r in rows if r["error_message"])
                stats.scored += sum(1 for r in rows if not r["error_message"])
                advance(len(rows))
        except (StepFailed, UsageError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise _step_error(exc) from exc
    from .cli import note_device

    note_device(stats, sum(halvings.values()), peak)


def _step_error(exc: BaseException) -> Exception:
    """The one-line error an actor raised (missing weights ...), out of Ray's wrapping."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (StepFailed, UsageError)):
            return type(seen)(str(seen).splitlines()[-1] if str(seen) else "")
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else (seen.__cause__ or seen.__context__)
    log.exception("scoring on Ray failed")
    return StepFailed(_("scoring on Ray failed: {error}").format(error=one_line(exc, 300)))
