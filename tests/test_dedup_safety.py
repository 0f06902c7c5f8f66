"""Step 6 against an attacker: a tampered report or journal, files changed
while a question waits, symlinks, a quarantine that holds the folder, and
folders other steps wrote. Each drives the real script."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pexpect
import pytest
from PIL import Image

from tests.conftest import run_script, spawn, tree

SCRIPT = "6_duplicate_finder.py"


def run(cwd: Path, *args, **kw):
    return run_script(SCRIPT, *args, "--max-workers", "2", cwd=cwd, **kw)


def make_photo(path: Path, seed: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (seed * 37 % 256, 90, 200)).save(path, "JPEG", quality=90)
    return path.read_bytes()


@pytest.fixture
def folder(workdir: Path) -> Path:
    """Two exact groups: a.jpg + sub/a_copy.jpg (with a sidecar), b.jpg + deep/x/b_copy.jpg."""
    root = workdir / "photos"
    make_photo(root / "a.jpg", 1)
    (root / "sub").mkdir()
    shutil.copy(root / "a.jpg", root / "sub" / "a_copy.jpg")
    (root / "sub" / "a_copy.txt").write_text("page", encoding="utf-8")
    make_photo(root / "b.jpg", 2)
    (root / "deep" / "x").mkdir(parents=True)
    shutil.copy(root / "b.jpg", root / "deep" / "x" / "b_copy.jpg")
    make_photo(root / "c.jpg", 3)
    return root


@pytest.fixture
def bystander(workdir: Path) -> Path:
    """An unrelated folder the attacker aims at: nothing in it may change."""
    other = workdir / "unrelated"
    make_photo(other / "precious.jpg", 9)
    shutil.copy(other / "precious.jpg", other / "twin.jpg")
    (other / "empty").mkdir()
    return other


def moved_run(workdir: Path, folder: Path) -> Path:
    done = run(workdir, folder, "--mode", "exact", "--yes", "--report", "r.json")
    assert done.returncode == 0, done.stderr
    return workdir / "r.json"


def test_undo_acts_only_on_moves_its_run_recorded(
    workdir: Path, folder: Path, bystander: Path
) -> None:
    before = tree(folder)
    report_path = moved_run(workdir, folder)
    report = json.loads(report_path.read_text())
    quarantine = Path(report["settings"]["quarantine"])
    env_copy = folder / "stolen_environ.txt"
    report["moves"] += [
        # move a file out of an unrelated folder into the photos
        {"source": str(folder / "precious.jpg"), "target": str(bystander / "precious.jpg")},
        # copy /proc/self/environ to a chosen path
        {"source": str(env_copy), "target": "/proc/self/environ"},
        # "already back": would delete the target, an unrelated file
        {"source": str(bystander / "precious.jpg"), "target": str(bystander / "twin.jpg")},
    ]
    report_path.write_text(json.dumps(report))
    # the journal in the quarantine tampered too: a move out of the quarantine
    # and a folder the run never made
    journal = next((quarantine / ".dedup_runs").glob("*.jsonl"))
    st = (bystander / "twin.jpg").stat()
    forged = {"source": str(folder / "twin.jpg"), "target": str(bystander / "twin.jpg")}
    forged |= {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
    with journal.open("a") as handle:
        handle.write(json.dumps({"move": forged}) + "\n")
        handle.write(json.dumps({"dir": str(bystander / "empty")}) + "\n")
    bystanders = tree(bystander)
    done = run_script(SCRIPT, "--undo", report_path, cwd=workdir)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out  # refused entries are a failure the user sees
    assert "Traceback" not in out
    assert tree(bystander) == bystanders and (bystander / "empty").is_dir()
    assert not env_copy.exists() and not (folder / "precious.jpg").exists()
    assert not (folder / "twin.jpg").exists()
    for path in (folder / "precious.jpg", env_copy, bystander / "precious.jpg"):
        assert f"Refused: {path}: the run's journal records no such move" in out
    assert f"Refused: {folder / 'twin.jpg'}: not in the run's quarantine" in out
    assert tree(folder) == {
        **before,
        **{k: v for k, v in tree(folder).items() if k.startswith("_duplicates/")},
    }
    assert {k for k in tree(folder) if not k.startswith("_duplicates/")} == set(before)


def test_undo_refuses_a_report_whose_quarantine_holds_the_folder(
    workdir: Path, folder: Path, bystander: Path
) -> None:
    report_path = moved_run(workdir, folder)
    report = json.loads(report_path.read_text())
    for quarantine in (
        str(workdir),
        str(folder),
        ".",
        str(folder / ".." / "photos" / "_duplicates"),
    ):
        report["settings"]["quarantine"] = quarantine
        report_path.write_text(json.dumps(report))
        done = run_script(SCRIPT, "--undo", report_path, cwd=workdir)
        assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
        assert "refused" in done.stderr or "not a clean absolute path" in done.stderr, done.stderr
    assert (folder / "_duplicates" / "sub" / "a_copy.jpg").is_file()  # nothing was undone


@pytest.mark.parametrize("where", ["parent", "folder"])
def test_a_run_refuses_a_quarantine_that_holds_the_folder(
    workdir: Path, folder: Path, where: str
) -> None:
    before = tree(workdir)
    target = "." if where == "parent" else str(folder)
    done = run(workdir, folder, "--mode", "exact", "--yes", "--quarantine", target)
    assert done.returncode == 2 and "would hold the folder itself" in done.stderr
    assert tree(workdir) == before


def test_undo_dry_run_says_what_would_happen_including_deletions(
    workdir: Path, folder: Path
) -> None:
    report_path = moved_run(workdir, folder)
    quarantine = folder / "_duplicates"
    # the user already copied one back by hand: undo would delete the quarantined twin
    shutil.copy(quarantine / "deep" / "x" / "b_copy.jpg", folder / "deep" / "x" / "b_copy.jpg")
    before = tree(workdir)
    done = run_script(SCRIPT, "--undo", report_path, "--dry-run", cwd=workdir)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert (
        f"would restore: {quarantine / 'sub' / 'a_copy.jpg'} -> {folder / 'sub' / 'a_copy.jpg'}"
        in out
    )
    assert (
        f"would restore: {quarantine / 'sub' / 'a_copy.txt'} -> {folder / 'sub' / 'a_copy.txt'}"
        in out
    )
    assert (
        f"would delete: {quarantine / 'deep' / 'x' / 'b_copy.jpg'} "
        f"(an identical file is back at {folder / 'deep' / 'x' / 'b_copy.jpg'})" in out
    )
    for made in (quarantine / "deep" / "x", quarantine / "deep", quarantine):
        assert f"would remove, if empty after the undo: {made}" in out
    assert tree(workdir) == before
    done = run_script(SCRIPT, "--undo", report_path, cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert not quarantine.exists()
    assert (folder / "sub" / "a_copy.txt").read_text() == "page"


def test_interactive_delete_checks_after_the_answer(workdir: Path, folder: Path) -> None:
    """A duplicate changed while the question waits, and a kept file that
    vanished while it waits, are not deleted."""
    child = spawn(
        SCRIPT,
        str(folder),
        "--mode",
        "exact",
        "--action",
        "delete",
        "--interactive",
        "--report",
        "r.json",
        "--max-workers",
        "1",
        cwd=workdir,
    )
    child.expect(r"Delete sub/a_copy\.jpg \(kept: a\.jpg\)\?")
    with (folder / "sub" / "a_copy.jpg").open("ab") as handle:
        handle.write(b"changed while waiting")
    child.sendline("y")
    child.expect(r"Delete deep/x/b_copy\.jpg \(kept: b\.jpg\)\?")
    (folder / "b.jpg").unlink()
    child.sendline("y")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (folder / "sub" / "a_copy.jpg").is_file()
    assert (folder / "deep" / "x" / "b_copy.jpg").is_file()  # now the last copy
    report = json.loads((workdir / "r.json").read_text())
    assert report["deleted"] == []
    assert [s["reason"] for s in report["skipped"]] == [
        "changed since the scan",
        "the kept file vanished since the scan (this may be the last copy)",
    ]


def test_a_symlink_is_never_the_kept_copy(workdir: Path, tmp_path: Path) -> None:
    """0.jpg (a symlink to a file outside) sorts before real.jpg, the only
    real copy: the real file stays, the link is listed, nothing is removed."""
    root = workdir / "photos"
    data = make_photo(root / "real.jpg", 4)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(data)
    os.symlink(outside, root / "0.jpg")
    done = run(
        root.parent, root, "--mode", "exact", "--action", "delete", "--yes", "--report", "r.json"
    )
    assert done.returncode == 0, done.stderr
    assert (root / "real.jpg").read_bytes() == data and (root / "0.jpg").is_symlink()
    report = json.loads((workdir / "r.json").read_text())
    assert report["groups"] == []
    assert report["hard_links"] == [{"path": "0.jpg", "same_file_as": str(outside)}]


def test_dry_run_writes_no_report(workdir: Path, folder: Path) -> None:
    before = tree(workdir)
    done = run(workdir, folder, "--mode", "exact", "--dry-run")
    assert done.returncode == 0, done.stderr
    after = tree(workdir)
    after.pop("6_duplicate_finder.log", None)
    assert after == before
    assert "Report:" not in done.stdout


def test_folders_other_steps_wrote_are_not_scanned(workdir: Path, folder: Path) -> None:
    """sorted/ (7.x), a marked output folder and an earlier run's custom
    quarantine hold copies; none of them is scanned."""
    from yandex_reverse.fsutil import mark_output

    shutil.copy(folder / "c.jpg", workdir / "c_sorted.jpg")
    (folder / "sorted" / "landscape").mkdir(parents=True)
    shutil.copy(folder / "c.jpg", folder / "sorted" / "landscape" / "c.jpg")
    mark_output(folder / "by_quality", "7.3")
    shutil.copy(folder / "c.jpg", folder / "by_quality" / "c.jpg")
    moved = run(workdir, folder, "--mode", "exact", "--yes", "--quarantine", str(folder / "q"))
    assert moved.returncode == 0, moved.stderr
    done = run(workdir, folder, "--mode", "exact", "--dry-run", "--report", "again.json")
    report = json.loads((workdir / "again.json").read_text())
    assert report["groups"] == []
    for skipped in ("sorted", "by_quality", "q"):
        assert f"not scanned (written by the pipeline): {folder / skipped}" in done.stdout


def test_step6_speaks_russian_under_a_russian_locale(workdir: Path, folder: Path) -> None:
    done = run(
        workdir, folder, "--mode", "exact", "--dry-run", env={"LANG": "ru_RU.UTF-8", "LC_ALL": ""}
    )
    assert done.returncode == 0, done.stderr
    assert "Пробный запуск: ничего не перемещено и не удалено." in done.stdout
    assert "Группы дубликатов (первые 2 из 2):" in done.stdout
    assert "просмотрено файлов" in done.stdout


@pytest.mark.skipif(os.name == "nt", reason="names are UTF-16 there")
def test_a_file_name_that_is_not_utf8_is_moved_reported_and_put_back(
    workdir: Path, folder: Path
) -> None:
    """A name with a byte that is not UTF-8 (the OS gives it as a lone
    surrogate): the report and journal are still written (valid JSON, the
    byte escaped) and the undo puts the very file back."""
    import subprocess
    import sys

    from tests.conftest import REPO

    odd = os.fsdecode(b"copy-\xff.jpg")
    try:
        shutil.copy(folder / "c.jpg", folder / odd)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")

    def step(*args: str) -> None:  # the name is printed as its bytes: not text
        done = subprocess.run(
            [sys.executable, str(REPO / SCRIPT), *args, "--max-workers", "2"],
            cwd=workdir,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1"},
            timeout=240,
        )
        assert done.returncode == 0, done.stderr.decode("utf-8", "replace")

    step(str(folder), "--mode", "exact", "--yes", "--report", "r.json")
    report = json.loads((workdir / "r.json").read_text(encoding="utf-8"))  # valid UTF-8
    moved = {Path(m["source"]).name for m in report["moves"]}
    assert odd in moved and not (folder / odd).exists()
    step("--undo", str(workdir / "r.json"))
    assert (folder / odd).read_bytes() == (folder / "c.jpg").read_bytes()
