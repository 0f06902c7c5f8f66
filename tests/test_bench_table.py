"""`make bench`'s table (bench/run_all.py): one table with each ratio, its aim and a
mark where it falls short; a skipped peer, a crashing benchmark or a garbled result
line is one line saying which and why, never a crash of the table."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bench import run_all

LINES = {
    "bench_alpha.py": """
        from bench.common import report
        print("warming up")
        report("alpha", "rows/s", "rows/s", 300.0, "naive", 100.0, aim=2.0)
        report("alpha", "re-run", "rows/s", 150.0, "naive", 100.0, aim=2.0)
        report("alpha", "no aim", "rows/s", 5.0)
    """,
    "bench_beta.py": """
        from bench.common import report
        report("beta", "exact", "files/s", 50.0, "jdupes", None, aim=1.0,
               skipped="jdupes is not installed (apt-get install jdupes)")
        print("BENCH_RESULT {not json")
    """,
    "bench_gamma.py": """
        raise SystemExit("gamma needs a GPU")
    """,
}


@pytest.fixture
def benches(tmp_path: Path) -> Path:
    for name, body in LINES.items():
        (tmp_path / name).write_text(textwrap.dedent(body), encoding="utf-8")
    return tmp_path


def test_one_table_with_aims_marks_and_one_line_per_problem(benches, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")
    code = run_all.main([], folder=benches)
    out = capsys.readouterr().out
    assert code == 1  # gamma failed; the others still made the table
    rows = {line.split("│")[2].strip(): line for line in out.splitlines() if line.count("│") > 6}
    assert "3.00x" in rows["rows/s (rows/s)"] and ">= 2x" in rows["rows/s (rows/s)"]
    assert rows["rows/s (rows/s)"].rstrip("│ ").endswith("ok")
    assert "1.50x" in rows["re-run (rows/s)"] and "SHORT" in rows["re-run (rows/s)"]
    assert "SHORT" not in rows["no aim (rows/s)"] and "ok" not in rows["no aim (rows/s)"]
    assert "no peer" in rows["exact (files/s)"]
    assert out.count("Benchmarks (ratio") == 1
    assert "peer skipped beta / exact: jdupes: jdupes is not installed" in out
    assert "1 of 3 aims not met: alpha re-run" in out
    assert "bench_beta.py: unreadable result line" in out
    assert "bench_gamma.py failed (exit 1): gamma needs a GPU" in out
    assert "Traceback" not in out


def test_only_the_named_benchmarks_run(benches, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")
    assert run_all.main(["alpha"], folder=benches) == 0
    out = capsys.readouterr().out
    assert "warming up" in out and "beta" not in out and "gamma" not in out
    line = next(x for x in out.splitlines() if x.startswith("BENCH_RESULT "))
    assert json.loads(line.removeprefix("BENCH_RESULT "))["aim"] == 2.0
