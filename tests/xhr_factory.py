"""Build XHR files in the shapes of reference/yandex-images.md, for tests.

``entity()`` makes one result as Yandex sends it (loosely: numbers as
strings on request, ``//`` URLs, HTML in titles); ``write_xhr()`` saves a page
as step 1 does: ``XHR/<query file name>_xhr_<NNN>.json``, page 0 being the
server-rendered first page (``data-state`` shape) and pages 1.. the
``serpList/fetch`` answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from yandex_reverse import serp

ADAPTER = serp.ADAPTER_BLOCK


def entity(
    eid: str,
    *,
    pos: int = 0,
    orig_url: str | None = None,
    orig_size: tuple[int, int] = (1280, 960),
    domain: str = "vk.com",
    snippet_url: str | None = None,
    title: str = "Рыжий <b>кот</b> &amp; друзья",
    previews: list[tuple[str, int, int]] | None = None,
    dups: list[tuple[str, int, int]] | None = None,
    thumb: tuple[str, int, int] | None = None,
    thumb_shape: str = "size",
    numbers_as_strings: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """One result entity. ``orig_url`` defaults to a VK userapi URL."""
    if orig_url is None:
        orig_url = (
            f"https://sun9-52.userapi.com/impg/{eid}/img.jpg?size=1280x960&quality=95&type=album"
        )
    w, h = orig_size

    def num(v: int) -> int | str:
        return str(v) if numbers_as_strings else v

    def variant(item: tuple[str, int, int]) -> dict[str, Any]:
        url, vw, vh = item
        return {"url": url, "w": num(vw), "h": num(vh), "fileSizeInBytes": num(vw * vh // 10)}

    if previews is None:
        previews = [(orig_url, w, h)]
    if dups is None:
        dups = [(f"https://i.pinimg.com/736x/{eid[:2]}/{eid}.jpg", 736, 552)]
    if thumb is None:
        thumb = (f"//avatars.mds.yandex.net/i?id={eid}-1-images-thumbs&n=13", 320, 240)
    thumb_url, tw, th = thumb
    thumb_obj: dict[str, Any] = (
        {"url": thumb_url, "size": {"width": num(tw), "height": num(th)}}
        if thumb_shape == "size"
        else {"url": thumb_url, "w": num(tw), "h": num(th)}
    )
    snippet = {
        "title": title,
        "text": "Фото из альбома &laquo;Коты&raquo;",
        "url": snippet_url or f"https://{domain}/wall-1_{pos}",
        "domain": domain,
    }
    out: dict[str, Any] = {
        "id": eid,
        "pos": num(pos),
        "alt": "Рыжий кот",
        "image": thumb_url,
        "origUrl": orig_url,
        "origWidth": num(w),
        "origHeight": num(h),
        "freshnessCounter": "3",
        "gifLabel": False,
        "snippet": snippet,
        "viewerData": {
            "img_href": orig_url,
            "snippet": snippet,
            "preview": [variant(p) for p in previews],
            "dups": [variant(d) for d in dups],
            "thumb": thumb_obj,
        },
    }
    out.update(overrides)
    return out


def xhr_payload(entities: list[dict[str, Any]], *, with_extra_content: bool = True) -> dict:
    """A ``serpList/fetch`` answer; the adapter block is blocks[1] or blocks[0]."""
    return serp.adapter_payload(entities, extra_content=with_extra_content)


def first_page_payload(entities: list[dict[str, Any]]) -> dict:
    """The parsed ``data-state`` of the server-rendered first page."""
    return serp.data_state("/images/search?cbir_page=similar&rpt=imagelike", entities)


def write_xhr(xhr_dir: Path, query: str, page: int, entities: list[dict[str, Any]]) -> Path:
    """Save a page as step 1 names it: ``<query>_xhr_<NNN>.json``."""
    xhr_dir.mkdir(parents=True, exist_ok=True)
    payload = first_page_payload(entities) if page == 0 else xhr_payload(entities)
    path = xhr_dir / serp.saved_name(query, page)
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
    return path
