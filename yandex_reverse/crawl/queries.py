"""What step 1 searches: the query photos of a folder, or the image URLs of a ``--urls`` file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .. import console, serp
from ..console import UsageError
from ..fsutil import atomic_write_text
from ..i18n import _

QUERY_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def find_queries(folder: Path) -> list[Path]:
    """The query photos: top level of ``folder``, as the original (plus .png/.webp)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in QUERY_EXTENSIONS
    )


@dataclass(frozen=True)
class Query:
    """One search: a photo to upload, or an image URL (``--urls``)."""

    name: str  # the file name, or serp.url_query_name(url)
    path: Path | None = None
    url: str | None = None


def read_url_list(path: Path) -> list[str]:
    """One http(s) URL a line; blank lines and ``#`` comments skipped; others refused."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            _("--urls {path}: {reason}").format(path=path, reason=console.one_line(exc))
        ) from exc
    urls: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if urlsplit(text).scheme not in ("http", "https") or not urlsplit(text).netloc:
            raise UsageError(
                _("--urls {path}: line {number} is not an http(s) URL").format(
                    path=path, number=number
                )
            )
        if text not in urls:
            urls.append(text)
    return urls


def record_query_names(xhr_dir: Path, names: list[str]) -> None:
    """``XHR/.query_names.json``: the full name of each query whose files' names are
    shortened (:func:`serp.query_stem`), for step 2 to link them to it."""
    long = {serp.query_stem(n): n for n in names if serp.query_stem(n) != n}
    known = serp.read_query_names(xhr_dir)
    if not long or all(known.get(k) == v for k, v in long.items()):
        return
    payload = {"version": 1, "names": {**known, **long}}
    atomic_write_text(
        xhr_dir / serp.QUERY_NAMES_FILE, json.dumps(payload, ensure_ascii=False, indent=2)
    )


def record_url_queries(xhr_dir: Path, urls: list[str]) -> None:
    """``XHR/.url_queries.json``: which URL each ``url_<sha1>`` query name stands for."""
    known = serp.read_url_queries(xhr_dir)
    known.update({serp.url_query_name(u): u for u in urls})
    payload = {"version": 1, "queries": known}
    atomic_write_text(
        xhr_dir / serp.URL_QUERIES_FILE, json.dumps(payload, ensure_ascii=False, indent=2)
    )
