"""#13.2: outside text (file and folder names, ids, reasons) is printed as text, never as rich markup.

Each step runs in-process on inputs whose names hold markup (``x[/red]y``,
and a folder path ``a[/]b``: the folder ``a[`` holding ``]b``). Without
escaping, rich raises ``MarkupError`` on such a line (a traceback, or
"Critical error") or swallows the brackets; with it, the names appear
literally and the run succeeds.
"""

from __future__ import annotations

import runpy
import shutil
import sqlite3
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO
from tests.xhr_factory import entity, write_xhr
from yandex_reverse import console
from yandex_reverse.console import esc, run_main

HOSTILE_DIR = "a[/]b"  # the folder "a[" with the folder "]b" in it
HOSTILE_NAME = "x[bold]y[red]z"  # unescaped, rich would eat the brackets


@cache
def step(script: str) -> Callable[[list[str] | None], int]:
    """The ``main`` a numbered script runs (whatever module it lives in now)."""
    return runpy.run_path(str(REPO / script), run_name="escaping_test")["main"]


def run(script: str, *args: object, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = run_main(step(script), [str(a) for a in args])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    assert "MarkupError" not in text
    assert "Critical error" not in text
    return code, " ".join(text.split())  # rich may wrap long lines


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LANG", "C")
    monkeypatch.setenv("COLUMNS", "400")
    # Consoles made by an earlier test in this process kept that test's width: new
    # ones read COLUMNS (a long tmp path must not wrap where the test looks for it).
    for lazy in (console.console, console.err_console):
        monkeypatch.setattr(lazy, "_real", None)
    folder = tmp_path / HOSTILE_DIR
    folder.mkdir(parents=True)
    return folder


def test_esc_makes_markup_literal(capsys: pytest.CaptureFixture[str]) -> None:
    for text in ("x[/]y", "[/red]", "[bold]x", "[link=javascript:x]y[/link]"):
        console.console.print(f"<{esc(text)}>")
        assert capsys.readouterr().out.strip() == f"<{text}>"


def test_tables_prompts_and_error_lines_escape_their_arguments(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    console.console.print(console.table("[/red]t", ("[/]h",), [("x[/]y",), (HOSTILE_NAME,)]))
    out = capsys.readouterr().out
    assert "[/red]t" in out and "[/]h" in out and "x[/]y" in out and HOSTILE_NAME in out

    def fails(argv: list[str] | None) -> int:
        raise ValueError("bad name x[/]y")

    def refuses(argv: list[str] | None) -> int:
        raise console.StepFailed("no DB at a[/]b")

    assert run_main(fails, []) == 1
    assert "Critical error: ValueError: bad name x[/]y" in capsys.readouterr().err
    assert run_main(refuses, []) == 1
    assert "no DB at a[/]b" in capsys.readouterr().err
    with pytest.raises(console.UsageError, match=r"\[/\]"):
        console.ask_choice("Pick [/]", [("a", "x[/]y")], flag="--pick")


def test_step2_failed_files_table_and_db_line(
    hostile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    xhr = hostile / "XHR"
    write_xhr(xhr, "cat.jpg", 0, [entity("good1")])
    (xhr / f"{HOSTILE_NAME}.jpg_xhr_001.json").write_text('{"blocks": [}', encoding="utf-8")
    db_path = hostile / "yandex_images.db"
    code, out = run("2_XHRtoDB.py", "--xhr-dir", xhr, "--db", db_path, capsys=capsys)
    assert code == 0
    assert f"{HOSTILE_NAME}.jpg_xhr_001.json" in out  # the failed file, literally
    assert str(db_path) in out
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 1


def test_step4_database_and_backup_lines(hostile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    xhr = hostile / "XHR"
    write_xhr(xhr, "cat.jpg", 0, [entity("good1"), entity("x[/]y", pos=1, orig_url="ftp://x/y")])
    db_path = hostile / "yandex_images.db"
    assert run("2_XHRtoDB.py", "--xhr-dir", xhr, "--db", db_path, capsys=capsys)[0] == 0
    code, out = run("4_DB_cleanup.py", "--db", db_path, "--dry-run", capsys=capsys)
    assert code == 0
    assert str(db_path) in out
    code, out = run("4_DB_cleanup.py", "--db", db_path, "--yes", capsys=capsys)
    assert code == 0
    assert f"{hostile}/yandex_images_backup_" in out


def photo(path: Path, seed: int) -> None:
    Image.effect_noise((64, 48), 40 + seed).convert("RGB").save(path, quality=90)


def test_step6_duplicates_table_unreadable_lines_and_report(
    hostile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = hostile / "photos"
    photos.mkdir()
    photo(photos / f"{HOSTILE_NAME}.jpg", 1)
    shutil.copy(photos / f"{HOSTILE_NAME}.jpg", photos / "[red]copy.jpg")
    (photos / "[red]broken.jpg").write_bytes(b"<html>not an image</html>")
    code, out = run(
        "6_duplicate_finder.py", photos, "--mode", "both", "--dry-run", "--max-workers", "1",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0
    assert "[red]copy.jpg" in out or f"{HOSTILE_NAME}.jpg" in out  # the group's table
    assert "[red]broken.jpg" in out  # the unreadable-file line


def test_step73_found_and_not_scored_lines(
    hostile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = hostile / "photos"
    source.mkdir()
    for seed in range(3):
        photo(source / f"{HOSTILE_NAME}{seed}.jpg", seed)
    (source / "[red]broken.jpg").write_bytes(b"<html>not an image</html>")
    dest = hostile / "sorted"
    code, out = run(
        "7_3_separate_images_by_quality.py", "--source", source, "--dest", dest,
        "--model", "entropy", "--yes", capsys=capsys,
    )  # fmt: skip
    assert code == 0
    assert str(source) in out
    assert "[red]broken.jpg" in out
