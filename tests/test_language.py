"""The user's language on every screen, and one prompt contract, through a terminal and without one.

Under ``LANG=ru_RU.UTF-8`` a step speaks Russian (its --help, questions,
messages, summary); under ``LANG=C`` English. On a terminal Enter takes the
shown default; ``--yes`` asks nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from PIL import Image

from tests.conftest import REPO
from yandex_reverse.cli import COMMANDS

SCRIPTS = sorted(p.name for p in REPO.glob("[1-7]_*.py"))
CYRILLIC = re.compile(r"[а-яё]", re.I)
LATIN_WORD = re.compile(r"(?<![-\w./<\[{%])[A-Za-z]{4,}(?![\w./>\]}(:])")


def env_for(lang: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LC_ALL", "LC_MESSAGES", "YR_LANG")}
    env.pop("YR_NONINTERACTIVE", None)
    return {**env, "LANG": lang, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO)}  # fmt: skip


def run(args: list[str], *, lang: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL, env={**env_for(lang), "YR_NONINTERACTIVE": "1"},
    )  # fmt: skip


def english_words(text: str) -> list[str]:
    """Words of ordinary English left in a screen (flags, names, paths, units excluded)."""
    allowed = {"VK", "OK.ru", "Yandex", "XHR", "SQLite", "JSON", "HTML", "MUSIQ", "CLIPIQA",
               "Chromium", "Playwright", "EXIF", "yandex", "reverse", "COMMAND", "piqe", "entropy",
               "square", "landscape", "portrait", "separate", "copy", "move", "ranges"}  # fmt: skip
    allowed |= {c.name for c in COMMANDS}  # command names stay English, like flags
    words = []
    for line in text.splitlines():
        if line.strip().startswith(("-", "usage", "$")):
            line = line.split("  ", 1)[-1]  # the help after a flag column
        words += [w for w in LATIN_WORD.findall(line) if w not in allowed and not w.isupper()]
    return words


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_step_help_speaks_the_locale(script: str, tmp_path: Path) -> None:
    russian = run([str(REPO / script), "--help"], lang="ru_RU.UTF-8", cwd=tmp_path)
    assert russian.returncode == 0, russian.stderr
    assert russian.stdout.startswith("использование:")
    assert "показать эту справку и выйти" in russian.stdout
    english = run([str(REPO / script), "--help"], lang="C", cwd=tmp_path)
    assert english.stdout.startswith("usage:")
    assert not CYRILLIC.search(english.stdout.replace("Похожие", "").replace("Сайты", ""))
    # --lang wins over the locale
    forced = run([str(REPO / script), "--lang", "en", "--help"], lang="ru_RU.UTF-8", cwd=tmp_path)
    assert forced.stdout.startswith("usage:")


def test_the_command_and_its_errors_in_both_languages(tmp_path: Path) -> None:
    help_ru = run(["-m", "yandex_reverse", "--help"], lang="ru_RU.UTF-8", cwd=REPO).stdout
    assert help_ru.startswith("использование: yandex-reverse")
    assert "шаг 7.3: разложить по качеству" in help_ru
    assert english_words(help_ru) == []
    bad = run(["-m", "yandex_reverse", "nope"], lang="ru_RU.UTF-8", cwd=tmp_path)
    assert bad.returncode == 2 and "Ошибка: неизвестная команда: nope" in bad.stderr
    bad_en = run(["-m", "yandex_reverse", "nope"], lang="C", cwd=tmp_path)
    assert bad_en.returncode == 2 and "Error: unknown command: nope" in bad_en.stderr
    missing = run(["-m", "yandex_reverse", "report"], lang="ru_RU.UTF-8",
                  cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 1
    assert "база не найдена" in missing.stderr and "шаг 2" in missing.stderr


def photos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 20), "red").save(folder / "wide.jpg")
    Image.new("RGB", (20, 40), "blue").save(folder / "tall.png")
    return folder


SORTERS = [
    ("7_1_separate_images_by_orientation.py", "orientation"),
    ("7_2_separate_images_by_MegaPixels.py", "megapixels"),
]


@pytest.mark.parametrize(("script", "kind"), SORTERS)
@pytest.mark.parametrize("lang", ["ru_RU.UTF-8", "C"])
def test_enter_takes_every_default_on_a_terminal(
    script: str, kind: str, lang: str, tmp_path: Path
) -> None:
    source = photos(tmp_path / "photos")
    child = pexpect.spawn(
        sys.executable, [str(REPO / script)], cwd=str(tmp_path), env=env_for(lang),
        encoding="utf-8", timeout=120,
    )  # fmt: skip
    screen = []
    ru = lang.startswith("ru")
    child.expect("Папка с изображениями" if ru else "Folder with images")
    screen.append(child.before + child.after)
    child.sendline(str(source))
    prompts = 0
    while True:
        index = child.expect([r"\[y/N\]: ", r"\n> ", r"\]: ", pexpect.EOF])
        screen.append(child.before + (child.after if isinstance(child.after, str) else ""))
        if index == 0:
            child.sendline("y")
        elif index in (1, 2):
            prompts += 1
            child.sendline("")  # Enter: the shown default
        else:
            break
    child.close()
    text = "".join(screen)
    assert child.exitstatus == 0, text
    assert prompts >= 2  # mode and square / dest and strategy: all answered by Enter
    assert (tmp_path / "sorted" / kind).is_dir()  # the default output, in the working folder
    assert (source / "wide.jpg").exists()  # the default mode copies
    if ru:
        assert "Режим" in text and "(по умолчанию)" in text and "Найдено изображений: 2" in text
        assert english_words(text) == []
    else:
        assert "Mode" in text and "(default)" in text and "Images found: 2" in text
        assert not CYRILLIC.search(text)


@pytest.mark.parametrize(("script", "kind"), SORTERS)
def test_yes_asks_nothing_and_says_what_it_took(script: str, kind: str, tmp_path: Path) -> None:
    source = photos(tmp_path / "photos")
    child = pexpect.spawn(
        sys.executable, [str(REPO / script), "--source", str(source), "-y"], cwd=str(tmp_path),
        env=env_for("ru_RU.UTF-8"), encoding="utf-8", timeout=120,
    )  # fmt: skip
    child.expect(pexpect.EOF)  # a question would wait here and time out
    child.close()
    assert child.exitstatus == 0, child.before
    assert "(--yes)" in child.before and "> " not in child.before
    assert (tmp_path / "sorted" / kind).is_dir()


def test_a_cancelled_megapixels_prompt_leaves_no_folder(tmp_path: Path) -> None:
    source = photos(tmp_path / "photos")
    typed = tmp_path / "new" / "place"
    child = pexpect.spawn(
        sys.executable, [str(REPO / "7_2_separate_images_by_MegaPixels.py"), "--source",
                         str(source)], cwd=str(tmp_path), env=env_for("C"), encoding="utf-8",
        timeout=120,
    )  # fmt: skip
    child.expect("Output folder:")
    child.expect("> ")
    child.sendline("2")
    child.expect("Output folder path")
    child.sendline(str(typed))
    child.expect("Mode:")
    child.sendcontrol("c")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert not (tmp_path / "new").exists()


def test_steps_2_3_4_6_speak_russian_without_a_terminal(tmp_path: Path) -> None:
    from tests.xhr_factory import entity, write_xhr

    write_xhr(tmp_path / "XHR", "cat.jpg", 0,
              [entity("a"), entity("b", pos=1, orig_url="ftp://x/y", previews=[], dups=[])])  # fmt: skip
    photos(tmp_path / "ph")
    (tmp_path / "ph" / "copy.jpg").write_bytes((tmp_path / "ph" / "wide.jpg").read_bytes())
    screens = {}
    for script, *args in (
        ("2_XHRtoDB.py",),
        ("3_VK_Domain_Analyzer.py",),
        ("4_DB_cleanup.py", "--db", "yandex_images.db", "--dry-run"),
        ("6_duplicate_finder.py", "ph", "--mode", "exact", "--dry-run"),
    ):
        done = run([str(REPO / script), *args], lang="ru_RU.UTF-8", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        screens[script] = done.stdout + done.stderr
    # Names that are data, not prose: services, DB columns, the report's fixed row names.
    data = {"Pinterest", "query", "origUrl", "image", "images"}
    for script, screen in screens.items():
        assert CYRILLIC.search(screen), script
        assert [w for w in english_words(screen) if w not in data] == [], (script, screen)
    # Step 3's row names are read translated; the files keep the stored English value.
    assert "(мусорный URL)" in screens["3_VK_Domain_Analyzer.py"]
    assert "(garbage URL)" in (tmp_path / "domains_report.csv").read_text(encoding="utf-8")


def test_stored_values_are_translated_where_read_and_kept_as_they_are() -> None:
    from yandex_reverse import i18n
    from yandex_reverse.labels import shown

    before = i18n.language()
    try:
        i18n.activate("ru")
        assert shown("(garbage URL)") == "(мусорный URL)"
        assert shown("broken image") == "повреждённое изображение"
        assert shown("smaller than --min-side 100") == "меньше --min-side 100"
        assert shown("not an image: text/plain") == "не изображение: text/plain"
        assert shown("HTTP 404") == "HTTP 404"  # unknown values as they are
        i18n.activate("en")
        assert shown("(garbage URL)") == "(garbage URL)"
    finally:
        i18n.activate(before)
