"""Stored English values as a person reads them: one mapping for the whole pipeline.

Ledger reasons (``xhr_files.error``, step 2's skipped results, step 5's
``downloads`` reasons) and step 3's row names ("(garbage URL)", "(empty)") are
data: the DB, the JSON and the CSV keep them in English and stable, since
users' SQL and scripts match them. Where a person reads them (summaries,
tables, the HTML report, charts) they go through :func:`shown`, which
translates the fixed ones and the known patterns (their variable part kept as
it is: a number, a MIME type, a parser's detail) and leaves any other value as
it is. A step that stores a new reason adds it here.
"""

from __future__ import annotations

import re

from .i18n import N_, _

FIXED = frozenset(
    {
        # step 3's row names (hosts.py)
        N_("(garbage URL)"),
        N_("(empty)"),
        # step 2: files and results that cannot be imported (xhr_import.py, serp.py)
        N_("empty file"),
        N_("JSON nested too deeply"),
        N_("page number in the file name is out of range"),
        N_("file name is not valid UTF-8"),
        N_("not a regular file"),
        N_("captcha answer, not results (step 1 hit a captcha)"),
        N_("captcha answer, not results"),
        N_("unrecognised JSON"),
        N_("result is not an object"),
        N_("result without an id"),
        N_("site without a usable URL"),
        N_("integer beyond 64 bits"),
        N_("number beyond 64 bits"),
        N_("text that is not valid Unicode (a lone surrogate)"),
        N_("text cut inside a character (a lone surrogate): kept, with U+FFFD"),
        N_("truncated JSON"),
        N_("invalid JSON"),
        N_("not UTF-8"),
        # sorting.py's placement statuses (7.x summaries)
        N_("copied"),
        N_("moved"),
        N_("already"),
        # step 5: URLs that gave no usable image (download/)
        N_("not an image: HTML page"),
        N_("not an image: unrecognised content"),
        N_("refused: decompression bomb"),
        N_("refused: private address"),
        N_("broken image"),
        N_("invalid URL"),
        N_("too many redirects"),
        N_("connection reset"),
        N_("truncated body"),
        N_("proxy unreachable"),
        N_("connection closed"),
        N_("network error"),
        N_("timeout"),
        N_("bad HTTP response"),
        N_("too large"),
        N_("host asks to wait"),
        N_("unsafe file name"),
        N_("worker lost"),
    }
)

# (pattern of the stored value, msgid with the pattern's named groups as fields)
PATTERNS = (
    (re.compile(r"smaller than --min-bytes (?P<n>.+)"), N_("smaller than --min-bytes {n}")),
    (re.compile(r"smaller than --min-side (?P<n>.+)"), N_("smaller than --min-side {n}")),
    (re.compile(r"not an image: (?P<type>.+)"), N_("not an image: {type}")),
    (re.compile(r"JSON is a (?P<type>\w+), not an object"), N_("JSON is a {type}, not an object")),
    (re.compile(r"no '(?P<block>[^']+)' block"), N_("no '{block}' block")),
    (re.compile(r"not UTF-8 \(byte (?P<n>\d+)\)"), N_("not UTF-8 (byte {n})")),
    (
        re.compile(r"truncated JSON \(ends at line (?P<n>\d+)\)"),
        N_("truncated JSON (ends at line {n})"),
    ),
    (re.compile(r"invalid JSON: (?P<detail>.+)"), N_("invalid JSON: {detail}")),
    (
        re.compile(r"larger than (?P<n>\d+) MiB: not a saved page"),
        N_("larger than {n} MiB: not a saved page"),
    ),
)


def shown(value: str) -> str:
    """``value`` (a stored reason or row name) in the user's language; unknown values as is."""
    if value in FIXED:
        return _(value)
    for pattern, msgid in PATTERNS:
        match = pattern.fullmatch(value)
        if match:
            return _(msgid).format(**match.groupdict())
    return value
