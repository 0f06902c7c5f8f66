"""Step 1's options: the defaults, the ``Options`` of a run and the page selectors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import console
from ..console import UsageError
from ..i18n import _

DEFAULT_SELECTORS = Path(__file__).parent.parent / "selectors.json"
ERRORS_FILE = "errors.log"
DEFAULT_BASE_URL = "https://yandex.ru/images/"
DEFAULT_BACKOFF = (60.0, 300.0, 600.0)
DEFAULT_QUIET = 3.0  # seconds of network silence with nothing clickable = the end
# The error notice (a page load that failed): its retry control (else "more") is clicked this
# many times, each after the page has been still for ERROR_SETTLE s (its own retries first);
# a notice still there after them, or after --timeout, ends the results (end "error").
ERROR_RETRIES = 3
ERROR_SETTLE = 1.0
# This many answered pages in a row that bring no result not seen before end the results
# (end "quiet"): a page serving empty pages for ever, its button staying.
DRY_PAGES = 3
TABS = ("similar", "sites")
UPLOAD_LIMIT = 5 * 1024 * 1024  # the upload API's limit (reference §6)


def load_selectors(path: Path | None) -> dict[str, str]:
    """The default selectors, with a user's file laid over them (unknown keys refused)."""
    selectors = json.loads(DEFAULT_SELECTORS.read_text(encoding="utf-8"))
    if path is not None:
        try:
            user = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(
                _("--selectors {path}: {reason}").format(path=path, reason=console.one_line(exc))
            ) from exc
        if not isinstance(user, dict):
            raise UsageError(_("--selectors {path}: expected a JSON object").format(path=path))
        unknown = sorted(k for k in user if k not in selectors and not k.startswith("_"))
        if unknown:
            raise UsageError(
                _("--selectors {path}: unknown keys {keys}").format(
                    path=path, keys=", ".join(unknown)
                )
            )
        selectors.update({k: v for k, v in user.items() if isinstance(v, str)})
    return {k: v for k, v in selectors.items() if not k.startswith("_")}


@dataclass
class Options:
    images: Path
    xhr_dir: Path
    max_tabs: int = 10
    headless: bool = True
    base_url: str = DEFAULT_BASE_URL
    selectors: dict[str, str] = field(default_factory=lambda: load_selectors(None))
    force: bool = False
    browser: str | None = None
    timeout: float = 30.0
    tab_timeout: float = 600.0
    max_captchas: int = 3
    backoff: tuple[float, ...] = DEFAULT_BACKOFF
    captcha_wait: float = 600.0
    quiet_period: float = DEFAULT_QUIET
    tabs: tuple[str, ...] = ("similar",)
    urls: Path | None = None
    proxy: str | None = None
    profile: Path | None = None
    delay: tuple[float, float] = (0.0, 0.0)
    load_images: bool = False  # headless: pictures are not loaded unless asked
