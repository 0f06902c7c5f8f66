"""Helpers shared by the benchmarks: a work folder, timing, the result line."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORK = Path(__file__).resolve().parent / "_work"
MARK = "BENCH_RESULT "


def work_dir(name: str) -> Path:
    path = WORK / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def report(
    bench: str,
    metric: str,
    unit: str,
    ours: float,
    peer_name: str | None = None,
    peer: float | None = None,
    *,
    aim: float | None = None,
    skipped: str | None = None,
    **extra: Any,
) -> None:
    """Print one result line for ``run_all.py`` (ratio = ours / peer).

    ``aim``: the least ratio the issue asks for (``run_all`` marks a ratio below it).
    ``skipped``: why the peer could not run (then ``peer`` is None); ``run_all``
    shows it as one line. ``extra`` keys are kept in the line as they are.
    """
    ratio = (ours / peer) if peer else None
    line = {
        "bench": bench,
        "metric": metric,
        "unit": unit,
        "ours": ours,
        "peer_name": peer_name,
        "peer": peer,
        "ratio": ratio,
        **({"aim": aim} if aim is not None else {}),
        **({"skipped": skipped} if skipped else {}),
        **extra,
    }
    print(MARK + json.dumps(line), flush=True)
