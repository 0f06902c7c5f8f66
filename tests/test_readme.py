"""The README's commands exist: every script and make target it names, every flag it passes."""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import REPO, run_script

FENCE = re.compile(r"```bash\n(.*?)```", re.S)


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def script_commands() -> list[list[str]]:
    return [c for c in readme_commands() if c[0] == "python" and c[1].endswith(".py")]


@cache
def help_of(script: str) -> str:
    done = run_script(script, "--help", cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_names_every_numbered_script() -> None:
    named = {c[1] for c in script_commands()}
    on_disk = {p.name for p in REPO.glob("[1-7]_*.py")}
    assert on_disk == named
    assert len(on_disk) == 9


@pytest.mark.parametrize("command", script_commands(), ids=lambda c: " ".join(c[1:])[:60])
def test_readme_script_flags_exist(command: list[str]) -> None:
    script = command[1]
    assert (REPO / script).is_file(), script
    flags = [arg.split("=")[0] for arg in command[2:] if arg.startswith("--")]
    text = help_of(script)
    for flag in flags:
        assert re.search(rf"{re.escape(flag)}\b", text), f"{script} has no {flag}"


def test_readme_make_targets_exist() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = {c[1] for c in readme_commands() if c[0] == "make"}
    assert {"demo", "test"} <= targets
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target


def test_readme_quick_start_gives_the_two_commands() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Быстрый старт")
    quick = text[start : text.index("\n## ", start + 5)]
    assert "make demo" in quick and "make test" in quick


def test_readme_files_it_names_exist() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for name in re.findall(r"`([\w./-]+\.(?:py|txt|yml|md|json|toml))`", text):
        if "/" in name or name.startswith(("requirements", "pyproject", "Makefile")):
            if any(ch in name for ch in "<>*") or name.startswith(("XHR/", "demo/")):
                continue
            candidates = [REPO / name, REPO / "yandex_reverse" / name]
            if name.endswith(".py") and not name[0].isdigit():
                candidates.append(REPO / "yandex_reverse" / Path(name).name)
            assert any(c.exists() for c in candidates), name


def test_readme_is_short_and_names_real_subcommands() -> None:
    from yandex_reverse.cli import COMMANDS

    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.split()) <= 2 * 1186  # at most twice the seed README's 1,186 words
    for activate in ("source .venv/bin/activate", r".venv\Scripts\Activate.ps1",
                     r".venv\Scripts\activate.bat"):  # fmt: skip
        assert activate in text
    named = set(re.findall(r"^\| [\d.—]+ \| `([a-z]+)` \|", text, re.M))
    assert named == {c.name for c in COMMANDS} - {"run", "demo"}
    for command in re.findall(r"yandex-reverse ([a-z]+)", text):
        assert any(command == c.name for c in COMMANDS), command
