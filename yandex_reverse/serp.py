"""The Yandex Images JSON format, read and built in one place.

Everything the pipeline knows about the shapes of ``reference/yandex-images.md``
lives here, used by step 1 (the crawler), step 2 (the import), the imitation
(``fake_yandex``) and the tests:

* a ``serpList/fetch`` answer: ``{"blocks": [...]}``, the adapter block found by
  its name (``name.block``, or a plain ``block`` string, §6), never by index;
* a page's ``data-state`` (``{"location", "initialState": {...}}``): a page may
  hold several, the results are in the one with ``serpList.items.entities``;
  ``serpList.items.keys``, when present, gives the order;
* the "Сайты" tab: ``initialState.cbirSites.sites[]`` (2025-05 on) or the older
  top-level ``sites``;
* the upload replies: endpoint A ``{cbir_id, url, ...}``; endpoint B
  ``blocks[0].params.url`` (a ready query string) or
  ``blocks[0].params.{cbirId, originalImageUrl}``;
* a captcha answer ``{"type": "captcha", "captcha": {...}}``;
* the names step 1 saves files under, ``<query>_xhr_<NNN>.json`` and
  ``<query>_sites_<NNN>.json``, which step 2 reads back.

Readers are lenient (outside JSON is data: anything unexpected is "not
found", never an exception other than :class:`FormatError`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

ADAPTER_BLOCK = "i-react-ajax-adapter:ajax"
EXTRA_CONTENT_BLOCK = "extra-content"
UPLOADER_BLOCK = "cbir-uploader__get-cbir-id"
FETCH_KEY = "serpList/fetch"

KIND_RESULTS = "xhr"  # a page of similar results (data-state or serpList/fetch)
KIND_SITES = "sites"  # a page of the "Сайты" tab (data-state holding cbirSites)
SAVED_NAME = re.compile(r"^(?P<query>.+)_(?P<kind>xhr|sites)_(?P<page>\d+)\.json$", re.IGNORECASE)


URL_QUERIES_FILE = ".url_queries.json"  # in XHR/: query name -> the image URL searched (--urls)


class FormatError(ValueError):
    """JSON that holds no results, with a one-line reason."""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# ---------------------------------------------------------------- file names


def saved_name(query: str, page: int, kind: str = KIND_RESULTS) -> str:
    """The file name step 1 saves a page under: ``cat.jpg_xhr_003.json`` (``query`` shortened
    by :func:`query_stem` where the name would pass 255 bytes)."""
    return f"{query_stem(query)}_{kind}_{page:03d}.json"


NAME_LIMIT = 255  # bytes in one file name (ext4, APFS, NTFS in UTF-16 units: less is safe)
_LONGEST_TAIL = len("_sites_0000_CORRUPT_JSON.txt")  # what step 1 adds after the stem
_SHORT_STEM = re.compile(r"~[0-9a-f]{12}$")
QUERY_NAMES_FILE = ".query_names.json"  # in XHR/: shortened stem -> the photo's full name


def query_stem(query: str) -> str:
    """``query`` as its saved files' names start: itself, or, when the longest of them would
    pass :data:`NAME_LIMIT` bytes, its start (cut at a character) + ``~`` + 12 hex digits of
    its sha1; step 1 records the full name in ``XHR/.query_names.json``."""
    raw = query.encode("utf-8", "surrogateescape")
    if len(raw) + _LONGEST_TAIL <= NAME_LIMIT:
        return query
    digest = hashlib.sha1(raw).hexdigest()[:12]
    start = raw[: NAME_LIMIT - _LONGEST_TAIL - 1 - len(digest)].decode("utf-8", "ignore")
    return f"{start}~{digest}"


def _read_name_map(xhr_dir: Path | str, file_name: str, key: str) -> dict[str, str]:
    """The ``{name: text}`` map under ``key`` of a small JSON file in XHR/ that step 1
    writes for step 2 ({} if absent or unreadable; entries that are not text dropped)."""
    try:
        data = json.loads((Path(xhr_dir) / file_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = _dict(_dict(data).get(key))
    return {str(k): v for k, v in entries.items() if isinstance(v, str)}


def read_query_names(xhr_dir: Path) -> dict[str, str]:
    """``XHR/.query_names.json``: ``{shortened stem: full query name}`` ({} if absent)."""
    return _read_name_map(xhr_dir, QUERY_NAMES_FILE, "names")


@functools.lru_cache(maxsize=16)
def _query_names(xhr_dir: str, stamp: tuple[int, int, int]) -> dict[str, str]:
    return read_query_names(Path(xhr_dir))


def full_query_name(xhr_dir: Path | str, stem: str) -> str:
    """The query a saved file's stem stands for (a shortened one looked up in the
    names file, read again only when that file has been replaced or changed)."""
    if not _SHORT_STEM.search(stem):
        return stem
    try:
        st = os.stat(os.path.join(xhr_dir, QUERY_NAMES_FILE))
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (0, 0, 0)
    return _query_names(str(xhr_dir), stamp).get(stem, stem)


def parse_saved_name(name: str) -> tuple[str, str, int] | None:
    """``cat.jpg_sites_000.json`` → (``cat.jpg``, ``sites``, 0); other names → None."""
    match = SAVED_NAME.match(name)
    if not match:
        return None
    return match["query"], match["kind"].lower(), int(match["page"])


def url_query_name(url: str) -> str:
    """The query name of a search by image URL (``--urls``): ``url_<sha1(url)[:12]>``."""
    return "url_" + hashlib.sha1(url.encode("utf-8")).hexdigest()[:12]


def read_url_queries(xhr_dir: Path) -> dict[str, str]:
    """``XHR/.url_queries.json``: ``{query name: image URL}`` ({} if absent or unreadable)."""
    return _read_name_map(xhr_dir, URL_QUERIES_FILE, "queries")


# ---------------------------------------------------------------- reading


def block_name(block: Any) -> str | None:
    """A block's name: ``name.block``, or ``block`` as a string or ``{"block": ...}``."""
    block = _dict(block)
    for key in ("name", "block"):
        value = block.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and isinstance(value.get("block"), str):
            return value["block"]
    return None


def find_block(data: Any, name: str) -> dict[str, Any] | None:
    """The block called ``name`` in ``data["blocks"]``, wherever it is."""
    for block in _list(_dict(data).get("blocks")):
        if block_name(block) == name:
            return block
    return None


def is_captcha(data: Any) -> bool:
    """A captcha answer instead of results."""
    data = _dict(data)
    return data.get("type") == "captcha" or ("captcha" in data and "blocks" not in data)


def entities_of(serp: Any) -> dict[str, Any]:
    """``serpList.items.entities`` (ordered by ``items.keys`` when it is there)."""
    items = _dict(_dict(serp).get("items"))
    entities = items.get("entities")
    if isinstance(entities, list):  # tolerate a list form
        entities = {str(_dict(e).get("id", i)): e for i, e in enumerate(entities)}
    if not isinstance(entities, dict):
        return {}
    keys = [str(k) for k in _list(items.get("keys")) if str(k) in entities]
    if not keys:
        return entities
    ordered = {k: entities[k] for k in keys}
    ordered.update((k, v) for k, v in entities.items() if k not in ordered)
    return ordered


def state_serp(state: Any) -> dict[str, Any] | None:
    """The ``serpList`` of a data-state that holds results, else None."""
    serp = _dict(_dict(_dict(state).get("initialState")).get("serpList"))
    entities = _dict(serp.get("items")).get("entities")
    return serp if isinstance(entities, (dict, list)) else None


def results_state(states: list[Any]) -> Any | None:
    """Of a page's data-states, the one with results (non-empty first), else None."""
    holding = [s for s in states if state_serp(s) is not None]
    for state in holding:
        if entities_of(state_serp(state)):
            return state
    return holding[0] if holding else None


def sites_of(data: Any) -> list[dict[str, Any]] | None:
    """The "Сайты" tab's sites: ``initialState.cbirSites.sites`` or a top-level ``sites``."""
    data = _dict(data)
    sites = _dict(_dict(data.get("initialState")).get("cbirSites")).get("sites")
    if sites is None:
        sites = data.get("sites")
    if not isinstance(sites, list):
        return None
    return [s for s in sites if isinstance(s, dict)]


def sites_state(states: list[Any]) -> Any | None:
    """Of a page's data-states, the one holding the sites tab, else None."""
    holding = [s for s in states if sites_of(s) is not None]
    for state in holding:
        if sites_of(state):
            return state
    return holding[0] if holding else None


def find_entities(data: Any) -> dict[str, Any]:
    """The entities of an XHR answer or of a saved first page; :class:`FormatError` if none."""
    if not isinstance(data, dict):
        raise FormatError(f"JSON is a {type(data).__name__}, not an object")
    if is_captcha(data):
        raise FormatError("captcha answer, not results (step 1 hit a captcha)")
    if "blocks" in data:
        block = find_block(data, ADAPTER_BLOCK)
        if block is None:
            raise FormatError(f"no '{ADAPTER_BLOCK}' block")
        params = _dict(block.get("params"))
        return entities_of(_dict(params.get("adapterData")).get("serpList"))
    state = data.get("initialState")
    if isinstance(state, dict):
        return entities_of(state.get("serpList"))
    raise FormatError("unrecognised JSON: neither 'blocks' nor 'initialState'")


def fetch_finished(data: Any) -> bool:
    """A ``serpList/fetch`` answer that says it was the last page (``loadNextState``)."""
    block = find_block(data, ADAPTER_BLOCK)
    serp = _dict(_dict(_dict(_dict(block).get("params")).get("adapterData")).get("serpList"))
    return serp.get("loadNextState") == "finished"


def upload_reply(data: Any) -> dict[str, str] | None:
    """The search query an upload reply leads to: ``{"cbir_id", "url"}``, or None.

    Endpoint A: ``{cbir_id, url: …/preview}`` (the ``orig`` is searched).
    Endpoint B: ``blocks[0].params.{cbirId, originalImageUrl}``, or older
    ``blocks[0].params.url`` holding a ready query string.
    """
    data = _dict(data)
    if isinstance(data.get("cbir_id"), str):
        url = str(data.get("url") or "")
        if url.endswith("/preview"):
            url = url[: -len("preview")] + "orig"
        return {"cbir_id": data["cbir_id"], "url": url}
    block = find_block(data, UPLOADER_BLOCK) or _dict((_list(data.get("blocks")) or [None])[0])
    params = _dict(block.get("params"))
    if isinstance(params.get("cbirId"), str):
        return {"cbir_id": params["cbirId"], "url": str(params.get("originalImageUrl") or "")}
    query = params.get("url")
    if isinstance(query, str) and "cbir_id=" in query:
        parsed = parse_qs(query.split("?", 1)[-1])
        if parsed.get("cbir_id"):
            return {"cbir_id": parsed["cbir_id"][0], "url": parsed.get("url", [""])[0]}
    return None


# ---------------------------------------------------------------- building

_SURROGATE = re.compile("[\ud800-\udfff]")
# A title cut by UTF-16 units halfway through an emoji (ordinary on the live site) holds a
# lone surrogate: step 2 keeps the result, the half character replaced (text fields only).
MENDED_TEXT = "text cut inside a character (a lone surrogate): kept, with U+FFFD"


def mend_text(text: str) -> str:
    """``text`` with every lone surrogate (half a UTF-16 pair) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def dumps(data: Any) -> str:
    """JSON text as Yandex sends it: UTF-8 as is, a lone surrogate (half an emoji) as ``\\uXXXX``.

    ``json.dumps(ensure_ascii=False)`` leaves a lone surrogate raw, and such text
    cannot be encoded to UTF-8; the live site escapes it, so this does too.
    """
    text = json.dumps(data, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def adapter_payload(
    entities: list[dict[str, Any]],
    *,
    last: bool = False,
    extra_content: bool = True,
    plain_block_name: bool = False,
    keys: bool = False,
) -> dict[str, Any]:
    """A ``serpList/fetch`` answer (the adapter is ``blocks[1]`` after extra-content)."""
    items: dict[str, Any] = {"entities": {e["id"]: e for e in entities}}
    if keys:
        items = {"keys": [e["id"] for e in entities], "entities": _shuffled(entities)}
    adapter: dict[str, Any] = {
        "params": {
            "ok": True,
            "adapterData": {
                "serpList": {
                    "items": items,
                    "loadNextState": "finished" if last else "idle",
                    "pending": False,
                }
            },
        },
        "html": "",
    }
    if plain_block_name:
        adapter = {"block": ADAPTER_BLOCK, **adapter}
    else:
        adapter = {"name": {"block": ADAPTER_BLOCK}, **adapter}
    blocks: list[dict[str, Any]] = [adapter]
    if extra_content:
        blocks.insert(0, {"name": {"block": EXTRA_CONTENT_BLOCK}, "params": {}, "html": ""})
    return {"blocks": blocks}


def _shuffled(entities: list[dict[str, Any]]) -> dict[str, Any]:
    """Entities keyed by id in an order other than the rank (so only ``keys`` gives it)."""
    return {e["id"]: e for e in reversed(entities)}


def data_state(
    location: str,
    entities: list[dict[str, Any]] | None,
    *,
    has_more: bool = True,
    keys: bool = False,
    sites: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A page's ``data-state``: results (``entities``), the sites tab (``sites``), or neither."""
    state: dict[str, Any] = {}
    if entities is not None:
        items: dict[str, Any] = {"entities": {e["id"]: e for e in entities}}
        if keys:
            items = {"keys": [e["id"] for e in entities], "entities": _shuffled(entities)}
        state["serpList"] = {
            "items": items,
            "loadNextState": "idle" if has_more else "finished",
            "pending": False,
        }
        state["cbirNavigation"] = {"activeTab": "similar"}
    if sites is not None:
        state["cbirSites"] = {"sites": sites}
        state["cbirNavigation"] = {"activeTab": "sites"}
    return {"location": location, "initialState": state}


def legacy_sites_state(sites: list[dict[str, Any]]) -> dict[str, Any]:
    """The pre-2025 sites tab state: a top-level ``sites``."""
    return {"sites": sites}


def site(
    url: str,
    title: str,
    *,
    domain: str,
    description: str = "",
    thumb: str = "",
    width: int | str = 0,
    height: int | str = 0,
) -> dict[str, Any]:
    """One entry of the sites tab."""
    return {
        "url": url,
        "title": title,
        "domain": domain,
        "description": description,
        "thumb": {"url": thumb},
        "originalImage": {"width": width, "height": height},
    }


def upload_reply_a(shard: int, image_id: str, width: int, height: int) -> dict[str, Any]:
    """Endpoint A's reply."""
    avatar = f"https://avatars.mds.yandex.net/get-images-cbir/{shard}/{image_id}"
    return {
        "image_id": image_id,
        "image_shard": shard,
        "cbir_id": f"{shard}/{image_id}",
        "url": f"{avatar}/preview",
        "width": width,
        "height": height,
        "sizes": {
            "orig": {"path": f"/get-images-cbir/{shard}/{image_id}/orig"},
            "preview": {"path": f"/get-images-cbir/{shard}/{image_id}/preview"},
        },
    }


def upload_reply_b(
    cbir_id: str, original_url: str, *, shape: str = "ids", plain_block_name: bool = False
) -> dict[str, Any]:
    """Endpoint B's reply: ``shape`` ``ids`` (cbirId, originalImageUrl) or ``url`` (query string)."""
    if shape == "url":
        query = urlencode({"cbir_id": cbir_id, "rpt": "imageview", "url": original_url})
        params: dict[str, Any] = {"url": query}
    else:
        params = {"cbirId": cbir_id, "originalImageUrl": original_url}
    block: dict[str, Any] = {"params": params, "html": ""}
    if plain_block_name:
        block = {"block": UPLOADER_BLOCK, **block}
    else:
        block = {"name": {"block": UPLOADER_BLOCK}, **block}
    return {"blocks": [block]}


def captcha_reply(page_url: str, image_url: str, key: str) -> dict[str, Any]:
    """The JSON answer of an endpoint that wants a captcha solved."""
    return {
        "type": "captcha",
        "captcha": {"img-url": image_url, "key": key, "status": "failed", "captcha-page": page_url},
    }


__all__ = [
    "ADAPTER_BLOCK",
    "FormatError",
    "adapter_payload",
    "data_state",
    "entities_of",
    "find_entities",
    "is_captcha",
    "parse_saved_name",
    "results_state",
    "saved_name",
    "sites_of",
    "upload_reply",
]
