"""Disk and ledger agree before a run starts.

A run killed between the rename of a file and the ledger write that names it
(kill -9, power loss) leaves a file under a final name that no ledger row
names; a re-run would fetch that URL again and store the picture twice. At
start, every file in the output folder named by the scheme
``{image_id}_{variant}_{W}x{H}_{md5(url)[:8]}{ext}`` that the ledger does not
name is matched back to its URL (the DB knows every URL of every result) and
checked (a whole image whose size and URL give exactly that name): it is
adopted into the ledger, or removed when it is broken, a second file of a
URL already stored, or a content already stored under another name (then
its URL points at that file). A file no URL of this DB gives is left alone. Sidecars left without their
image are removed too. This runs under the DB claim and the folder lock.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from .. import db as dbmod
from ..console import log
from ..urls import normalize_url
from .checks import FORMAT_FILES, FetchFailure, inspect_image
from .ledger import _FINAL_SQL, now
from .store import file_name, recorded_path, safe_id, variant_part

NAME = re.compile(
    r"^(?P<id>[A-Za-z0-9-]+)_(?P<variant>[A-Za-z0-9-]{1,16})_\d+x\d+_(?P<digest>[0-9a-f]{8})"
    r"(?P<ext>\.[a-z]+)$"
)
IMAGE_EXTENSIONS = frozenset(ext for ext, _mime in FORMAT_FILES.values())


@dataclass
class Reconciled:
    adopted: int = 0
    duplicates: int = 0  # orphans whose content was already stored: removed, URL pointed there
    removed: list[str] = field(default_factory=list)  # "name: reason"
    left: int = 0  # named like ours, but no URL of this DB gives the name: not ours to judge


def _orphans(out: Path, db_dir: Path, recorded: set[str]) -> tuple[list[Path], list[Path]]:
    """(image files named by the scheme that no ledger row names, lone sidecars)."""
    images: list[Path] = []
    sidecars: list[Path] = []
    stems: set[str] = set()
    for path in out.iterdir():
        match = NAME.match(path.name)
        if match is None or not path.is_file() or path.is_symlink():
            continue
        if match["ext"] == ".txt":
            sidecars.append(path)
            continue
        if match["ext"] not in IMAGE_EXTENSIONS:
            continue
        stems.add(path.stem)
        if recorded_path(path, db_dir) not in recorded:
            images.append(path)
    lone = [p for p in sidecars if p.stem not in stems]
    return sorted(images), sorted(lone)


def _candidates(conn: sqlite3.Connection) -> Iterator[tuple[str, str, str]]:
    """(image_id, variant_type, url) of every URL the DB knows."""
    for image_id, *urls in conn.execute("SELECT id, best_url, origUrl, img_href FROM images"):
        for value in urls:
            url = normalize_url(value)
            if url:
                yield str(image_id), "original", url
    for image_id, vtype, *urls in conn.execute(
        "SELECT image_id, variant_type, url, origin_url FROM image_variants"
    ):
        for value in urls:
            url = normalize_url(value)
            if url:
                yield str(image_id), str(vtype), url


def reconcile(db_path: Path, out: Path) -> Reconciled:
    db_dir = db_path.resolve().parent
    out = out.resolve()
    done = Reconciled()
    conn = dbmod.connect(db_path, create=False, migrate_schema=False)
    try:
        recorded = {p for (p,) in conn.execute("SELECT path FROM downloads WHERE path IS NOT NULL")}
        orphans, lone = _orphans(out, db_dir, recorded)
        for sidecar in lone:
            with suppress(OSError):
                sidecar.unlink()
        if not orphans:
            return done
        wanted: dict[tuple[str, str, str], Path] = {}
        for path in orphans:
            match = NAME.match(path.name)
            assert match is not None
            wanted[(match["id"], match["variant"], match["digest"])] = path
        found: dict[Path, tuple[str, str, str]] = {}
        for image_id, vtype, url in _candidates(conn):
            digest = hashlib.md5(url.encode("utf-8", "surrogatepass")).hexdigest()[:8]
            path = wanted.get((safe_id(image_id), variant_part(vtype), digest))
            if path is not None and path not in found:
                found[path] = (image_id, vtype, url)
        with dbmod.transaction(conn):
            for path in orphans:
                match = found.get(path)
                if match is None:
                    done.left += 1
                    log.info("left alone %s: no URL of this DB gives its name", path)
                    continue
                reason = _settle_orphan(conn, path, match, db_dir, done)
                if reason:
                    done.removed.append(f"{path.name}: {reason}")
                    log.info("removed %s: %s", path, reason)
                    for gone in (path, path.with_suffix(".txt")):
                        with suppress(OSError):
                            gone.unlink()
    finally:
        conn.close()
    return done


def _settle_orphan(
    conn: sqlite3.Connection,
    path: Path,
    match: tuple[str, str, str],
    db_dir: Path,
    done: Reconciled,
) -> str | None:
    """Adopt ``path`` into the ledger; or the reason it goes (None: adopted)."""
    image_id, vtype, url = match
    try:
        fmt, width, height = inspect_image(path)
    except FetchFailure as exc:
        return str(exc)
    ext, mime = FORMAT_FILES.get(fmt, ("", ""))
    if file_name(image_id, vtype, width, height, url, ext) != path.name:
        return "its content does not give its name"
    row = conn.execute("SELECT status, path FROM downloads WHERE url = ?", (url,)).fetchone()
    if row and row[0] == "done" and row[1] and (db_dir / row[1]).is_file():
        return "its URL is stored under another name"
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    same = conn.execute(
        "SELECT path FROM downloads WHERE sha256 = ? AND status = 'done' AND path IS NOT NULL",
        (sha,),
    ).fetchall()
    kept = next((p for (p,) in same if (db_dir / p).is_file()), None)
    stored_at = kept or recorded_path(path, db_dir)
    conn.execute(
        _FINAL_SQL,
        (url, image_id, vtype, "done", stored_at, len(data), mime, sha, 200, width, height,
         None, 0, 1, now()),
    )  # fmt: skip
    if kept:
        done.duplicates += 1
        return "the same content is stored under another name"
    done.adopted += 1
    return None
