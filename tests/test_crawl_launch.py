"""Step 1's browser switches: pictures off without a window unless --load-images."""

from __future__ import annotations

from pathlib import Path

import playwright
import pytest

from yandex_reverse.crawl.browser_session import HEADLESS_BLINK, NO_IMAGES, launch_args
from yandex_reverse.crawl.cli import options_from, parse_args


def options(tmp_path: Path, *flags: str):
    return options_from(parse_args(["--images", str(tmp_path), *flags]))


@pytest.mark.parametrize(
    ("flags", "blocked"),
    [((), True), (("--load-images",), False), (("--headed",), False), (("--headless",), True)],
)
def test_pictures_are_off_only_without_a_window_and_without_load_images(
    tmp_path: Path, flags: tuple[str, ...], blocked: bool
) -> None:
    opts = options(tmp_path, *flags)
    assert opts.load_images is not blocked
    args = launch_args(opts)
    assert (NO_IMAGES in args) is blocked
    assert sum(a.startswith("--blink-settings=") for a in args) == int(blocked)


def test_the_switch_keeps_playwrights_own_headless_blink_settings() -> None:
    """A later --blink-settings replaces Playwright's: ours must repeat them."""
    lib = Path(playwright.__file__).parent / "driver" / "package" / "lib"
    found = set()
    for path in lib.rglob("*.js"):
        text = path.read_text(encoding="utf-8", errors="replace")
        start = text.find('"--blink-settings=')
        while start >= 0:
            found.add(text[start + len('"--blink-settings=') : text.index('"', start + 1)])
            start = text.find('"--blink-settings=', start + 1)
    assert found == {HEADLESS_BLINK}
    assert NO_IMAGES.startswith(f"--blink-settings={HEADLESS_BLINK},")
    assert NO_IMAGES.endswith(",imagesEnabled=false")


def test_every_look_calls_an_element_visible_as_playwright_does() -> None:
    """The start page's look, the first-visible look and the click target share one test."""
    from playwright.sync_api import sync_playwright

    from yandex_reverse.browser import BrowserNotFound, find_browser
    from yandex_reverse.crawl.job import (
        _BOTH_JS,
        _CLICK_AT_JS,
        _CLICK_TARGET_JS,
        _COUNT_JS,
        _FILE_INPUT_JS,
        _FIRST_VISIBLE_JS,
        _SHOWN_JS,
        _START_JS,
    )

    try:
        executable = find_browser(headless=True)
    except BrowserNotFound:
        pytest.skip("no Chromium (make browser)")
    cases = {
        "shown": "",
        "hidden": "visibility:hidden",
        "collapsed": "visibility:collapse",
        "none": "display:none",
        "empty": "width:0;height:0;padding:0;border:0",
    }
    buttons = "".join(
        f'<button class="c" id="{k}" style="{v}">cam</button>' for k, v in cases.items()
    )
    # inside a box whose content is skipped: it has a box, yet is not shown
    buttons += (
        '<div style="content-visibility:hidden"><button class="c" id="skipped">cam</button></div>'
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(executable) if executable else None)
        try:
            page = browser.new_page()
            page.set_content(f"<html><body>{buttons}</body></html>")
            for key in [*cases, "skipped"]:
                selector = f"#{key}"
                expected = page.locator(selector).is_visible()
                start = page.evaluate(_START_JS, ["#nothing", selector])
                assert start == {"captcha": False, "camera": expected}, key
                assert (page.locator(selector).evaluate_all(_FIRST_VISIBLE_JS) == 0) is expected
                index, _clear = page.locator(selector).evaluate_all(_CLICK_TARGET_JS)
                assert (index == 0) is expected, key
                assert page.evaluate(_SHOWN_JS, selector) is expected, key
                at = page.evaluate(_CLICK_AT_JS, selector)
                assert (at[0] == 0) is expected, key
                assert at[1] is (key == "shown"), key  # (nothing over it, in the viewport)
                assert page.evaluate(_COUNT_JS, selector) == 1
            assert page.locator("#shown").is_visible()
            assert not page.locator("#skipped").is_visible()
            box = page.evaluate("() => document.querySelector('#shown').getBoundingClientRect()")
            at = page.evaluate(_CLICK_AT_JS, "#shown")
            assert at[2:] == [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2]
            # a selector only Playwright reads: every plain look says so (null), for the
            # caller to ask the locator
            for js in (_SHOWN_JS, _CLICK_AT_JS, _COUNT_JS):
                assert page.evaluate(js, "text=cam") is None
            assert page.evaluate(_BOTH_JS, ["text=cam", ".c"]) is None
            assert page.evaluate(_BOTH_JS, [".c", "#shown"]) is True
            assert page.evaluate(_BOTH_JS, [".c", "#nothing"]) is False
            page.set_content(
                '<form style="display:none"><input type="file" id="decoy"></form>'
                '<div class="panel"><input type="file" id="own"></div>'
            )
            found = f"a => {{ const e = ({_FILE_INPUT_JS})(a); return e && e.id; }}"
            assert page.evaluate(found, [".panel", "input[type=file]"]) == "own"
            assert page.evaluate(found, [".none", "input[type=file]"]) == "decoy"
            assert page.evaluate(found, ["text=x", "input"]) is None
        finally:
            browser.close()


def test_the_features_list_is_read_in_both_shapes_of_playwrights_source() -> None:
    from yandex_reverse.crawl.browser_session import features_in

    array = 'x = 1;\n disabledFeatures = [\n  // see https://x/1\n  "A",\n  "B_2", // why\n].filter(Boolean);'
    assert features_in(array) == ("A", "B_2")
    comments = 'disabledFeatures = [\n  // see [1]\n  "A",\n  /* [2] */ "B",\n];'
    assert features_in(comments) == ("A", "B")
    lazy = "const disabledFeatures = (assistantMode) => [\n 'C',\n assistantMode ? 'D' : '',\n];"
    assert features_in(lazy) == ("C", "D")
    assert features_in("'--disable-features=E,F,G', '--other'") == ("E", "F", "G")
    assert features_in("no list here") is None


def renderer_disabled_features(args: list[str]) -> set[str]:
    """The --disable-features a renderer of a browser launched with ``args`` runs with."""
    import psutil
    from playwright.sync_api import sync_playwright

    from yandex_reverse.browser import BrowserNotFound, find_browser

    try:
        executable = find_browser(headless=True)
    except BrowserNotFound:
        pytest.skip("no Chromium (make browser)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(executable) if executable else None, args=args
        )
        try:
            browser.new_page().set_content("<p>hi</p>")
            features: set[str] = set()
            seen = 0
            for proc in psutil.Process().children(recursive=True):
                try:
                    cmdline = proc.cmdline()
                except psutil.Error:
                    continue
                if "--type=renderer" not in cmdline:
                    continue
                seen += 1
                for arg in cmdline:
                    if arg.startswith("--disable-features="):
                        features |= set(arg.split("=", 1)[1].split(","))
            assert seen, "no renderer process found"
            return features
        finally:
            browser.close()


def test_our_disabled_features_keep_every_one_playwright_disables(tmp_path: Path) -> None:
    """Chromium keeps only the last --disable-features: ours must repeat Playwright's."""
    from yandex_reverse.crawl.browser_session import EXTRA_DISABLED_FEATURES

    plain = renderer_disabled_features([])
    ours = renderer_disabled_features(launch_args(options(tmp_path)))
    assert plain, "Playwright disables features of its own"
    assert plain <= ours, plain - ours
    assert set(EXTRA_DISABLED_FEATURES) <= ours
