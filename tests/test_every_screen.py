"""Every step's screens in the user's language, on a terminal and without one.

Steps 1 → 7.3 are run as a user runs them: step 1 against the Yandex
imitation in a real headless Chromium, step 5 through the image web on
127.0.0.1, the rest on what the earlier steps made, in one working folder.
On a pseudo-terminal every menu and question is answered with Enter (the
shown default; a ``[y/N]`` confirmation with "y", since its default is no);
with ``-y`` nothing is asked; without a terminal (stdin not a tty) the
defaults are taken silently and a confirmation needs ``--yes``. Under
``LANG=ru_RU.UTF-8`` every screen is Russian (no English word but flags,
file and table names, the modes' values, units), under ``LANG=C`` it holds
no Cyrillic. 7.1 and 7.2 are driven the same way in test_language.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from PIL import Image

from tests.conftest import REPO, rows
from tests.test_crawler import SMALL, browser
from tests.test_language import CYRILLIC, english_words, env_for
from tests.xhr_factory import entity, write_xhr
from yandex_reverse.fake_yandex.image_web import ImageWebServer
from yandex_reverse.fake_yandex.site import FakeYandex, ServerThread

# Words that are names, not prose: DB tables and columns, step 6's modes, 7.3's folders.
DATA_WORDS = {"origUrl", "images", "exact", "similar", "high", "medium", "low"}
PROMPT = [r"\[y/N\]: ", r"\n> ", r"\]: ", pexpect.EOF]
TIMEOUT = 240  # a step that waits for an answer nobody gives fails here, never hangs


@pytest.fixture(scope="module")
def web() -> Iterator[ImageWebServer]:
    with ImageWebServer() as server:
        yield server


@pytest.fixture(scope="module")
def yandex() -> Iterator[ServerThread]:
    with ServerThread(FakeYandex()) as thread:
        thread.fake.configure(**SMALL)
        yield thread


def on_terminal(args: list[str], *, lang: str, cwd: Path) -> tuple[str, int, int]:
    """Run a script on a pty, Enter to every question ("y" to a confirmation):
    (the screen, the number of questions answered with Enter, the exit code)."""
    env = {**env_for(lang), "HF_HUB_OFFLINE": "1"}
    child = pexpect.spawn(sys.executable, [str(REPO / args[0]), *args[1:]], cwd=str(cwd),
                          env=env, encoding="utf-8", timeout=TIMEOUT,
                          dimensions=(50, 200))  # fmt: skip
    screen, entered = [], 0
    while True:
        index = child.expect(PROMPT)
        screen.append(child.before + (child.after if isinstance(child.after, str) else ""))
        if index == 0:
            child.sendline("y")
        elif index in (1, 2):
            entered += 1
            child.sendline("")
        else:
            break
    child.close()
    return "".join(screen), entered, child.exitstatus


def without_terminal(args: list[str], *, lang: str, cwd: Path) -> tuple[str, int]:
    """Run a script with stdin not a tty (YR_NONINTERACTIVE unset): (the screen, exit code)."""
    done = subprocess.run(
        [sys.executable, str(REPO / args[0]), *args[1:]], cwd=cwd, capture_output=True,
        text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
        env={**env_for(lang), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    return done.stdout + done.stderr, done.returncode


def assert_speaks(screen: str, lang: str, what: str) -> None:
    if lang.startswith("ru"):
        assert CYRILLIC.search(screen), (what, screen)
        assert [w for w in english_words(screen) if w not in DATA_WORDS] == [], (what, screen)
    else:
        assert not CYRILLIC.search(screen), (what, screen)


def steps_2_to_7_3(web: ImageWebServer) -> list[list[str]]:
    return [
        ["2_XHRtoDB.py"],
        ["3_VK_Domain_Analyzer.py"],
        ["4_DB_cleanup.py"],
        ["5_Download_async.py", "--proxy", web.proxy_url],
        ["6_duplicate_finder.py", "yandex_images"],
        ["7_3_separate_images_by_quality.py", "--source", "yandex_images", "--model", "piqe"],
    ]


# Questions each step asks on a terminal: DB; DB and what; mode; mode and output folder.
QUESTIONS = {"4_DB_cleanup.py": 1, "5_Download_async.py": 2, "6_duplicate_finder.py": 1,
             "7_3_separate_images_by_quality.py": 2}  # fmt: skip


def working_folder(tmp_path: Path) -> Path:
    results = [
        entity(f"r{i}", pos=i, previews=[], dups=[],
               orig_url=f"http://sun9-52.userapi.com/impg/r{i}.jpg?size={900 + 40 * i}x600")
        for i in range(3)
    ]  # fmt: skip
    results.append(entity("bad", pos=3, orig_url="ftp://x/y", previews=[], dups=[]))
    write_xhr(tmp_path / "XHR", "cat.jpg", 0, results)
    return tmp_path


def assert_the_pipeline_ran(folder: Path) -> None:
    db = folder / "yandex_images.db"
    assert rows(db, "SELECT count(*) FROM downloads WHERE status = 'done'") == [(3,)]
    assert (folder / "vk_images.db").is_file()
    assert sum(1 for p in (folder / "yandex_images").glob("r*.jpg")) == 3
    quality = rows(folder / "sorted" / "quality" / "quality_report.db",
                   "SELECT count(*) FROM image_quality WHERE models = 'piqe'")  # fmt: skip
    assert quality == [(3,)]  # the default mode copies: the downloads stay


@pytest.mark.parametrize("lang", ["ru_RU.UTF-8", "C"])
def test_steps_2_to_7_3_on_a_terminal_enter_takes_every_default(
    lang: str, tmp_path: Path, web: ImageWebServer
) -> None:
    folder = working_folder(tmp_path)
    for args in steps_2_to_7_3(web):
        screen, entered, code = on_terminal(args, lang=lang, cwd=folder)
        assert code == 0, (args, screen)
        assert entered == QUESTIONS.get(args[0], 0), (args, screen)
        assert_speaks(screen, lang, args[0])
        if args[0] in QUESTIONS:
            assert ("(по умолчанию)" if lang.startswith("ru") else "(default)") in screen
    assert_the_pipeline_ran(folder)
    assert rows(folder / "yandex_images.db", "SELECT count(*) FROM images") == [(3,)]  # step 4


@pytest.mark.parametrize("lang", ["ru_RU.UTF-8", "C"])
def test_steps_2_to_7_3_with_yes_ask_nothing_on_a_terminal_or_without_one(
    lang: str, tmp_path: Path, web: ImageWebServer
) -> None:
    folder = working_folder(tmp_path)
    for args in steps_2_to_7_3(web):
        if lang.startswith("ru"):  # on a terminal: -y takes every default, shown, unasked
            screen, entered, code = on_terminal([*args, "-y"], lang=lang, cwd=folder)
            assert entered == 0 and "\n> " not in screen, (args, screen)
        else:  # without one
            screen, code = without_terminal([*args, "-y"], lang=lang, cwd=folder)
        assert code == 0, (args, screen)
        assert_speaks(screen, lang, args[0])
        if args[0] in QUESTIONS and lang.startswith("ru"):
            assert "(--yes)" in screen, (args, screen)
    assert_the_pipeline_ran(folder)


@pytest.mark.parametrize("lang", ["ru_RU.UTF-8", "C"])
def test_without_a_terminal_a_confirmation_needs_yes_in_the_users_language(
    lang: str, tmp_path: Path
) -> None:
    folder = working_folder(tmp_path)
    screen, code = without_terminal(["2_XHRtoDB.py"], lang=lang, cwd=folder)
    assert code == 0, screen
    screen, code = without_terminal(["4_DB_cleanup.py"], lang=lang, cwd=folder)
    assert code == 2, screen  # the DB menu took its default; the clean-up is not confirmed
    assert "--yes" in screen and "Traceback" not in screen
    assert_speaks(screen, lang, "4_DB_cleanup.py")
    assert rows(folder / "yandex_images.db", "SELECT count(*) FROM images") == [(4,)]


def photos_to_search(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (40, 30), (30, 120, 200)).save(folder / "cat.jpg")
    return folder


@browser
@pytest.mark.parametrize(
    ("lang", "how"),
    [("ru_RU.UTF-8", "terminal"), ("C", "terminal"), ("ru_RU.UTF-8", "terminal -y"),
     ("ru_RU.UTF-8", "no terminal"), ("C", "no terminal")],
)  # fmt: skip
def test_step_1_speaks_the_users_language_and_asks_nothing(
    lang: str, how: str, tmp_path: Path, yandex: ServerThread
) -> None:
    folder = photos_to_search(tmp_path / "search")
    args = ["1_Parse_XHR_Async.py", "--base-url", yandex.base_url, "--timeout", "15",
            "--quiet-period", "1.5"]  # fmt: skip
    if how == "no terminal":
        screen, code = without_terminal(args, lang=lang, cwd=folder)
    else:
        screen, entered, code = on_terminal(
            [*args, "-y"] if how.endswith("-y") else args, lang=lang, cwd=folder
        )
        assert entered == 0, screen  # step 1 has no question: its inputs are the folder's photos
    assert code == 0, screen
    assert_speaks(screen, lang, how)
    assert list((folder / "XHR").rglob("*.json")), screen  # it did search
