"""Step 2: import the saved XHR JSON files into ``yandex_images.db``.

Every file is read once: a ledger (``xhr_files``) remembers its size, mtime
and sha256, so a re-run skips unchanged files without parsing them and
re-imports a changed one without duplicates. Files are written in batches,
one transaction per batch, so an interrupted import loses at most the batch
in flight and a re-run completes it.

What a file holds is read by :mod:`yandex_reverse.serp` (the one place for
the Yandex format): a page of similar results (``<query>_xhr_<NNN>.json``) or
a page of the "Сайты" tab (``<query>_sites_<NNN>.json``, recognised by its
content). Loose values are normalised (numbers as strings, ``//`` URLs, HTML
in titles).

Nothing outside can stop the run: only regular files up to
:data:`MAX_FILE_BYTES` are read (a FIFO or a link to a device is refused);
JSON that orjson refuses is read again by the standard library, with long
integers kept as text; a value SQLite or Python cannot hold (an integer beyond
64 bits, a lone surrogate) makes its result a reason, the rest of the file is
written; a batch SQLite refuses is written again file by file, so one file
never holds back another. Every refused file and result is counted and its
reason is kept in the ledger.

Speed: parsing runs in one process per core while this one writes. A parser
hands a chunk of files over as a serialized in-memory SQLite database (its rows
bound there), which this process attaches and copies with INSERT ... SELECT;
rows go in as plain INSERTs where the DB cannot hold them yet (one indexed
lookup per row, in SQL), as upserts where it does; the first import into an
empty DB builds two indexes once at the end instead of row by row (see
``db.start_bulk_load``). A clean URL is taken after one quick check; any other
URL, HTML text and number sent as a string is normalised once per distinct
string per process. In the rows an absent value is :data:`NULL` (bound as NULL,
faster than None) and a URL equal to the result's origUrl is :data:`SAME`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import html
import json
import marshal
import os
import re
import signal
import sqlite3
import stat
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import orjson

from . import db, serp
from .cli import add_common_flags
from .console import (
    StepFailed,
    console,
    esc,
    log,
    one_line,
    print_summary,
    progress,
    setup_logging,
    table,
)
from .fsutil import Locked, exclusive_lock
from .i18n import _
from .labels import shown
from .serp import FormatError as BadFile  # a file that holds no results, one-line reason
from .serp import find_entities
from .urls import SIMPLE_URL, host_of, normalize_url

_TAG = re.compile(r"<[^>]*>")
_clean_url = SIMPLE_URL.fullmatch  # a URL normalize_url would return unchanged

# One transaction per batch: big enough to amortise the commit, small enough
# that an interrupt loses little.
BATCH_FILES = 200
BATCH_ENTITIES = 10_000
# Files go to the parser processes in chunks (one round trip per chunk), and
# only when there are enough of them to pay for starting the processes.
PARSE_CHUNK = 20
PARALLEL_FROM = 64
# A saved page is ~0.4 MB; anything far larger is not one (and is not read).
MAX_FILE_BYTES = 64 * 1024 * 1024

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1  # what SQLite's INTEGER holds
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in after the check never blocks
_BINARY = getattr(os, "O_BINARY", 0)

# A write SQLite refuses because of the rows themselves (not the disk, not a lock).
DATA_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,
    ValueError,
    TypeError,
)

T = TypeVar("T")


class BadValue(ValueError):
    """A value of one result that SQLite or Python cannot hold: the result is skipped."""


# ------------------------------------------------------------ normalising


def to_int(value: Any) -> int | None:
    """Yandex sends numbers as ints, floats or strings; anything else is None.

    A number beyond SQLite's 64-bit INTEGER raises :class:`BadValue` (it is
    not silently dropped: its result gets that reason).
    """
    if type(value) is int:  # the common case first: millions of calls
        if _INT_MIN <= value <= _INT_MAX:
            return value
        raise BadValue("integer beyond 64 bits")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return to_int(int(value))
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if -(2.0**63) <= value < 2.0**63:
            return int(value)
        raise BadValue("number beyond 64 bits")
    if isinstance(value, str):
        text = value.strip()
        try:
            whole = int(text)
        except ValueError:  # not an integer, or more digits than Python converts
            pass
        else:
            if _INT_MIN <= whole <= _INT_MAX:
                return whole
            raise BadValue("integer beyond 64 bits")
        try:
            number = float(text)
        except ValueError:
            return None
        if number in (float("inf"), float("-inf")) and text.lstrip("+-").isalpha():
            return None  # "inf", "Infinity": a word, not a number
        return to_int(number)
    return None


def to_bool(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(bool(value))
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes"):
            return 1
        if text in ("false", "0", "no", ""):
            return 0
    return None


def to_text(value: Any) -> str | None:
    if type(value) is str:
        return value if value and not value.isspace() else None
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)
    return text if text.strip() else None


def plain_text(value: Any) -> str | None:
    """``Рыжий <b>кот</b> &amp; …`` → ``Рыжий кот & …``."""
    text = to_text(value)
    if text is None:
        return None
    if "<" in text:
        text = _TAG.sub("", text)
    if "&" in text:
        text = html.unescape(text)
    return " ".join(text.split()) or None


def printable(text: str) -> str:
    """Text that may hold lone surrogates (outside names, keys) made safe to log and store."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# The columns of an ``images`` row as :func:`entity_rows` makes it: those every result holds
# first, then the fields only the original scripts read (reference §2, [L]), which a result
# of today's site does not send. Without them a row ends after the first part
# (:data:`SHORT_IMAGE` values): its hand-over binds 10 values fewer (NULL in SQLite).
_LEGACY_FIELDS: dict[str, str] = {  # column: the entity's key it is read from
    "docid": "docid", "documentid": "documentid", "reqid": "reqid", "rimId": "rimId",
    "url": "url", "width": "width", "height": "height", "ecom_shield": "ecomShield",
    "censored": "censored", "loading_state": "loading",
}  # fmt: skip
LEGACY_IMAGE_COLUMNS: tuple[str, ...] = tuple(_LEGACY_FIELDS)
ROW_IMAGE_COLUMNS: tuple[str, ...] = (
    *(c for c in db.IMPORT_IMAGE_COLUMNS if c not in LEGACY_IMAGE_COLUMNS),
    *LEGACY_IMAGE_COLUMNS,
)
SHORT_IMAGE = len(ROW_IMAGE_COLUMNS) - len(LEGACY_IMAGE_COLUMNS)
_LEGACY_KEYS = frozenset(_LEGACY_FIELDS.values())  # the entity's keys of LEGACY_IMAGE_COLUMNS
POS = ROW_IMAGE_COLUMNS.index("pos")
# The columns of free text (titles, descriptions, domain text) in an ``images`` row and a
# ``query_sites`` row: a lone surrogate there is mended (:func:`serp.mend_text`), elsewhere
# (ids, URLs) it refuses the result.
IMAGE_TEXT = frozenset(
    ROW_IMAGE_COLUMNS.index(c)
    for c in ("alt", "title", "domain", "loading_state", "title_raw", "snippet_text")
)
SITE_TEXT = frozenset({4, 5, 6, 7})  # title, title_raw, domain, description


def check_text(
    row: tuple[Any, ...], text: frozenset[int] = frozenset()
) -> tuple[tuple[Any, ...], bool]:
    """``row`` with its ``text`` columns mended, and whether one was; :class:`BadValue` when
    another string of ``row`` cannot be encoded (a lone surrogate in an id or a URL)."""
    mended = False
    for index, value in enumerate(row):
        if type(value) is str and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                if index not in text:
                    raise BadValue("text that is not valid Unicode (a lone surrogate)") from None
                mended = True
    if mended:
        row = tuple(
            serp.mend_text(v) if i in text and type(v) is str else v for i, v in enumerate(row)
        )
    return row, mended


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _list(value: Any) -> list[Any]:
    return value if type(value) is list else []


# A value a result does not hold is NULL in its rows: a NaN, which SQLite binds as
# NULL. The sqlite3 module binds a float as it is but "adapts" a None first (a key tuple
# built, a dict looked up, two attribute lookups), and most of a result's values are
# absent: binding the Nones took about 40 % of the hand-over's binding. No other value
# of a row is a float (numbers become ints), and every NULL is this object (``is NULL``).
NULL: Any = float("nan")
# A URL equal to the result's origUrl (img_href, best_url, most often a preview's): the
# int 0, which the writer's copy replaces by origUrl (no URL is an int). The three copies
# of it were a quarter of the hand-over's bytes, bound, serialized, sent and read back.
SAME = 0

# Results repeat values across and within pages (a title in every result of a
# site, the URL of the original as origUrl, img_href and preview, widths and
# heights, numbers sent as strings): each distinct string is normalised once
# per process. The functions cached are pure; a cache is emptied when full.
_CACHE_MAX = 1 << 16
_MISS: Any = object()
_url_cache: dict[str, str] = {}
_plain_cache: dict[str, str] = {}
_int_cache: dict[str, int] = {}
# A URL normalize_url returns as it is, checked faster than by SIMPLE_URL (no IGNORECASE,
# ASCII classes: what this matches SIMPLE_URL matches); anything else goes to normalize_url.
# It reads https?://[a-zA-Z0-9.-]+(?::[0-9]{1,5})?(?:[/?#]\S*)?, written so that the
# regex engine does less: what follows a part can never be what it matched (a host char
# after the host, a digit after the port, a non-space at a space or the end), so giving
# back a char never helps and every part is possessive (no backtracking state kept), and
# (?:X|) takes the place of (?:X)? (a group's repeat allocates its state): the same
# matches, -20 % of the instructions.
_URL_PATH = r"[/?#]\S*+"
_FAST_URL = rf"https?://[a-zA-Z0-9.-]++(?::[0-9]{{1,5}}+|)(?:{_URL_PATH}|)"
_fast_url = re.compile(_FAST_URL).fullmatch
# The same for a string of ASCII only: a printable ASCII char is never a space, so [!-~]
# takes less than \S does (never more: its control chars go the slow way), and it is one
# bitmap lookup a char where \S asks the char's Unicode category: -15 % again.
_ASCII_URL = _FAST_URL.replace(_URL_PATH, "[/?#][!-~]*+")
# Three URLs joined by spaces, each one _fast_url takes: a regex call costs ~3,000
# instructions before its first character, and a result's origUrl, image and snippet URL
# are checked in one. No part can hold a space (\S), so a match of exactly two proves
# each part clean; a URL that holds a space makes more parts, no match, and the URLs are
# checked one by one.
_fast_urls3 = re.compile(f"{_FAST_URL} {_FAST_URL} {_FAST_URL}").fullmatch
_fast_urls_of: dict[tuple[int, bool], Callable[[str], Any]] = {}


def _fast_urls(n: int, ascii: bool) -> Callable[[str], Any]:
    """The check of ``n`` URLs joined by spaces, as :data:`_fast_urls3` is of three (a
    result's origUrl, image and snippet URL and the URLs of its dups in one call), for a
    string of ASCII only (``ascii``: :data:`_ASCII_URL`) or any."""
    check = _fast_urls_of.get((n, ascii))
    if check is None:
        check = re.compile(" ".join([_ASCII_URL if ascii else _FAST_URL] * n)).fullmatch
        if len(_fast_urls_of) < 64:  # results with more dups than that: compiled each time
            _fast_urls_of[n, ascii] = check
    return check


def _null(value: Any) -> Any:
    return NULL if value is None else value


def _url(value: Any) -> str:
    """:func:`normalize_url` (NULL for None): a clean URL at once (a cache would cost as
    much: most are seen once), any other string once per distinct string."""
    if type(value) is not str:
        return NULL  # normalize_url refuses every non-string
    if _fast_url(value):
        return value
    if value[:2] == "//":  # protocol-relative: every thumb, each its own (no cache)
        full = "https:" + value
        if _fast_url(full):
            return full  # no space in it: normalize_url's strip() changes nothing
    return _unclean_url(value)


def _unclean_url(value: str) -> str:
    """:func:`normalize_url` of a string :data:`_fast_url` does not take, once per string."""
    hit = _url_cache.get(value, _MISS)
    if hit is _MISS:
        if value[:2] == "//" and _fast_url("https:" + value):  # protocol-relative: every thumb
            hit = "https:" + value  # no space in it: normalize_url's strip() changes nothing
        else:
            hit = _null(normalize_url(value))
        if len(_url_cache) >= _CACHE_MAX:
            _url_cache.clear()
        _url_cache[value] = hit
    return hit


def _url_or_text(value: Any) -> str:
    """The URL of ``value`` if it is one, else its text (NULL for None)."""
    url = _url(value)
    return _text(value) if url is NULL else url


def _plain(value: Any) -> str:
    """:func:`plain_text` (NULL for None), once per distinct string."""
    if type(value) is not str:
        return NULL if value is None else _null(plain_text(value))
    hit = _plain_cache.get(value, _MISS)
    if hit is _MISS:
        hit = _null(plain_text(value))
        if len(_plain_cache) >= _CACHE_MAX:
            _plain_cache.clear()
        _plain_cache[value] = hit
    return hit


def _int(value: Any) -> int:
    """:func:`to_int` (NULL for None), a string once per value (asked first: the callers
    answer a plain int in range themselves)."""
    if type(value) is str:
        hit = _int_cache.get(value, _MISS)
        if hit is _MISS:
            hit = _null(to_int(value))  # BadValue (beyond 64 bits) is raised every time
            if len(_int_cache) >= _CACHE_MAX:
                _int_cache.clear()
            _int_cache[value] = hit
        return hit
    if type(value) is int and _INT_MIN <= value <= _INT_MAX:
        return value
    if value is None:
        return NULL
    return _null(to_int(value))


def _text(value: Any) -> str:
    """:func:`to_text` (NULL for None) with a string answered first."""
    if type(value) is str:
        return value if value and not value.isspace() else NULL
    return NULL if value is None else _null(to_text(value))


def _bool(value: Any) -> int:
    """:func:`to_bool` (NULL for None) with True and False answered first."""
    if value is True:
        return 1
    if value is False:
        return 0
    return _null(to_bool(value))


# A variant row: kind, url, width, height, file size, then isMixedImage and the origin's
# url, width and height; without those four (most items send none) it ends after the
# first SHORT_VARIANT values, and its hand-over binds 4 values fewer.
SHORT_VARIANT = 5
# The kind of a variant row is its index in db.VARIANT_TYPES (preview, dups, thumb), an
# int: binding a text copies it (~800 instructions, four a result), an int does not; the
# writer's copy puts the name back, in SQL.
PREVIEW, DUPS, THUMB = (db.VARIANT_TYPES.index(k) for k in ("preview", "dups", "thumb"))
# The fields of the common item and of the common thumb, read in one call (those keys and
# nothing else: no isMixedImage, no origin), and the URL of a dup.
_item_fields = itemgetter("url", "w", "h", "fileSizeInBytes")
_thumb_fields = itemgetter("url", "size")
_url_field = itemgetter("url")


def _variant_row(
    kind: int, item: dict[str, Any], raw: Any, known: str, orig: str, clean: bool = False
) -> tuple[Any, ...] | None:
    """An ``image_variants`` row without its image id (NULL for what is absent; without the
    last four columns when the item holds neither isMixedImage nor origin), None
    without a usable URL; ``known`` is what the URL ``raw`` gives (origUrl for a preview,
    the image for a thumb: most often the item's own), and a URL equal to ``orig`` is
    :data:`SAME`; ``clean``: the caller has checked the URL with :data:`_fast_url`."""
    # The common cases (plain ints in range, absent fields) are answered
    # inline: this runs four times per result, millions of times. The values
    # that may raise BadValue are read in the same order as before.
    shape = len(item)  # 4: a common item, 2: a common thumb, 0: any other (read field by field)
    if shape == 4:  # its URL, size and file size, nothing else
        try:
            url, width, height, file_size = _item_fields(item)
        except KeyError:
            shape = 0
    elif shape == 2:  # its URL and {width, height}, nothing else
        try:
            url, size = _thumb_fields(item)
        except KeyError:
            shape = 0
    else:
        shape = 0
    if not shape:
        url = item.get("url")
    if type(url) is not str:
        return None
    if url == raw:
        url = known
    else:
        if not (clean or _fast_url(url)):
            url = _unclean_url(url)
        if url == orig:  # never when orig is NULL (a NaN equals nothing)
            url = SAME
    if url is NULL:
        return None
    if shape == 4:  # read above; no origin, no isMixedImage
        origin = mixed = None
    elif shape == 2:
        file_size = origin = mixed = None
        width, height = (
            (size.get("width"), size.get("height")) if type(size) is dict else (None, None)
        )
    else:
        get = item.get
        width, height = get("w"), get("h")
        if width is None and height is None and "size" in item:
            size = item["size"]
            if type(size) is dict:
                width, height = size.get("width"), size.get("height")
        origin, mixed = get("origin"), get("isMixedImage")
        if origin is None:
            origin_url = origin_w = origin_h = NULL
        else:
            origin = _dict(origin)
            origin_url = _url(origin.get("url"))
            origin_w, origin_h = _int(origin.get("w")), _int(origin.get("h"))
        file_size = get("fileSizeInBytes")
    row = (
        kind,
        url,
        width if type(width) is int and _INT_MIN <= width <= _INT_MAX else _int(width),
        height if type(height) is int and _INT_MIN <= height <= _INT_MAX else _int(height),
        file_size
        if type(file_size) is int and _INT_MIN <= file_size <= _INT_MAX
        else _int(file_size),
    )
    if origin is None and mixed is None:
        return row
    return (*row, NULL if mixed is None else _bool(mixed), origin_url, origin_w, origin_h)


def best_original(orig_url: str, img_href: str, variants: list[tuple]) -> str:
    """origUrl, else viewerData.img_href, else the largest preview/dups by w*h (NULL if none)."""
    if orig_url is not NULL:
        return orig_url
    if img_href is not NULL:
        return img_href
    best, most = NULL, 0
    for kind, url, width, height, *_rest in variants:
        if kind != THUMB:
            area = (0 if width is NULL else width) * (0 if height is NULL else height)
            if best is NULL or area > most:  # the first of the largest
                best, most = url, area
    return best


_second = itemgetter(1)


def _unique_variants(variants: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One row per (kind, url) of an entity, later values filling in (as upserts would)."""
    if len(set(map(len, variants))) > 1:
        variants = _widened(variants, len(_H_VARIANTS))
    merged: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in variants:
        old = merged.get(row[:2])
        merged[row[:2]] = (
            row
            if old is None
            else tuple(o if n is NULL else n for o, n in zip(old, row, strict=True))
        )
    return list(merged.values())


def entity_rows(key: str, entity: dict[str, Any]) -> tuple[tuple[Any, ...], list[tuple]]:
    """One entity → an ``images`` row (:data:`ROW_IMAGE_COLUMNS`; without the legacy
    columns where it holds none of those fields) and its ``image_variants`` rows (one per
    kind and URL, without the image id), NULL for what it does not hold, :data:`SAME` for a
    URL (img_href, best_url, a preview's or a dup's) equal to its origUrl."""
    # Absent fields, plain ints and clean URLs are answered inline; the values
    # that may raise BadValue are read in the same order as before.
    get = entity.get
    image_id = get("id")
    if not (type(image_id) is str and image_id and not image_id.isspace()):
        image_id = _text(image_id)
        if image_id is NULL:
            image_id = key
    viewer = get("viewerData")
    if type(viewer) is not dict:
        viewer = {}
    snippet = get("snippet")
    if not (type(snippet) is dict and snippet):
        snippet = _dict(viewer.get("snippet"))
    raw_orig, raw_image = get("origUrl"), get("image")
    sget = snippet.get
    snippet_url = sget("url")
    previews, dups = viewer.get("preview"), viewer.get("dups")
    dups_clean = False  # every string URL of the dups checked by _fast_url
    if type(raw_orig) is str and type(raw_image) is str and type(snippet_url) is str:
        image_url = "https:" + raw_image if raw_image[:2] == "//" else raw_image
        try:  # no dups, or each an object with a string URL: those URLs too
            joined = " ".join((raw_orig, image_url, snippet_url, *map(_url_field, dups or ())))
        except (KeyError, TypeError):  # a dup without a URL, or not an object, or dups
            joined, n = "", 0  # not a list: its URLs are checked one by one
        else:
            n = 3 + len(dups) if dups else 3  # (joined, dups is a list)
        if n and _fast_urls(n, joined.isascii())(joined):  # the common case: all clean
            orig_url, snippet_clean, dups_clean = raw_orig, snippet_url, True
        elif _fast_urls3(f"{raw_orig} {image_url} {snippet_url}"):  # a dup's is not
            orig_url, snippet_clean = raw_orig, snippet_url
        else:
            orig_url, image_url, snippet_clean = _url(raw_orig), _url(raw_image), _MISS
    else:
        orig_url, image_url, snippet_clean = _url(raw_orig), _url(raw_image), _MISS
    same = NULL if orig_url is NULL else SAME
    variants: list[tuple] = []
    if type(previews) is list:
        for item in previews:
            if type(item) is dict and (
                row := _variant_row(PREVIEW, item, raw_orig, same, orig_url)
            ):
                variants.append(row)
    if type(dups) is list:
        for item in dups:
            if type(item) is dict and (
                row := _variant_row(DUPS, item, raw_orig, same, orig_url, dups_clean)
            ):
                variants.append(row)
    thumb = viewer.get("thumb")
    if type(thumb) is dict:
        if row := _variant_row(THUMB, thumb, raw_image, image_url, NULL):
            variants.append(row)
    elif type(thumb) is list:
        for item in thumb:
            if type(item) is dict and (
                row := _variant_row(THUMB, item, raw_image, image_url, NULL)
            ):
                variants.append(row)
    # a (kind, url) twice needs a URL twice: the cheaper set first
    if (
        len(variants) > 1
        and len(set(map(_second, variants))) < len(variants)
        and len({v[:2] for v in variants}) < len(variants)
    ):
        variants = _unique_variants(variants)
    img_href = viewer.get("img_href")
    if img_href == raw_orig and type(img_href) is str:
        img_href = same
    else:
        img_href = _url(img_href)
        if img_href == orig_url:
            img_href = SAME
    title_raw = _text(sget("title"))
    pos, orig_w, orig_h = get("pos"), get("origWidth"), get("origHeight")
    fresh, gif = get("freshnessCounter"), get("gifLabel")
    domain = sget("domain")
    if snippet_clean is _MISS:
        snippet_clean = NULL if snippet_url is None else _url_or_text(snippet_url)
    pos = pos if type(pos) is int and _INT_MIN <= pos <= _INT_MAX else _int(pos)
    if _LEGACY_KEYS.isdisjoint(entity):  # today's results: none of the legacy fields
        legacy: tuple[Any, ...] = ()
    else:  # read in the order of the DB's columns, as before (a BadValue names the first)
        docid, documentid, reqid, rim_id = (
            get("docid"),
            get("documentid"),
            get("reqid"),
            get("rimId"),
        )
        url, width, height, loading = get("url"), get("width"), get("height"), get("loading")
        ecom, censored = get("ecomShield"), get("censored")
        legacy = (
            NULL if docid is None else _text(docid),
            NULL if documentid is None else _text(documentid),
            NULL if reqid is None else _text(reqid),
            NULL if rim_id is None else _text(rim_id),
            NULL if url is None else _url_or_text(url),
            width if type(width) is int and _INT_MIN <= width <= _INT_MAX else _int(width),
            height if type(height) is int and _INT_MIN <= height <= _INT_MAX else _int(height),
            0 if ecom is False else NULL if ecom is None else _bool(ecom),
            0 if censored is False else NULL if censored is None else _bool(censored),
            NULL if loading is None else _text(loading),
        )
    image = (
        image_id,
        pos,
        orig_url,
        image_url,
        _plain(get("alt")),
        orig_w if type(orig_w) is int and _INT_MIN <= orig_w <= _INT_MAX else _int(orig_w),
        orig_h if type(orig_h) is int and _INT_MIN <= orig_h <= _INT_MAX else _int(orig_h),
        NULL if title_raw is NULL else _plain(title_raw),
        NULL if domain is None else _text(domain),
        snippet_clean,
        fresh if type(fresh) is int and _INT_MIN <= fresh <= _INT_MAX else _int(fresh),
        0 if gif is False else NULL if gif is None else _bool(gif),
        title_raw,
        _plain(sget("text")),
        img_href,
        same if orig_url is not NULL else best_original(orig_url, img_href, variants),
    )
    if legacy:
        image += legacy
    return image, variants


def site_row(
    query: str, page: int, position: int, item: dict[str, Any], relative: str
) -> tuple[Any, ...]:
    """One entry of the "Сайты" tab → a ``query_sites`` row (:class:`BadValue` if no URL)."""
    url = normalize_url(item.get("url"))
    if url is None:
        raise BadValue("site without a usable URL")
    thumb = item.get("thumb")
    thumb_url = normalize_url(_dict(thumb).get("url") if type(thumb) is dict else thumb)
    original = _dict(item.get("originalImage"))
    title_raw = to_text(item.get("title"))
    return (
        query,
        url,
        page,
        position,
        plain_text(title_raw),
        title_raw,
        to_text(item.get("domain")) or host_of(url),
        plain_text(item.get("description")),
        thumb_url,
        to_int(original.get("width")),
        to_int(original.get("height")),
        relative,
    )


# ------------------------------------------------------------ reading a file


def _int_or_text(digits: str) -> int | str:
    """A JSON integer for the standard parser: a long one stays text (no digit limit)."""
    return int(digits) if len(digits) <= 20 else digits


def decode(raw: bytes) -> tuple[Any, bool]:
    """Bytes → (JSON, checked), with the reason as :class:`BadFile`.

    orjson reads almost every file; what it refuses (a lone surrogate, nesting
    over 1,024 levels, a number it cannot hold, NaN) is read again by the
    standard library, whose strings are then not known to be valid:
    ``checked`` is False and the rows are checked with :func:`check_text`.
    """
    if not raw or raw.isspace():
        raise BadFile("empty file")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return orjson.loads(raw), True
    except orjson.JSONDecodeError:
        pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFile(f"not UTF-8 (byte {exc.start})") from exc
    try:
        return json.loads(text, parse_int=_int_or_text), False
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise BadFile(f"truncated JSON (ends at line {exc.lineno})") from exc
        raise BadFile(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise BadFile("JSON nested too deeply") from exc
    except ValueError as exc:
        raise BadFile(f"invalid JSON: {one_line(exc)}") from exc


def query_and_page(relative: str) -> tuple[str, int | None]:
    """``cat.jpg_xhr_003.json`` → (``cat.jpg``, 3); other names → (stem, None)."""
    name = Path(relative).name
    try:
        saved = serp.parse_saved_name(name)
    except ValueError:  # more digits than Python converts
        raise BadFile("page number in the file name is out of range") from None
    if saved is not None:
        if saved[2] > _INT_MAX:
            raise BadFile("page number in the file name is out of range")
        return saved[0], saved[2]
    return Path(name).stem, None


def ledger_name(relative: str) -> tuple[str, str | None]:
    """The name the ledger keeps for a file, and a reason when it cannot be imported.

    A name that is not valid UTF-8 (on POSIX, Python holds it with surrogate
    escapes) is kept with backslash escapes and refused: it cannot name a query.
    """
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        escaped = os.fsencode(relative).decode("utf-8", "backslashreplace")
        return escaped, "file name is not valid UTF-8"
    return relative, None


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(path: str, st: os.stat_result) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_FILE_BYTES`, else :class:`BadFile`."""
    limit = f"larger than {MAX_FILE_BYTES // 2**20} MiB: not a saved page"
    if not stat.S_ISREG(st.st_mode):
        raise BadFile(f"not a regular file ({_file_kind(st.st_mode)})")
    if st.st_size > MAX_FILE_BYTES:
        raise BadFile(limit)
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | _BINARY)
    with open(fd, "rb") as handle:
        opened = os.fstat(fd)  # the file opened, not one swapped in since the check
        if not stat.S_ISREG(opened.st_mode):
            raise BadFile(f"not a regular file ({_file_kind(opened.st_mode)})")
        # As many bytes as it holds (read(limit) allocated 64 MiB afresh per file, and the
        # kernel zeroed each page the file's bytes then touched: 0.05 CPU-ms a file),
        # then, if it has grown since, on up to the limit.
        size = min(opened.st_size, MAX_FILE_BYTES)
        raw = handle.read(size + 1)
        if len(raw) > size:
            raw += handle.read(MAX_FILE_BYTES + 1 - len(raw))
    if len(raw) > MAX_FILE_BYTES:
        raise BadFile(limit)
    return raw


# ---------------------------------------------------------------- the run


@dataclass
class Stats:
    files: int = 0
    imported: int = 0
    unchanged: int = 0
    unchanged_failed: int = 0
    failed: int = 0
    empty_pages: int = 0
    entities: int = 0
    bad_entities: int = 0
    sites_pages: int = 0
    sites: int = 0
    new_images: int = 0
    new_variants: int = 0
    new_links: int = 0
    new_sites: int = 0
    url_queries: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ParsedFile:
    """One XHR file read and turned into rows (in a worker process)."""

    relative: str
    size: int
    mtime_ns: int
    sha256: str
    touched_only: bool = False  # same bytes as the ledger knows: only the mtime moved
    error: str | None = None
    kind: str = serp.KIND_RESULTS
    images: list[tuple[Any, ...]] = field(default_factory=list)
    variants: list[list[tuple[Any, ...]]] = field(default_factory=list)  # one list per image
    links: list[tuple[Any, ...]] = field(default_factory=list)
    sites: list[tuple[Any, ...]] = field(default_factory=list)
    bad: Counter[str] = field(default_factory=Counter)  # reason -> results skipped
    mended: int = 0  # results kept with a lone surrogate of their text replaced (U+FFFD)
    # Rows found; they stay right when the rows leave for the hand-over database.
    n_images: int = 0
    n_sites: int = 0

    @property
    def found(self) -> int:
        return self.n_sites if self.kind == serp.KIND_SITES else self.n_images

    def fail(self, reason: str) -> None:
        """Nothing of this file is written but its ledger row, with ``reason``."""
        self.error = reason
        self.images, self.variants, self.links, self.sites = [], [], [], []
        self.bad = Counter()
        self.mended = self.n_images = self.n_sites = 0

    def ledger_row(self) -> tuple[Any, ...]:
        now = db.now_iso()
        head = (self.relative, self.size, self.mtime_ns, self.sha256)
        if self.error is not None:
            return (*head, 0, "failed", self.error, now)
        notes = [f"{n} skipped: {reason}" for reason, n in self.bad.most_common()]
        if self.mended:
            notes.append(f"{self.mended} kept: {serp.MENDED_TEXT}")
        return (*head, self.found, "imported", "; ".join(notes) or None, now)


Job = tuple[str, str, str | None, str | None]  # path, ledger name, known sha256, refusal


def parse_file(path: str, relative: str, known_sha256: str | None) -> ParsedFile:
    """Read, hash and parse one file; a bad file comes back with ``error`` set."""
    st = os.stat(path)
    parsed = ParsedFile(relative, st.st_size, st.st_mtime_ns, "")
    try:
        raw = read_regular(path, st)
    except BadFile as exc:
        parsed.error = str(exc)
        return parsed
    parsed.size, parsed.sha256 = len(raw), hashlib.sha256(raw).hexdigest()
    if parsed.sha256 == known_sha256:
        parsed.touched_only = True
        return parsed
    try:
        data, checked = decode(raw)
        del raw
        query, page = query_and_page(relative)
        query = serp.full_query_name(path[: len(path) - len(relative)], query)
        sites = serp.sites_of(data)
        if sites is not None:
            parsed.kind = serp.KIND_SITES
            _add_sites(parsed, sites, query, page or 0, checked)
        else:
            _add_results(parsed, find_entities(data), query, page or 0, checked)
    except BadFile as exc:
        parsed.fail(str(exc))
    return parsed


def _add_results(
    parsed: ParsedFile, entities: dict[str, Any], query: str, page: int, checked: bool
) -> None:
    relative = parsed.relative
    for index, (key, entity) in enumerate(entities.items()):
        if type(entity) is not dict:
            parsed.bad["result is not an object"] += 1
            continue
        try:
            image, variants = entity_rows(str(key), entity)
            if not image[0]:
                raise BadValue("result without an id")
            if not checked:
                image, mended = check_text(image, IMAGE_TEXT)
                for row in variants:
                    check_text(row)
                parsed.mended += mended
        except BadValue as exc:
            parsed.bad[str(exc)] += 1
            continue
        parsed.images.append(image)
        parsed.variants.append(variants)
        position = index if image[POS] is NULL else image[POS]
        parsed.links.append((query, image[0], page, position, relative))


def _add_sites(
    parsed: ParsedFile, sites: list[dict[str, Any]], query: str, page: int, checked: bool
) -> None:
    for position, item in enumerate(sites):
        try:
            row = site_row(query, page, position, item, parsed.relative)
            if not checked:
                row, mended = check_text(row, SITE_TEXT)
                parsed.mended += mended
        except BadValue as exc:
            parsed.bad[str(exc)] += 1
            continue
        parsed.sites.append(row)


def parse_files(jobs: list[Job]) -> list[ParsedFile]:
    """A chunk of :func:`parse_file` jobs; an unreadable file comes back with its reason."""
    out: list[ParsedFile] = []
    for path, relative, known, refusal in jobs:
        try:
            if refusal is not None:
                st = os.stat(path)
                out.append(ParsedFile(relative, st.st_size, st.st_mtime_ns, "", error=refusal))
            else:
                out.append(parse_file(path, relative, known))
        except OSError as exc:
            out.append(ParsedFile(relative, 0, 0, "", error=f"unreadable: {exc.strerror or exc}"))
    return out


# ------------------------------------------------------------ the hand-over
#
# A chunk of parsed files travels from its parser process as one in-memory
# SQLite database (``Connection.serialize()``), its facts per file (ledger,
# counts, reasons) beside it as marshal. The parser binds the rows there;
# this process attaches the bytes (``deserialize``) and copies them with
# INSERT ... SELECT, which costs it about a seventh of binding them itself
# (0.027 s instead of 0.19 s per 60,000 variant rows). The copy, the ledger
# rows and the rest of the batch are one transaction, as before: a kill at any
# moment leaves the batch wholly written or not at all. The rows are bound many
# to a statement; a variant row has no image id (its image row's), a URL equal to
# its result's origUrl is SAME (0) and the copy puts origUrl back, in SQL.

HANDOVER = "handover"  # the name the chunk's database is attached under
# An image row carries its file (index in the chunk), whether it is the first
# of its id in the chunk, the rowids of its variants (vfrom..vto) and its
# position in the results; the query link is made in SQL from it and its file's
# row. The writer puts the rowids of the images new to the DB in h_new (an
# UPDATE of a flag column rewrote every wide image row: 0.18 s per 200,000).
_H_HEAD = ("file", "first", "vfrom", "vto", "position")
_H_IMAGES = (*_H_HEAD, *ROW_IMAGE_COLUMNS)
_H_SHORT_IMAGES = _H_IMAGES[: len(_H_HEAD) + SHORT_IMAGE]  # a row without the legacy columns
_H_VARIANTS = db.IMPORT_VARIANT_COLUMNS[1:]  # the image id comes from its image row
_H_SHORT_VARIANTS = _H_VARIANTS[:SHORT_VARIANT]  # a row without isMixedImage and origin
_SAME_AS_ORIG = ("img_href", "best_url")  # image columns that may hold SAME (and a variant's url)
_H_FILES = ("file", "query", "page", "xhr_file")
_H_SITES = ("file", *db.SITE_COLUMNS)
_HANDOVER_TABLES = {
    "h_images": ", ".join(_H_IMAGES),
    "h_variants": ", ".join(_H_VARIANTS),
    "h_files": "file INTEGER PRIMARY KEY, query, page, xhr_file",
    "h_sites": ", ".join(_H_SITES),
    "h_new": "r INTEGER PRIMARY KEY",
}


def _h_insert(table: str, columns: tuple[str, ...]) -> str:
    marks = ", ".join("?" * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


_H_INSERT_FILE = _h_insert("h_files", _H_FILES)
_H_INSERT_SITE = _h_insert("h_sites", _H_SITES)


@dataclass
class Chunk:
    """Parsed files in their order, their rows in ``rows`` (a serialized database) or None."""

    files: list[ParsedFile]
    rows: bytes | None


def _handover_db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for name, columns in _HANDOVER_TABLES.items():
        conn.execute(f"CREATE TABLE {name} ({columns})")
    return conn


# One hand-over connection per process (and thread), emptied for each chunk by
# deserializing the image of an empty one: 3 µs, against 0.2 ms to open one and create
# its tables. A forked parser makes its own (no SQLite connection crosses a fork).
_handover: dict[tuple[int, int], tuple[sqlite3.Connection, bytes]] = {}


def _empty_handover() -> sqlite3.Connection:
    """This process's hand-over database, empty (:func:`_handover_db` where no serialize())."""
    if not SERIALIZE:
        return _handover_db()
    key = (os.getpid(), threading.get_ident())
    if key not in _handover:
        if _handover and next(iter(_handover))[0] != key[0]:  # inherited: not ours to use
            _handover.clear()
        conn = _handover_db()
        _handover[key] = (conn, conn.serialize())
    conn, empty = _handover[key]
    if conn.in_transaction:
        conn.rollback()
    conn.deserialize(empty)
    return conn


# Rows are bound many to a statement (INSERT ... VALUES (...), (...), ...), which
# costs less than a step per row (executemany): a block is a power of two of rows, as
# many as hold ~500 values (more made it slower again: 0.214 s per 30,000 results with
# executemany, 0.186 with blocks of 16 images and 32 variants, 0.28 with blocks of 256).
_BLOCK_VALUES = 512


@functools.lru_cache(maxsize=64)
def _block_insert(table: str, columns: tuple[str, ...], rows: int) -> str:
    row = "(" + ", ".join("?" * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([row] * rows)


def _insert_flat(
    conn: sqlite3.Connection, table: str, columns: tuple[str, ...], values: list[Any]
) -> None:
    """Rows given one after another in ``values`` into ``table``, in their order."""
    width = len(columns)
    left = len(values) // width
    start, block = 0, 1 << (max(1, _BLOCK_VALUES // width).bit_length() - 1)
    while left:
        while block > left:
            block //= 2
        sql, step = _block_insert(table, columns, block), block * width
        while left >= block:
            conn.execute(sql, values[start : start + step])
            start += step
            left -= block


@dataclass
class _Handover:
    """The rows of a chunk's files, flat, in the order they go into the hand-over tables:
    images and variants in runs of rows of one width (``(columns, values)``, a run a
    file or more), so that the columns a file's rows all leave NULL are not bound."""

    images: list[tuple[tuple[str, ...], list[Any]]] = field(default_factory=list)
    variants: list[tuple[tuple[str, ...], list[Any]]] = field(default_factory=list)
    files: list[tuple[Any, ...]] = field(default_factory=list)
    sites: list[tuple[Any, ...]] = field(default_factory=list)

    def write(self, conn: sqlite3.Connection) -> None:
        conn.executemany(_H_INSERT_FILE, self.files)
        for columns, values in self.images:
            _insert_flat(conn, "h_images", columns, values)
        for columns, values in self.variants:
            _insert_flat(conn, "h_variants", columns, values)
        conn.executemany(_H_INSERT_SITE, self.sites)


def _run(runs: list[tuple[tuple[str, ...], list[Any]]], columns: tuple[str, ...]) -> list[Any]:
    """The values of the last run of ``runs`` if its rows have ``columns``, else a new run's."""
    if not runs or runs[-1][0] is not columns:
        runs.append((columns, []))
    return runs[-1][1]


def _widened(rows: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    """``rows`` of two widths (a file holding both), the short ones filled up with NULL."""
    return [row if len(row) == width else row + (NULL,) * (width - len(row)) for row in rows]


def _add(
    rows: _Handover, index: int, parsed: ParsedFile, seen: set[str], last: list[int]
) -> list[int]:
    """The rows of ``parsed`` (file ``index`` of its chunk) added to ``rows``; ``last``: the
    rowids of the last image and variant rows before them (rowids go on from them).
    Returns them after this file's rows."""
    img, var = last
    images, variants_of = parsed.images, parsed.variants
    widths = set(map(len, images))
    if len(widths) > 1:
        images = _widened(images, len(ROW_IMAGE_COLUMNS))
    columns = _H_IMAGES if len(ROW_IMAGE_COLUMNS) in widths else _H_SHORT_IMAGES
    add_image = _run(rows.images, columns).extend
    for image, variants, link in zip(images, variants_of, parsed.links, strict=True):
        img += 1
        image_id = image[0]
        first = 0 if image_id in seen else 1  # an int: a bool is bound the slow way, as None
        add_image((index, first, var + 1, var + len(variants), link[3]))
        add_image(image)
        var += len(variants)
        seen.add(image_id)
    widths = set(map(len, chain.from_iterable(variants_of)))
    if len(widths) > 1:
        variants_of = [_widened(v, len(_H_VARIANTS)) for v in variants_of]
    columns = _H_VARIANTS if len(_H_VARIANTS) in widths else _H_SHORT_VARIANTS
    _run(rows.variants, columns).extend(chain.from_iterable(chain.from_iterable(variants_of)))
    if parsed.links:
        query, _id, page, _position, xhr_file = parsed.links[0]
        rows.files.append((index, query, page, xhr_file))
    rows.sites.extend((index, *site) for site in parsed.sites)
    return [img, var]


def _bind_all(
    conn: sqlite3.Connection, files: list[ParsedFile], alone: bool, begin: bool = True
) -> None:
    """Every file's rows in one transaction, or (``alone``) each in its own: a file whose
    rows SQLite refuses is then failed with the reason and the others go on. ``begin``
    False: in the transaction the caller holds."""
    seen: set[str] = set()
    last = [0, 0]
    todo = [
        (index, parsed)
        for index, parsed in enumerate(files)
        if parsed.error is None and (parsed.images or parsed.sites)
    ]
    if not alone:
        rows = _Handover()
        for index, parsed in todo:
            last = _add(rows, index, parsed, seen, last)
        if begin:
            conn.execute("BEGIN")
        rows.write(conn)
        if begin:
            conn.commit()
        return
    for index, parsed in todo:
        conn.execute("BEGIN")
        try:
            rows = _Handover()
            after = _add(rows, index, parsed, set(seen), last)
            rows.write(conn)
        except DATA_ERRORS as exc:
            conn.rollback()
            parsed.fail(f"cannot be stored: {printable(one_line(exc))}")
            continue
        conn.commit()
        seen.update(image[0] for image in parsed.images)
        last = after


# Connection.serialize() came with Python 3.11; before it the rows travel as
# tuples and the writer binds them into its attached hand-over database.
SERIALIZE = hasattr(sqlite3.Connection, "serialize")


def pack(files: list[ParsedFile]) -> Chunk:
    """Parsed files → a :class:`Chunk`; a file whose rows SQLite refuses is failed with the reason."""
    for parsed in files:
        parsed.n_images, parsed.n_sites = len(parsed.images), len(parsed.sites)
    conn = _empty_handover()
    try:
        _bind_all(conn, files, alone=False)
    except DATA_ERRORS:
        conn.rollback()
        _bind_all(conn, files, alone=True)
    if not SERIALIZE:
        conn.close()
        return Chunk(files, None)  # the rows stay in the files
    rows = any(f.n_images or f.n_sites for f in files)
    blob = conn.serialize() if rows else None
    for parsed in files:
        parsed.images, parsed.variants, parsed.links, parsed.sites = [], [], [], []
    return Chunk(files, blob)


_FIELDS = tuple(ParsedFile.__dataclass_fields__)


def parse_files_packed(jobs: list[Job]) -> tuple[bytes, bytes | None]:
    """:func:`parse_files` for a worker process: the chunk (:func:`pack`) as the facts
    in one marshal blob and the rows (a serialized database) as they are.

    The facts per file are tuples of str, int and None; marshal writes and
    reads them 2-3× faster than pickle, and the pool then sends two bytes
    objects. Both ends are the same interpreter. The rows stay out of the
    marshal blob: it would copy them once more on each side (~430 KB a chunk).
    """
    chunk = pack(parse_files(jobs))
    facts = []
    for parsed in chunk.files:
        parsed.bad = dict(parsed.bad)  # type: ignore[assignment]  # marshal takes no subclass
        facts.append(tuple(getattr(parsed, name) for name in _FIELDS))
    return marshal.dumps(facts), chunk.rows


def _unpack(packed: tuple[bytes, bytes | None]) -> Chunk:
    blob, rows = packed
    facts = marshal.loads(blob)
    files = [ParsedFile(*values) for values in facts]
    for parsed in files:
        parsed.bad = Counter(parsed.bad)
    return Chunk(files, rows)


def _copy_statements(bulk: bool, one_file: bool) -> list[str]:
    """INSERT ... SELECT from the attached chunk, as the row-by-row statements would write.

    An image is new when it is the first of its id in the chunk and the DB
    does not hold it yet (its rowid put in h_new by the first statement); new images go in as
    plain inserts, first, then the others as upserts, in the chunk's order.
    In a bulk load the variants of an image already written wait in the
    pending table; otherwise they are upserted (a legacy DB may hold orphans).
    """
    where, i_where = ("file = ?", "i.file = ?") if one_file else ("true", "true")
    h = HANDOVER
    icols = ", ".join(db.IMPORT_IMAGE_COLUMNS)
    isel = ", ".join(
        f"CASE WHEN {c} = {SAME} THEN origUrl ELSE {c} END" if c in _SAME_AS_ORIG else c
        for c in db.IMPORT_IMAGE_COLUMNS
    )
    vcols = ", ".join(db.IMPORT_VARIANT_COLUMNS)
    kinds = " ".join(f"WHEN {i} THEN '{k}'" for i, k in enumerate(db.VARIANT_TYPES))
    vsel = ", ".join(
        (
            "i.id",
            *(
                f"CASE WHEN v.url = {SAME} THEN i.origUrl ELSE v.url END"
                if c == "url"
                else f"CASE v.variant_type {kinds} END"
                if c == "variant_type"
                else f"v.{c}"
                for c in _H_VARIANTS
            ),
        )
    )
    lcols = ", ".join(db.LINK_COLUMNS)
    lsel = "f.query, i.id, f.page, i.position, f.xhr_file"
    scols = ", ".join(db.SITE_COLUMNS)
    variants_of = (
        f"SELECT {vsel} FROM {h}.h_images i JOIN {h}.h_variants v "
        f"ON v.rowid BETWEEN i.vfrom AND i.vto WHERE {i_where} AND {{}} ORDER BY i.rowid, v.rowid"
    )
    new = f"i.rowid IN (SELECT r FROM {h}.h_new)"
    if bulk:
        to_new = f"INSERT INTO main.image_variants ({vcols}) " + variants_of.format(new)
        to_known = f"INSERT INTO main.{db.PENDING_VARIANTS} ({vcols}) " + variants_of.format(
            f"NOT {new}"
        )
    else:
        to_new = (
            f"INSERT INTO main.image_variants ({vcols}) "
            + variants_of.format(new)
            + db.VARIANT_UPDATE
        )
        to_known = (
            f"INSERT INTO main.image_variants ({vcols}) "
            + variants_of.format(f"NOT {new}")
            + db.VARIANT_UPDATE
        )
    return [
        f"INSERT INTO {h}.h_new (r) SELECT rowid FROM {h}.h_images WHERE {where} AND first "
        f"AND NOT EXISTS (SELECT 1 FROM main.images m WHERE m.id = {h}.h_images.id)",
        f"INSERT INTO main.images ({icols}) SELECT {isel} FROM {h}.h_images "
        f"WHERE {where} AND rowid IN (SELECT r FROM {h}.h_new) ORDER BY rowid",
        f"INSERT INTO main.images ({icols}) SELECT {isel} FROM {h}.h_images "
        f"WHERE {where} AND rowid NOT IN (SELECT r FROM {h}.h_new) ORDER BY rowid"
        + db.IMAGE_UPDATE,
        to_new,
        to_known,
        f"INSERT INTO main.query_results ({lcols}) SELECT {lsel} FROM {h}.h_images i "
        f"JOIN {h}.h_files f ON f.file = i.file WHERE {i_where} ORDER BY i.rowid" + db.LINK_UPDATE,
        f"INSERT INTO main.query_sites ({scols}) SELECT {scols} FROM {h}.h_sites "
        f"WHERE {where} ORDER BY rowid" + db.SITE_UPDATE,
    ]


PARSER_GC = (50_000, 20, 100)  # gc thresholds of a parser process (Python's: 700, 10, 10)


def _worker_init(parent: int) -> None:
    """A parser process: Ctrl-C is the main process's to handle; it ends when the main one does.

    A forked worker holds both ends of the pool's pipes, so after a kill -9 of
    the main process it would wait for work forever: it watches its parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The rows are tuples, dicts and lists without cycles, made by the hundred thousand:
    # the cycle collector ran every 700 of them for nothing (~4 % of a parser's CPU).
    # What the fork inherited is frozen out of its scans; cycles are still collected.
    gc.freeze()
    gc.set_threshold(*PARSER_GC)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def parsed_in_order(jobs: Iterator[Job], workers: int, chunk_files: int) -> Iterator[Chunk]:
    """Parse in ``workers`` processes while this one writes; order kept, memory bounded."""
    chunks = _chunks(jobs, chunk_files)
    if workers <= 1:
        for chunk in chunks:
            yield _unpack(parse_files_packed(chunk))
        return
    with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
        pending: deque[Future[tuple[bytes, bytes | None]]] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(parse_files_packed, chunk))
                if len(pending) > workers * 4:
                    yield _unpack(pending.popleft().result())
            while pending:
                yield _unpack(pending.popleft().result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def chunk_size(batch_files: int) -> int:
    """Files per parser chunk: at most :data:`PARSE_CHUNK`, whole chunks making a batch."""
    most = max(1, min(PARSE_CHUNK, batch_files))
    return max(d for d in range(1, most + 1) if batch_files % d == 0)


def _chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def xhr_files(root: Path) -> Iterator[tuple[str, str]]:
    """``*.json`` under ``root``, sorted, hidden files and folders excluded: (path, the path
    relative to ``root`` with ``/``). Plain strings: a re-run checks every file (no pathlib)."""
    top = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        sub = os.path.relpath(dirpath, top)
        prefix = "" if sub == os.curdir else sub.replace(os.sep, "/") + "/"
        for name in sorted(filenames):
            if name.lower().endswith(".json") and not name.startswith("."):
                yield os.path.join(dirpath, name), prefix + name


class Writer:
    """Batches of parsed chunks, one transaction each; a refused batch goes file by file."""

    def __init__(self, conn: sqlite3.Connection, stats: Stats, *, bulk: bool, batch_files: int):
        self.conn, self.stats, self.bulk, self.batch_files = conn, stats, bulk, batch_files
        self.chunks: list[Chunk] = []
        self.files = self.rows = 0
        conn.execute(f"ATTACH ':memory:' AS {HANDOVER}")
        if not SERIALIZE:
            for name, columns in _HANDOVER_TABLES.items():
                conn.execute(f"CREATE TABLE {HANDOVER}.{name} ({columns})")
        self.copy = _copy_statements(bulk, one_file=False)
        self.copy_one = _copy_statements(bulk, one_file=True)

    def add(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.files += len(chunk.files)
        self.rows += sum(f.n_images + f.n_sites for f in chunk.files)
        if self.files >= self.batch_files or self.rows >= BATCH_ENTITIES:
            self.flush()

    def flush(self) -> None:
        chunks, self.chunks, self.files, self.rows = self.chunks, [], 0, 0
        if not chunks:
            return
        try:
            with db.transaction(self.conn):
                for chunk in chunks:
                    self._write(chunk, None)
        except DATA_ERRORS as exc:
            files = sum(len(chunk.files) for chunk in chunks)
            log.warning("a batch of %d files was refused (%s); file by file", files, exc)
            for chunk in chunks:
                for index in range(len(chunk.files)):
                    self._write_alone(chunk, index)
        for chunk in chunks:
            for parsed in chunk.files:
                self._count(parsed)

    def _write_alone(self, chunk: Chunk, index: int) -> None:
        try:
            with db.transaction(self.conn):
                self._write(chunk, index)
        except DATA_ERRORS as exc:
            parsed = chunk.files[index]
            log.warning("%s: cannot be stored", parsed.relative, exc_info=True)
            parsed.fail(f"cannot be stored: {printable(one_line(exc))}")
            with db.transaction(self.conn):
                self._write(chunk, index)

    def _write(self, chunk: Chunk, index: int | None) -> None:
        """The chunk's rows (or those of its file ``index``) and ledger rows, in the open
        transaction."""
        conn = self.conn
        files = chunk.files if index is None else [chunk.files[index]]
        touched = [(f.mtime_ns, f.relative) for f in files if f.touched_only]
        conn.executemany("UPDATE xhr_files SET mtime_ns = ? WHERE path = ?", touched)
        if any(f.error is None and f.found for f in files):
            if chunk.rows is not None:
                conn.deserialize(chunk.rows, name=HANDOVER)
            else:  # no serialize(): the rows came as tuples
                for name in _HANDOVER_TABLES:
                    conn.execute(f"DELETE FROM {HANDOVER}.{name}")
                _bind_all(conn, chunk.files, alone=False, begin=False)
            if index is None:
                for statement in self.copy:
                    conn.execute(statement)
            else:
                for statement in self.copy_one:
                    conn.execute(statement, (index,))
        conn.executemany(db.UPSERT_LEDGER, [f.ledger_row() for f in files if not f.touched_only])

    def _count(self, parsed: ParsedFile) -> None:
        stats = self.stats
        if parsed.touched_only:
            stats.unchanged += 1
        elif parsed.error is not None:
            stats.failed += 1
            stats.reasons[parsed.error.split(" (")[0].split(":")[0]] += 1
            stats.failures.append((parsed.relative, parsed.error))
            log.warning("%s: %s", parsed.relative, parsed.error)
        else:
            stats.imported += 1
            stats.bad_entities += sum(parsed.bad.values())
            stats.reasons.update(parsed.bad)
            for reason, n in parsed.bad.items():
                log.warning("%s: %d skipped: %s", parsed.relative, n, reason)
            if parsed.mended:
                stats.reasons[serp.MENDED_TEXT] += parsed.mended
                log.warning("%s: %d kept: %s", parsed.relative, parsed.mended, serp.MENDED_TEXT)
            if parsed.kind == serp.KIND_SITES:
                stats.sites_pages += 1
                stats.sites += parsed.n_sites
            else:
                stats.entities += parsed.n_images
                stats.empty_pages += not parsed.n_images


def count(conn: sqlite3.Connection, table_name: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table_name}").fetchone()[0]


_COUNTED = ("images", "image_variants", "query_results", "query_sites")


def default_workers() -> int:
    """One parser per core: the writer mostly waits on SQLite, which releases the GIL."""
    return max(1, os.cpu_count() or 1)


# A DB the first import fills is given pages of 16 KiB (SQLite's default is 4 KiB):
# the writer's CPU -10 % for 200,000 results (commits 0.55 -> 0.40 s, the unique
# index 0.45 -> 0.37 s), a quarter of the page writes.
BULK_PAGE_SIZE = 16384


def larger_pages(conn: sqlite3.Connection) -> bool:
    """Give a DB without rows :data:`BULK_PAGE_SIZE` pages (VACUUM, out of WAL mode: a kill
    leaves it whole, the next connect puts WAL back), and keep it out of WAL mode, with a
    rollback journal, until :func:`wal_again`. Nothing changes where another connection
    holds the DB; returns whether the pages are that size now.

    The bulk load's transactions then write each new page once, into the DB file (a
    rollback journal keeps only the old content of the few pages that existed before),
    instead of into the WAL and again at each checkpoint: per 200,000 results 71,000 ->
    35,000 ``pwrite``, 23,000 -> 4,700 ``pread``. A kill leaves a hot journal, which the
    next connection rolls back before it reads (:func:`db.connect` then puts WAL back)."""
    try:
        out = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0].lower() == "delete"
        if out and conn.execute("PRAGMA page_size").fetchone()[0] != BULK_PAGE_SIZE:
            conn.execute(f"PRAGMA page_size = {BULK_PAGE_SIZE}")
            conn.execute("VACUUM")
    except sqlite3.OperationalError as exc:  # another connection reads it: keep its pages
        log.info("page size and WAL mode left as they are: %s", exc)
        wal_again(conn)
    return conn.execute("PRAGMA page_size").fetchone()[0] == BULK_PAGE_SIZE


def wal_again(conn: sqlite3.Connection) -> None:
    """WAL mode, as :func:`db.connect` gives it (outside a transaction; a no-op in WAL)."""
    conn.execute("PRAGMA journal_mode = WAL")


def import_url_queries(conn: sqlite3.Connection, xhr_dir: Path) -> int:
    """The image URL of each search by URL (step 1's ``.url_queries.json``) into ``query_sources``."""
    pairs = [
        (name, url)
        for name, url in serp.read_url_queries(xhr_dir).items()
        if printable(name) == name and printable(url) == url
    ]
    if pairs:
        with db.transaction(conn):
            conn.executemany(db.UPSERT_QUERY_SOURCE, pairs)
    return len(pairs)


def import_folder(
    xhr_dir: Path, db_path: Path, batch_files: int = BATCH_FILES, workers: int | None = None
) -> Stats:
    """Import every XHR file under ``xhr_dir`` into ``db_path``; returns the counts."""
    if not xhr_dir.is_dir():
        raise StepFailed(
            _("XHR folder not found: {path} (run step 1 first, or pass --xhr-dir)").format(
                path=xhr_dir
            )
        )
    files = list(xhr_files(xhr_dir))
    if not files:
        raise StepFailed(_("no *.json files in {path}").format(path=xhr_dir))
    lock = db_path.with_name(db_path.name + ".import.lock")
    try:
        # One import per DB: a second run beside it stops at once.
        with exclusive_lock(lock, per_process=True):
            return _import(xhr_dir, db_path, files, batch_files, workers)
    except Locked:
        raise StepFailed(
            _("another 2_XHRtoDB.py is importing into {path}; wait for it to end").format(
                path=db_path
            )
        ) from None
    except OSError as exc:  # the DB's folder is missing or not writable
        if exc.filename is None or Path(exc.filename) != lock:
            raise
        raise StepFailed(
            _("cannot write next to the database {path}: {reason}").format(
                path=db_path, reason=exc.strerror or exc
            )
        ) from None


def _import(
    xhr_dir: Path,
    db_path: Path,
    files: list[tuple[str, str]],
    batch_files: int,
    workers: int | None,
) -> Stats:
    stats = Stats(files=len(files))
    conn = db.connect(db_path)
    try:
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: the index pages stay cached
        if db.bulk_load_unfinished(conn):
            log.info("finishing the bulk load an interrupted run left")
            db.finish_bulk_load(conn)
        bulk = db.is_empty_for_import(conn)
        ledger = {
            path: (size, mtime_ns, sha256, status)
            for path, size, mtime_ns, sha256, status in conn.execute(
                "SELECT path, size, mtime_ns, sha256, status FROM xhr_files"
            )
        }
        jobs: list[Job] = []
        for path, posix in files:
            relative, refusal = ledger_name(posix)
            known = ledger.get(relative)
            try:
                st = os.stat(path)
            except OSError:
                st = None
            seen = (st.st_size, st.st_mtime_ns) if st else (0, 0)  # (0, 0): cannot be stat'ed
            if known and (known[0], known[1]) == seen and (st or known[3] == "failed"):
                stats.unchanged += 1  # skipped by the ledger, not even read
                stats.unchanged_failed += known[3] == "failed"
            else:
                jobs.append((path, relative, known[2] if known else None, refusal))
        del ledger
        # Nothing to read (a re-run): nothing can change, no table is counted.
        before = [count(conn, t) for t in _COUNTED] if jobs else [0] * len(_COUNTED)
        stats.url_queries = import_url_queries(conn, xhr_dir)
        if workers is None:
            workers = default_workers() if len(jobs) >= PARALLEL_FROM else 1
        if bulk and jobs:
            larger_pages(conn)
            db.start_bulk_load(conn)
            conn.execute("PRAGMA foreign_keys = OFF")  # every row's parent is in its batch
        writer = Writer(conn, stats, bulk=bulk and bool(jobs), batch_files=batch_files)
        with progress(_("Importing XHR"), total=len(files)) as advance:
            advance(stats.unchanged)
            for chunk in parsed_in_order(iter(jobs), workers, chunk_size(batch_files)):
                writer.add(chunk)
                advance(len(chunk.files), info=_("{n} results").format(n=f"{stats.entities:,}"))
            writer.flush()
        if writer.bulk:
            conn.execute("PRAGMA foreign_keys = ON")
            db.finish_bulk_load(conn)
        after = [count(conn, t) for t in _COUNTED] if jobs else before
    finally:
        if not conn.in_transaction:  # the bulk load ran with a rollback journal: WAL again
            with contextlib.suppress(sqlite3.Error):  # (else the next connect puts it back)
                wal_again(conn)
        conn.close()
    stats.new_images, stats.new_variants, stats.new_links, stats.new_sites = (
        a - b for a, b in zip(after, before, strict=True)
    )
    return stats


def report(stats: Stats, db_path: Path) -> None:
    lines: list[tuple[str, Any]] = [
        (_("files found"), stats.files),
        (_("files imported"), stats.imported),
        (_("files skipped (unchanged)"), stats.unchanged),
        (_("files failed"), stats.failed),
        (_("empty result pages"), stats.empty_pages),
        (_("results read"), stats.entities),
        (_("results skipped (malformed)"), stats.bad_entities),
        (_("images new"), stats.new_images),
        (_("results of images already known"), stats.entities - stats.new_images),
        (_("variants new"), stats.new_variants),
        (_("query links new"), stats.new_links),
    ]
    if stats.unchanged_failed:
        lines.insert(3, (_("of them failed before"), stats.unchanged_failed))
    if stats.sites_pages or stats.new_sites:
        lines += [
            (_("sites tab pages imported"), stats.sites_pages),
            (_("sites read"), stats.sites),
            (_("sites new"), stats.new_sites),
        ]
    if stats.url_queries:
        lines.append((_("searches by URL"), stats.url_queries))
    print_summary(_("XHR import"), lines)
    if stats.reasons:
        reasons = [(shown(reason), n) for reason, n in stats.reasons.most_common()]
        console.print(table(_("Reasons"), (_("reason"), _("count")), reasons))
    if stats.failures:
        first = [(name, shown(reason)) for name, reason in stats.failures[:20]]
        console.print(table(_("Failed files"), (_("file"), _("reason")), first, numeric_from=99))
        if len(stats.failures) > len(first):
            console.print(
                _("... and {n} more (see the xhr_files table)").format(
                    n=len(stats.failures) - len(first)
                )
            )
    console.print(_("Database: {path}").format(path=esc(db_path)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="2_XHRtoDB.py",
        description=_(
            "Import the XHR JSON files saved by step 1 (results and the sites tab) into "
            "SQLite. Idempotent: unchanged files are skipped, changed ones re-imported "
            "without duplicates."
        ),
    )
    parser.add_argument(
        "--xhr-dir",
        type=Path,
        default=Path("XHR"),
        help=_("folder of XHR JSON files (default: XHR)"),
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=Path("yandex_images.db"),
        help=_("SQLite database (default: yandex_images.db)"),
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=Path("2_XHRtoDB.log"),
        help=_("details and tracebacks (default: 2_XHRtoDB.log)"),
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=_("parser processes (default: one per core, for large folders)"),
    )
    parser.add_argument(
        "--batch-files",
        type=int,
        default=BATCH_FILES,
        help=_("files per transaction (default: {n}); an interrupt loses at most one batch").format(
            n=BATCH_FILES
        ),
    )
    add_common_flags(parser, yes=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file)
    try:
        stats = import_folder(args.xhr_dir, args.db, max(1, args.batch_files), args.workers)
    except db.SchemaError as exc:
        raise StepFailed(str(exc)) from exc
    except sqlite3.OperationalError as exc:  # disk full, locked, I/O: the run cannot go on
        log.exception("database error")
        raise StepFailed(
            _(
                "database {path}: {reason}; nothing of the batch in flight was written, "
                "re-run to continue"
            ).format(path=args.db, reason=one_line(exc))
        ) from exc
    report(stats, args.db)
    if stats.failed and stats.failed == stats.files:
        console.print("[red]" + esc(_("No file could be read.")) + "[/red]")
        return 1
    return 0
