"""Run every ``bench/bench_*.py`` and print one table of ratios against the peers.

Protocol: a benchmark prints any number of lines ``BENCH_RESULT {json}`` with
the keys ``bench``, ``metric``, ``unit``, ``ours``, ``peer_name``, ``peer``
(null when the peer has no figure), ``ratio`` (ours / peer, higher is better)
and optionally ``aim`` (the least ratio the issue asks for) and ``skipped``
(why the peer could not run). Everything else it prints is shown as it comes.

The table marks each ratio against its aim: ``ok``, or ``SHORT`` when it falls
below. A peer that could not run, a benchmark that fails or a line that cannot
be read is one line under the table saying which and why; the run goes on.
Exit code: 0 when every benchmark ran (short aims included), 1 when one failed.

    .venv/bin/python bench/run_all.py [quality dedup ...]   # all, or only these
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

HERE = Path(__file__).resolve().parent
MARK = "BENCH_RESULT "


def run_script(script: Path, results: list[dict[str, Any]], problems: list[str]) -> None:
    """Run one benchmark, echoing its output; collect its result lines and problems."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    tail: deque[str] = deque(maxlen=1)
    try:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            cwd=HERE.parent,
            env=env,
        )
    except OSError as exc:
        problems.append(f"{script.name}: could not start: {exc}")
        return
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if not line.startswith(MARK):
            if line.strip():
                tail.append(line.strip())
            continue
        try:
            result = json.loads(line[len(MARK) :])
            float(result["ours"])
            result.setdefault("bench", script.stem.removeprefix("bench_"))
            result.setdefault("metric", "?")
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{script.name}: unreadable result line ({exc}): {line.strip()[:120]}")
            continue
        results.append(result)
    code = proc.wait()
    if code != 0:
        why = tail[0] if tail else "no output"
        problems.append(f"{script.name} failed (exit {code}): {why[:200]}")


def mark(result: dict[str, Any]) -> str:
    ratio, aim = result.get("ratio"), result.get("aim")
    if aim is None:
        return ""
    if ratio is None:
        return "no peer"
    return "ok" if ratio >= aim else "SHORT"


def build_table(results: list[dict[str, Any]]) -> Table:
    table = Table(
        title="Benchmarks (ratio = ours / peer, higher is better; aim = least ratio asked)"
    )
    for column in ("benchmark", "metric", "ours", "peer", "peer value", "ratio", "aim", ""):
        right = column in ("ours", "peer value", "ratio", "aim")
        table.add_column(column, justify="right" if right else "left")
    for r in results:
        peer, ratio, aim = r.get("peer"), r.get("ratio"), r.get("aim")
        verdict = mark(r)
        style = {"ok": "green", "SHORT": "bold red"}.get(verdict, "")
        table.add_row(
            escape(str(r["bench"])),
            escape(f"{r['metric']} ({r.get('unit', '')})"),
            f"{float(r['ours']):,.1f}",
            escape(str(r.get("peer_name") or "")),
            "" if peer is None else f"{float(peer):,.1f}",
            "" if ratio is None else f"{float(ratio):.2f}x",
            "" if aim is None else f">= {float(aim):g}x",
            f"[{style}]{verdict}[/{style}]" if style else verdict,
        )
    return table


def main(argv: list[str], folder: Path = HERE) -> int:
    only = set(argv)
    console = Console()
    results: list[dict[str, Any]] = []
    problems: list[str] = []
    for script in sorted(folder.glob("bench_*.py")):
        if only and script.stem not in only and script.stem.removeprefix("bench_") not in only:
            continue
        console.rule(script.name)
        run_script(script, results, problems)
    console.print(build_table(results))
    for r in results:
        if r.get("skipped"):
            console.print(
                f"[yellow]peer skipped[/yellow] {escape(str(r['bench']))} / "
                f"{escape(str(r['metric']))}: {escape(str(r.get('peer_name') or 'peer'))}: "
                f"{escape(str(r['skipped']))}"
            )
    short = [r for r in results if mark(r) == "SHORT"]
    if short:
        console.print(
            f"[bold red]{len(short)} of {sum(1 for r in results if r.get('aim') is not None)} "
            f"aims not met[/bold red]: "
            + "; ".join(escape(f"{r['bench']} {r['metric']}") for r in short)
        )
    for problem in problems:
        console.print(f"[red]{escape(problem)}[/red]")
    return 1 if any("failed" in p or "could not start" in p for p in problems) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
