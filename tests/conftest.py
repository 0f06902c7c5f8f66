"""Shared test helpers: run a numbered script the way a user does."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(
    script: str,
    *args: str | os.PathLike[str],
    cwd: Path,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 240,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``REPO/<script>`` with this Python, in ``cwd``, without a terminal.

    Standard input is a pipe (or ``input``), so the script must take its
    answers from flags or its documented defaults, as in cron or CI.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    full_env["COLUMNS"] = "200"
    if env:
        full_env.update(env)
    done = subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=cwd,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{script} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
    return done


@pytest.fixture(autouse=True)
def english_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests read English unless they choose a language: the developer's locale must not matter."""
    for name in ("LC_ALL", "LC_MESSAGES", "YR_LANG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working folder, as a user's folder of photos would be."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def rows(db_path: Path, sql: str, *params: object) -> list[tuple]:
    """Query a SQLite file the way a user's sqlite3 shell would (a fresh connection)."""
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def dump(db_path: Path) -> list[str]:
    """The whole DB as SQL text, to prove that a run changed nothing."""
    conn = sqlite3.connect(db_path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def count_of(stdout: str, label: str) -> int:
    """A number from a step's summary table (``│ label │ 1,234 │``)."""
    match = re.search(re.escape(label) + r"\s*│\s*([\d,]+)", stdout)
    assert match, f"{label!r} not in output:\n{stdout}"
    return int(match[1].replace(",", ""))


def run_on_terminal(
    script: str, *args: str | os.PathLike[str], cwd: Path, answers: str
) -> subprocess.CompletedProcess[str]:
    """Run a numbered script with a pseudo-terminal as standard input, typing ``answers``."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("YR_NONINTERACTIVE", None)
    try:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / script), *map(str, args)],
            cwd=cwd,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        os.write(master, answers.encode())
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(master)
        os.close(slave)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes, to prove that a run changed nothing."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def spawn(script: str, *args: str, cwd: Path):  # -> pexpect.spawn
    """Run a numbered script on a pseudo-terminal, so that it asks its questions."""
    import pexpect

    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("YR_NONINTERACTIVE", None)
    return pexpect.spawn(
        sys.executable,
        [str(REPO / script), *args],
        cwd=str(cwd),
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 200),
    )
