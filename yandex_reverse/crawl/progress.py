"""``XHR/.progress.json`` (so a re-run skips finished queries) and how each query ended."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..console import log
from ..db import now_iso
from ..fsutil import atomic_write_text
from ..i18n import N_
from .queries import Query

PROGRESS_FILE = ".progress.json"
STATUS_LABELS = {  # how a query ended, as the progress file says it; shown translated
    "done": N_("done"),
    "failed": N_("failed"),
    "captcha": N_("captcha"),
    "not an image": N_("not an image"),
    "not started": N_("not started"),
    "interrupted": N_("interrupted"),
}


class Progress:
    """``XHR/.progress.json``: one record per query (hidden: step 2 skips it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.images: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                self.images = json.loads(path.read_text(encoding="utf-8")).get("images", {})
            except (OSError, ValueError, AttributeError):
                log.warning("progress file %s unreadable; starting afresh", path)

    def done(self, query: Query) -> bool:
        """Finished (or refused as not an image), and the photo is still the same file."""
        record = self.images.get(query.name, {})
        if record.get("status") not in ("done", "not an image"):
            return False
        if query.path is None:
            return record.get("url") == query.url
        stat = query.path.stat()
        return (
            record.get("size", stat.st_size) == stat.st_size
            and record.get("mtime_ns", stat.st_mtime_ns) == stat.st_mtime_ns
        )

    def record(self, name: str, **fields: Any) -> None:
        self.images[name] = {**fields, "updated": now_iso()}
        payload = {"version": 1, "images": self.images}
        atomic_write_text(self.path, json.dumps(payload, ensure_ascii=False, indent=2))


@dataclass
class Outcome:
    name: str
    status: str  # done | failed | captcha | not an image | not started | interrupted
    xhr_files: int = 0
    results: int = 0
    sites: int = 0
    end: str = ""
    bad_files: int = 0
    stage: str = ""
    reason: str = ""
