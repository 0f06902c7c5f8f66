"""Which service a URL's host belongs to (VK, OK.ru, …) and its registrable domain.

Shared by step 3 (the domain statistics) and the researcher's report: the one
place that reads ``services.json``. A host is classified once and cached: a
million result rows hold only a few thousand distinct hosts, so the per-row
work is one ``str.split`` and a dictionary lookup. The registrable domain of a
host outside the table comes from tldextract's bundled public suffix list
(never fetched from the network).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .urls import host_of

SERVICES_FILE = Path(__file__).with_name("services.json")
GARBAGE = "(garbage URL)"
EMPTY = "(empty)"


@dataclass(frozen=True, eq=False)  # identity hash: Counter keys stay C-fast
class Host:
    """What a URL's authority resolves to; ``service`` None means "other domain"."""

    service: str | None
    domain: str  # registrable domain (IDN shown in Unicode), or the host itself
    kind: str = "ok"  # "ok", "empty" or "garbage"


EMPTY_URL = Host(None, EMPTY, "empty")
GARBAGE_URL = Host(None, GARBAGE, "garbage")


class Classifier:
    """Host → service and registrable domain, cached per authority string."""

    def __init__(self, services_file: Path = SERVICES_FILE) -> None:
        data = json.loads(services_file.read_text(encoding="utf-8"))
        self.vk = data["vk_service"]
        self.vk_group = frozenset(data["vk_group"])
        self.suffixes: dict[str, str] = {}
        for service in data["services"]:
            for suffix in service["suffixes"]:
                self.suffixes[suffix.lower()] = service["name"]
        self._cache: dict[tuple[str, str], Host] = {}

    @cached_property
    def _extract(self) -> Any:
        import tldextract  # imported lazily: only needed for "other" domains

        # suffix_list_urls=() and no cache dir: the snapshot bundled with the
        # package, never a network fetch, never a write to the user's home.
        return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    def service_of(self, host: str) -> str | None:
        """The most specific suffix of ``host`` (label by label) in the table."""
        labels = host.split(".")
        for start in range(len(labels)):
            service = self.suffixes.get(".".join(labels[start:]))
            if service is not None:
                return service
        return None

    def classify_url(self, url: object) -> Host:
        """The URL's host classified; :data:`EMPTY_URL` or :data:`GARBAGE_URL` if none.

        The hot path is one ``split`` and one dict lookup: the cache key is the
        scheme and the authority, the rest of the URL never matters.
        """
        if url.__class__ is not str:
            return EMPTY_URL if url is None else GARBAGE_URL
        parts = url.split("/", 3)  # type: ignore[attr-defined]
        if len(parts) < 3 or parts[1]:
            return GARBAGE_URL if url.strip() else EMPTY_URL  # type: ignore[attr-defined]
        key = (parts[0], parts[2])
        host = self._cache.get(key)
        if host is None:
            host = self._cache[key] = self._resolve_authority(*key)
        return host

    def _resolve_authority(self, scheme: str, authority: str) -> Host:
        if not authority.strip():
            return GARBAGE_URL
        host = host_of(f"{scheme}//{authority}/")  # normalize_url's rules, "//" included
        return (self._resolve(host) if host else None) or GARBAGE_URL

    def _resolve(self, host: str) -> Host | None:
        ascii_host = _to_ascii(host)
        if ascii_host is None or not _valid_host(ascii_host):
            return None
        service = self.service_of(ascii_host)
        ext = self._extract(ascii_host)
        registrable = getattr(ext, "top_domain_under_public_suffix", None)
        if registrable is None:  # tldextract < 5.3
            registrable = ext.registered_domain
        return Host(service, _to_unicode(registrable or ascii_host))


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_IPV6 = re.compile(r"[0-9a-f:.]+")


def _valid_host(host: str) -> bool:
    """Letters, digits, hyphens per label (underscores occur in the wild), or an IP."""
    if ":" in host:
        return bool(_IPV6.fullmatch(host))
    labels = host.split(".")
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def _to_ascii(host: str) -> str | None:
    if host.isascii():
        return host.lower()
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


def _to_unicode(host: str) -> str:
    """``xn--`` labels decoded for display; undecodable ones stay as they are."""
    if "xn--" not in host:
        return host
    out = []
    for label in host.split("."):
        if label.startswith("xn--"):
            try:
                label = label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                pass
        out.append(label)
    return ".".join(out)
