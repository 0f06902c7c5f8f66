"""Scoring for step 7.3: a :class:`Scorer` built from picklable :class:`ScoreSettings`
turns a list of :class:`~.decode.Task` into report rows. It is what the local
step runs and what a Ray actor builds once per worker (the driver alone writes
``quality_report.db`` and sorts).

How it is fast: images are decoded, EXIF-transposed and shrunk to ``--max-side``
in memory by worker threads while the model scores other batches (see
:func:`run_jobs`). Batches only hold what a metric can take together: images of
the same size for every metric (a batch is exactly the stack of single images),
and for MUSIQ any sizes, because the workers cut each image into MUSIQ's
multi-scale patch sequence and pad it with masked tokens, which is what MUSIQ
itself does inside every scale. ``torch.inference_mode`` throughout.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from .. import console
from ..console import UsageError, log, one_line
from ..i18n import _
from ..imageinfo import ImageError
from .decode import DecodeSet, Task, read_header
from .metrics import PRETRAINED_ENV, Metric, create_metrics
from .report import error_row, now_text, score_row


@dataclass(frozen=True)
class ScoreSettings:
    """Everything a scorer needs, picklable (it travels to Ray workers as is)."""

    models: tuple[str, ...]
    device: str = "auto"  # auto, cpu or cuda
    batch_size: int | None = None  # default: 16 on a GPU; CPU: 1 with MUSIQ, else 2
    max_side: int = 1920
    weights_dir: Path | None = None
    workers: int | None = None  # threads; default one per core (decode threads on a GPU)
    pretrained: bool = True  # False: random weights (tests, benchmarks)
    precision: str = "auto"  # auto: MUSIQ in bfloat16 where it pays and is checked; fp32

    @classmethod
    def from_env(cls, **fields: Any) -> ScoreSettings:
        """Settings whose ``pretrained`` follows ``YR_PYIQA_PRETRAINED`` (read here,
        on the driver, so every worker scores with the same weights)."""
        return cls(pretrained=os.environ.get(PRETRAINED_ENV, "1") != "0", **fields)


class Scorer:
    """The metrics, loaded once; :meth:`score` turns tasks into report rows.

    Rows are dicts keyed by :data:`~.report.COLUMNS` (``filename`` is the key the
    driver upserts on). A file that is no image, a decoder failure or a model
    failure is a row with ``error_message`` and ``error_stage`` set, never an
    exception; missing weights or an unknown metric raise at construction
    (``StepFailed`` / ``UsageError``, one line each).
    """

    def __init__(self, settings: ScoreSettings) -> None:
        import torch

        self.settings = settings
        self.device = pick_device(settings.device)
        cpus = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ) or 1
        if self.device.type == "cuda":  # decode threads feed the one GPU
            self.threads = (
                settings.workers if settings.workers is not None else max(2, min(8, cpus))
            )
        else:  # one image per core, one torch thread each
            self.threads = settings.workers if settings.workers is not None else cpus
            torch.set_num_threads(1)
        self.metrics = create_metrics(
            settings.models,
            self.device,
            settings.weights_dir,
            pretrained=settings.pretrained,
            precision=settings.precision,
        )
        self.scales = {m.name: m.scale for m in self.metrics}
        self.base = {
            "models": "+".join(settings.models),
            "max_side": settings.max_side,
            "scale": "; ".join(
                m.scale.describe(m.name) if m.scale else f"{m.name}: raw" for m in self.metrics
            ),
        }
        musiq = next((m for m in self.metrics if m.is_musiq), None)
        # On the CPU MUSIQ scores one image per call: a batch of two took 18-20 % longer
        # per image in bfloat16 and 3 % in float32 (one torch thread per worker; the
        # working set of one image's 961 tokens stays in cache)
        batch_size = settings.batch_size or (
            16 if self.device.type == "cuda" else 1 if musiq is not None else 2
        )
        self.runner = ModelRunner(self.metrics, self.device, batch_size)
        self.musiq_opts = dict(musiq.model.net.data_preprocess_opts) if musiq else None
        self.only_musiq = all(m.is_musiq for m in self.metrics)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @property
    def halvings(self) -> int:
        """How often the batch size was halved on GPU out-of-memory."""
        return self.runner.halvings

    def peak_gpu_bytes(self) -> int:
        import torch

        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0

    def score(self, tasks: Sequence[Task]) -> list[dict[str, Any]]:
        """One row per task, in no particular order (the whole list at once)."""
        return [row for rows in self.iter_rows(tasks) for row in rows]

    def iter_rows(self, tasks: Sequence[Task]) -> Iterator[list[dict[str, Any]]]:
        """Rows as batches finish: first the files whose header is unreadable, then
        one list per batch (commit each one and a stop loses at most a batch)."""
        base = self.base
        failed: list[dict[str, Any]] = []
        ready: list[Task] = []
        for task in tasks:  # header first: a file that is no image never reaches a worker
            try:
                read_header(task, self.settings.max_side)
            except ImageError as exc:
                failed.append(error_row(task, str(exc), "decode", now_text(), base))
                continue
            ready.append(task)
        if failed:
            yield failed
        if not ready:
            return
        batches = make_batches(ready, self.runner.batch_size, any_size=self.only_musiq)
        dataset = DecodeSet(ready, self.settings.max_side, self.musiq_opts)
        for items, results, each in run_jobs(dataset, batches, self.runner, self.threads):
            vram, ram = memory_readings(self.device)
            now = now_text()
            rows = []
            for item in items:
                task = ready[item["index"]]
                if "error" in item:
                    rows.append(error_row(task, item["error"], "decode", now, base))
                    continue
                value = results[item["index"]]
                if isinstance(value, str):
                    rows.append(error_row(task, value, "model", now, base))
                    continue
                rows.append(score_row(task, value, self.scales, now, base, each, vram, ram))
            yield rows


def pick_device(choice: str) -> Any:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError(_("--device cuda: no CUDA GPU is available to torch here"))
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(choice)
    if device.type == "cuda":
        console.console.print(
            _("Device: CUDA ({name})").format(name=torch.cuda.get_device_name(device))
        )
    else:
        console.console.print(_("Device: CPU (no GPU in use; MUSIQ/CLIPIQA are slow on a CPU)"))
    return device


def make_batches(tasks: Sequence[Task], batch_size: int, any_size: bool) -> list[list[int]]:
    """Positions into ``tasks`` grouped so each batch is valid for the metrics:
    same target size, or (MUSIQ alone) similar sizes so padding stays small."""
    order = sorted(
        range(len(tasks)),
        key=lambda i: (tasks[i].target[0] * tasks[i].target[1], tasks[i].target, i),
    )
    if any_size:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for position in order:
        groups[tasks[position].target].append(position)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def memory_readings(device: Any) -> tuple[float | None, float]:
    """For the report only: machine state never makes an image an error."""
    import psutil

    ram = psutil.virtual_memory().percent
    vram = None
    if device.type == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info(device)
        vram = round((total - free) / total * 100, 1)
    return vram, ram


def run_jobs(
    dataset: DecodeSet,
    batches: Sequence[Sequence[int]],
    runner: ModelRunner,
    threads: int,
) -> Iterator[tuple[list[dict[str, Any]], dict[int, Any], float]]:
    """Decode and score batches in a thread pool; yield them in order.

    Each job decodes its batch, then scores it. On a GPU the scoring part holds
    a lock, so while one batch is on the device the other threads decode the
    next ones. On the CPU the jobs run side by side with one torch thread each:
    one image per core beats splitting every small op over the cores (and stays
    fast when other programs load the machine; 2 OpenMP threads per op were 2-3x
    slower there). Threads, not processes: Pillow and torch release the GIL,
    and nothing is pickled between processes.
    """
    import threading

    import torch

    gpu_lock = threading.Lock() if runner.device.type == "cuda" else None

    def job(batch: Sequence[int]) -> tuple[list[dict[str, Any]], dict[int, Any], float]:
        if gpu_lock is None:
            torch.set_num_threads(1)
        items = [dataset[i] for i in batch]
        decoded = [item for item in items if "error" not in item]
        started = time.perf_counter()
        with torch.inference_mode():
            if gpu_lock is None:
                results = runner.score(decoded) if decoded else {}
            else:
                with gpu_lock:
                    started = time.perf_counter()
                    results = runner.score(decoded) if decoded else {}
        return items, results, (time.perf_counter() - started) / max(1, len(decoded))

    pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="quality")
    pending: deque[Future] = deque()
    queue = iter(batches)
    try:
        for batch in islice(queue, 2 * threads):
            pending.append(pool.submit(job, batch))
        while pending:
            done = pending.popleft().result()
            following = next(queue, None)
            if following is not None:
                pending.append(pool.submit(job, following))
            yield done
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _is_oom(exc: BaseException) -> bool:
    """torch's out-of-memory errors: CUDA's, and the CPU allocator's."""
    text = str(exc).lower()
    return "out of memory" in text or "not enough memory" in text


class ModelRunner:
    """Runs the metrics on decoded batches; halves the batch on out-of-memory (a GPU's,
    mostly) and retries, down to one image, which then fails with a reason."""

    def __init__(self, metrics: list[Metric], device: Any, batch_size: int) -> None:
        self.metrics = metrics
        self.device = device
        self.batch_size = batch_size
        self.halvings = 0

    def score(self, items: list[dict[str, Any]]) -> dict[int, dict[str, float] | str]:
        """``{index: {metric: raw score}}`` or ``{index: error reason}``."""
        out: dict[int, dict[str, float] | str] = {item["index"]: {} for item in items}
        for metric in self.metrics:
            live = [i for i in items if isinstance(out[i["index"]], dict)]
            if metric.is_musiq:
                groups = [live]
            else:
                by_size: dict[tuple, list] = defaultdict(list)
                for item in live:
                    by_size[tuple(item["image"].shape)].append(item)
                groups = list(by_size.values())
            for group in groups:
                for index, value in self._run(metric, group).items():
                    if isinstance(value, str):
                        out[index] = value
                    else:
                        out[index][metric.name] = value  # type: ignore[index]
        return out

    def _run(self, metric: Metric, group: list[dict[str, Any]]) -> dict[int, float | str]:
        results: dict[int, float | str] = {}
        start = 0
        while start < len(group):
            size = self.batch_size if metric.batchable else 1
            chunk = group[start : start + size]
            try:
                values = self._forward(metric, chunk)
            except Exception as exc:
                if _is_oom(exc) and self.batch_size > 1:
                    self._free()
                    self.batch_size = max(1, self.batch_size // 2)
                    self.halvings += 1
                    console.console.print(
                        "[yellow]"
                        + _("Out of memory: batch size now {n}").format(n=self.batch_size)
                        + "[/yellow]"
                    )
                    continue
                if len(chunk) > 1:  # find the one image that fails; score the rest
                    for item in chunk:
                        results.update(self._run_one(metric, item))
                else:
                    results.update(self._failed(metric, chunk[0], exc))
                start += len(chunk)
                continue
            for item, value in zip(chunk, values, strict=True):
                results[item["index"]] = (
                    value if math.isfinite(value) else f"model: {metric.name} gave {value}"
                )
            start += len(chunk)
        return results

    def _run_one(self, metric: Metric, item: dict[str, Any]) -> dict[int, float | str]:
        try:
            value = self._forward(metric, [item])[0]
        except Exception as exc:
            return self._failed(metric, item, exc)
        return {
            item["index"]: value if math.isfinite(value) else f"model: {metric.name} gave {value}"
        }

    def _failed(self, metric: Metric, item: dict[str, Any], exc: Exception) -> dict[int, str]:
        log.warning("%s failed on item %s", metric.name, item["index"], exc_info=exc)
        if _is_oom(exc):
            self._free()
            return {item["index"]: f"model: {metric.name} out of memory at batch size 1"}
        return {item["index"]: f"model: {metric.name}: {one_line(exc, 150)}"}

    def _free(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _forward(self, metric: Metric, chunk: list[dict[str, Any]]) -> list[float]:
        import torch

        non_blocking = self.device.type == "cuda"
        if metric.is_musiq:
            longest = max(item["patches"].shape[0] for item in chunk)
            padded = [
                torch.nn.functional.pad(
                    item["patches"], (0, 0, 0, longest - item["patches"].shape[0])
                )
                for item in chunk
            ]
            batch = torch.stack(padded).to(self.device, non_blocking=non_blocking)
        else:
            batch = torch.stack([item["image"] for item in chunk]).to(
                self.device, non_blocking=non_blocking
            )
        scores = metric(batch)
        if isinstance(scores, (tuple, list)):
            scores = scores[0]
        flat = scores.detach().float().reshape(-1).cpu()
        if flat.numel() != len(chunk):
            if len(chunk) == 1:
                raise RuntimeError(f"{metric.name} returned {flat.numel()} values for one image")
            metric.batchable = False  # this metric pools over the batch: one image at a time
            return [self._forward(metric, [item])[0] for item in chunk]
        return [float(v) for v in flat]
