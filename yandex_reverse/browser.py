"""Finding (and, for ``make``, installing) a Chromium for Playwright.

Order: an explicit path (``--browser`` or ``CHROMIUM_PATH``), then
Playwright's own Chromium if it is installed, then a system Chromium
(``chromium-headless-shell`` for headless runs: tabs of one context do not
stall there; full ``chromium`` for ``--headed``). ``python -m
yandex_reverse.browser --install`` installs one where none is found:
Playwright's download first, else Debian's packages.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

SYSTEM_HEADLESS = ("chromium-headless-shell",)
SYSTEM_FULL = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_HEADLESS_SHELL_PATHS = (
    "/usr/lib/chromium/chromium-headless-shell",
    "/usr/lib/chromium-headless-shell/chromium-headless-shell",
)

INSTALL_HINT = (
    "no Chromium found. Install one: `python -m playwright install chromium`, "
    "or on Debian/Ubuntu `apt-get install chromium chromium-headless-shell`, "
    "or pass --browser /path/to/chrome (or set CHROMIUM_PATH)"
)


class BrowserNotFound(RuntimeError):
    pass


def playwright_chromium(headless: bool = True) -> Path | None:
    """Playwright's own build, if ``playwright install`` has put it in place."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    try:
        with sync_playwright() as p:
            path = Path(p.chromium.executable_path)
    except Exception:
        return None
    if path.is_file():
        return path
    if headless:  # Playwright >= 1.49 launches headless-shell for headless runs
        base = path.parents[2] if len(path.parents) > 2 else path.parent
        for shell in base.parent.glob("chromium_headless_shell-*/*/headless_shell"):
            return shell
    return None


def system_chromium(headless: bool = True) -> Path | None:
    names = (SYSTEM_HEADLESS + SYSTEM_FULL) if headless else SYSTEM_FULL
    for name in names:
        found = shutil.which(name)
        if found:
            return Path(found)
    if headless:
        for candidate in _HEADLESS_SHELL_PATHS:
            if Path(candidate).is_file():
                return Path(candidate)
    return None


def find_browser(
    explicit: str | os.PathLike[str] | None = None, *, headless: bool = True
) -> Path | None:
    """The Chromium to launch, or None to let Playwright use its own default.

    Returns None only when Playwright's own Chromium is installed (launching
    without ``executable_path`` is then the most compatible choice).
    Raises :class:`BrowserNotFound` with install instructions if nothing exists.
    """
    chosen = explicit or os.environ.get("CHROMIUM_PATH")
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise BrowserNotFound(f"browser not found at {path}")
        return path
    if playwright_chromium(headless) is not None:
        return None
    system = system_chromium(headless)
    if system is not None:
        return system
    raise BrowserNotFound(INSTALL_HINT)


def install() -> int:
    """Make sure some Chromium is there: already present, Playwright's, or Debian's."""
    if playwright_chromium() is not None:
        print("browser: Playwright's Chromium is installed")
        return 0
    if system_chromium() is not None and system_chromium(headless=False) is not None:
        print(f"browser: using system Chromium ({system_chromium()})")
        return 0
    try:
        done = subprocess.run(
            [sys.executable, "-m", "playwright", "install", "chromium"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode == 0 and playwright_chromium() is not None:
            print("browser: installed Playwright's Chromium")
            return 0
    except (OSError, subprocess.TimeoutExpired):
        pass
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("browser: Playwright's download failed; installing Debian's chromium")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-headless-shell"],
            check=False,
        )
        if result.returncode == 0 and system_chromium() is not None:
            return 0
    print(f"browser: {INSTALL_HINT}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Find or install a Chromium for the crawler.")
    parser.add_argument("--install", action="store_true", help="install one if none is found")
    parser.add_argument("--headed", action="store_true", help="look for a full (headed) Chromium")
    args = parser.parse_args(argv)
    if args.install:
        return install()
    try:
        path = find_browser(headless=not args.headed)
    except BrowserNotFound as exc:
        print(exc, file=sys.stderr)
        return 1
    print(path or "playwright's own chromium")
    return 0


if __name__ == "__main__":
    sys.exit(main())
