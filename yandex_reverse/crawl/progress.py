"""``XHR/.progress.json`` (so a re-run skips finished queries) and how each query ended."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..console import log
from ..db import now_iso
from ..fsutil import atomic_write_text, write_all
from ..i18n import N_
from .queries import Query

PROGRESS_FILE = ".progress.json"
JOURNAL_SUFFIX = ".jsonl"  # .progress.jsonl: the records of the run under way
STATUS_LABELS = {  # how a query ended, as the progress file says it; shown translated
    "done": N_("done"),
    "failed": N_("failed"),
    "captcha": N_("captcha"),
    "not an image": N_("not an image"),
    "not started": N_("not started"),
    "interrupted": N_("interrupted"),
}


def journal_of(path: Path) -> Path:
    return path.with_suffix(JOURNAL_SUFFIX)


def read_progress(path: Path) -> tuple[dict[str, dict[str, Any]], bool]:
    """Every query's last record: the progress file, then its journal over it (read only);
    and whether there was a journal."""
    images: dict[str, dict[str, Any]] = {}
    if path.exists():
        try:
            images = dict(json.loads(path.read_text(encoding="utf-8")).get("images", {}))
        except (OSError, ValueError, AttributeError, TypeError):
            log.warning("progress file %s unreadable; starting afresh", path)
    journal = journal_of(path)
    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return images, False
    except OSError:
        log.warning("progress journal %s unreadable", journal)
        return images, False
    for line in data.splitlines():
        try:
            name, record = json.loads(line)
        except (ValueError, TypeError):
            continue  # a line cut short by an interrupt: that query is not finished
        if isinstance(name, str) and isinstance(record, dict):
            images[name] = record
    return images, True


class Progress:
    """``XHR/.progress.json``: one record per query (hidden: step 2 skips it).

    A run appends each record as one line to ``XHR/.progress.jsonl`` (O(1) a query; the
    whole file rewritten per query was O(n^2) over a run). The journal is folded into
    ``.progress.json`` (an atomic rename) when the progress is read and when the run
    ends (``close``), then removed. Replaying a journal over a file it was already folded
    into changes nothing (the last record of a query wins), so an interrupt at any
    moment loses no finished record; a line cut short by the interrupt is ignored (that
    query is searched again, its files overwritten under the same names)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = journal_of(path)
        self._fd: int | None = None
        self.images, journal = read_progress(path)
        if journal:
            self.compact()

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
        """One query's record: one line appended to the journal (one ``write``)."""
        record = {**fields, "updated": now_iso()}
        self.images[name] = record
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
            self._fd = os.open(self.journal, flags, 0o666)
            if not self._ends_a_line():
                os.write(self._fd, b"\n")  # after a line an interrupt cut short
        line = json.dumps([name, record], ensure_ascii=False, separators=(",", ":")) + "\n"
        write_all(self._fd, line.encode("utf-8"))

    def _ends_a_line(self) -> bool:
        """The journal is empty or ends with a whole line."""
        try:
            with self.journal.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                if not handle.tell():
                    return True
                handle.seek(-1, os.SEEK_END)
                return handle.read(1) == b"\n"
        except OSError:
            return True

    def compact(self) -> None:
        """Every record into ``.progress.json`` (atomic), then the journal removed."""
        payload = {"version": 1, "images": self.images}
        atomic_write_text(self.path, json.dumps(payload, ensure_ascii=False, indent=2))
        self._close_journal()
        self.journal.unlink(missing_ok=True)

    def close(self) -> None:
        """The end of the run: the journal folded into the progress file."""
        if self._fd is None and not self.journal.exists():
            return
        try:
            self.compact()
        except OSError as exc:  # the journal stays: the next run folds it in
            log.warning("progress file %s not rewritten: %s", self.path, exc)
            self._close_journal()

    def _close_journal(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


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
