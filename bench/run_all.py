"""Run every ``bench/bench_*.py`` and print one table of ratios against the peers.

Protocol: a benchmark prints any number of lines ``BENCH_RESULT {json}`` with
the keys ``bench``, ``metric``, ``unit``, ``ours``, ``peer_name``, ``peer``
(null when the peer has no figure) and ``ratio`` (ours / peer, higher is
better). Everything else it prints is shown as it comes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
MARK = "BENCH_RESULT "


def _aim(result: dict) -> str:
    """The aim, marked when the ratio falls short of it (or has no peer figure)."""
    aim, ratio = result.get("aim"), result.get("ratio")
    if aim is None:
        return ""
    if ratio is None:
        return f"≥ {aim:g}x (no peer figure)"
    return f"≥ {aim:g}x" + ("" if ratio >= aim else " SHORT")


def main(argv: list[str]) -> int:
    only = set(argv)
    console = Console()
    results: list[dict] = []
    failed: list[str] = []
    for script in sorted(HERE.glob("bench_*.py")):
        if only and script.stem not in only and script.stem.removeprefix("bench_") not in only:
            continue
        console.rule(script.name)
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE.parent,
            env=env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(MARK):
                results.append(json.loads(line[len(MARK) :]))
            print(line, end="", flush=True)
        if proc.wait() != 0:
            failed.append(script.name)
    table = Table(title="Benchmarks (ratio = ours / peer, higher is better)")
    for column in ("benchmark", "metric", "ours", "peer", "peer value", "ratio", "aim"):
        table.add_column(
            column, justify="right" if column in ("ours", "peer value", "ratio", "aim") else "left"
        )
    for r in results:
        peer = r.get("peer")
        ratio = r.get("ratio")
        table.add_row(
            r["bench"],
            f"{r['metric']} ({r.get('unit', '')})",
            f"{r['ours']:,.1f}",
            r.get("peer_name") or "",
            "" if peer is None else f"{peer:,.1f}",
            "" if ratio is None else f"{ratio:.2f}x",
            _aim(r),
        )
    console.print(table)
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
