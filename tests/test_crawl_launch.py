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
