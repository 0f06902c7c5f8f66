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
    from yandex_reverse.crawl.job import _CLICK_TARGET_JS, _FIRST_VISIBLE_JS, _START_JS

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
            assert page.locator("#shown").is_visible()
            assert not page.locator("#skipped").is_visible()
        finally:
            browser.close()
