"""URL normalisation shared by the steps that read result URLs (2, 3, 4, 5).

Yandex sends URLs loosely: protocol-relative (``//host/...``), with spaces
around them, sometimes empty or relative. Every step agrees on one rule so
that "a usable URL" means the same thing everywhere.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# The common case, checked without urlsplit (step 2 normalises millions of URLs):
# scheme, then a plain host[:port] with no user info, then a path/query/fragment or end.
SIMPLE_URL = re.compile(r"(?i)https?://[a-z0-9.-]+(?::\d{1,5})?(?:[/?#][^\s]*)?")


def normalize_url(value: object) -> str | None:
    """Return an absolute http(s) URL, or None if the value is not one.

    ``//host/p`` becomes ``https://host/p``; anything without a host, any other
    scheme (``javascript:``, ``data:``, ``ftp:``) and non-strings are refused.
    """
    if type(value) is str and SIMPLE_URL.fullmatch(value):
        return value  # the common case: already clean
    if not isinstance(value, str):
        return None
    url = value.strip()
    if not url:
        return None
    if url.startswith("//"):
        url = "https:" + url
    if SIMPLE_URL.fullmatch(url):
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host or " " in host:
        return None
    return url


def host_of(url: object) -> str | None:
    """The lower-case host name of a URL (after :func:`normalize_url`), or None."""
    normalized = normalize_url(url)
    if normalized is None:
        return None
    try:
        host = urlsplit(normalized).hostname
    except ValueError:
        return None
    return host.rstrip(".").lower() if host else None
