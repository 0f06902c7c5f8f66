"""`pip install .` works as for any Python tool: a wheel from a clean clone, its command, its data.

The wheel is built from a fresh clone (committed files only), installed with
``--no-deps`` into a new venv that sees this venv's packages through a
``.pth`` file (so nothing is downloaded), and run from a folder outside the
repository, so only the installed copy can be imported.
"""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, rows
from tests.xhr_factory import entity, write_xhr

pytestmark = pytest.mark.slow


def run(*args: str | os.PathLike[str], cwd: Path, **kw) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(NO_COLOR="1", COLUMNS="200", LANG="C")
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=env,
        timeout=600, stdin=subprocess.DEVNULL, **kw,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the new venv's bin folder, the wheel)."""
    root = tmp_path_factory.mktemp("packaging")
    clone = root / "clone"
    head = run("git", "rev-parse", "HEAD", cwd=REPO).stdout.strip()
    run("git", "clone", "-q", "--no-checkout", REPO, clone, cwd=root)
    run("git", "checkout", "-q", head, cwd=clone)
    dist = root / "dist"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", dist, clone, cwd=root)  # fmt: skip
    (wheel,) = dist.glob("yandex_reverse-*.whl")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    purelib.mkdir(parents=True, exist_ok=True)
    # The project's dependencies, already installed here, are visible to the new venv.
    (purelib / "project_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
        "--no-deps", wheel, cwd=root)  # fmt: skip
    return venv / "bin", wheel


def test_the_command_runs_from_the_installed_copy(installed, tmp_path: Path) -> None:
    bin_dir, _wheel = installed
    version = run(bin_dir / "yandex-reverse", "--version", cwd=tmp_path).stdout.strip()
    assert version == "yandex-reverse 1.0.0"
    where = run(bin_dir / "python", "-c", "import yandex_reverse; print(yandex_reverse.__file__)",
                cwd=tmp_path).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(bin_dir.parent), where
    module = run(bin_dir / "python", "-m", "yandex_reverse", "--version", cwd=tmp_path)
    assert module.stdout.strip() == version

    write_xhr(tmp_path / "XHR", "cat.jpg", 0, [entity("a"), entity("b", pos=1)])
    run(bin_dir / "yandex-reverse", "import", "--xhr-dir", "XHR", "--db", "y.db", cwd=tmp_path)
    assert rows(tmp_path / "y.db", "SELECT count(*) FROM images")[0][0] == 2

    russian = run(bin_dir / "yandex-reverse", "--lang", "ru", "--help", cwd=tmp_path).stdout
    assert "использование: yandex-reverse" in russian  # the catalogues are in the wheel
    assert "шаг 2: XHR/ → yandex_images.db" in russian


def test_the_wheel_lists_the_runtime_dependencies_and_carries_its_data(installed) -> None:
    _bin, wheel = installed
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = archive.read(metadata).decode()
        entry_points = archive.read(metadata.replace("METADATA", "entry_points.txt")).decode()
    listed = {
        re.split(r"[<>=!~;\[ ]", line.split(":", 1)[1].strip(), maxsplit=1)[0].lower()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }
    wanted = requirement_names((REPO / "requirements.txt").read_text(encoding="utf-8"))
    assert listed == wanted
    assert "yandex-reverse = yandex_reverse.cli:main" in entry_points
    for data in ("selectors.json", "services.json", "locale/ru/LC_MESSAGES/common.po"):
        assert f"yandex_reverse/{data}" in names, data
    assert not [n for n in names if n.startswith("tests/")]
