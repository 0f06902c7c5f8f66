"""Deterministic "similar images" results for an uploaded picture.

Everything is seeded by the uploaded bytes, so the same photo always gets the
same results, and tests can predict them. Entities have the shape of
``reference/yandex-images.md`` §2 (numbers sometimes strings, ``//`` thumbs,
``<b>`` and entities in titles). Result URLs follow the image-web contract:
``http://`` with real host names and path shapes; ``preview`` and ``dups`` of
one result share the last path segment's stem, so the image web draws the
same picture at different sizes (real perceptual duplicates downstream).
"""

from __future__ import annotations

import hashlib
import random
from functools import lru_cache
from typing import Any

from .. import serp

ADAPTER = serp.ADAPTER_BLOCK
POOL_SEED = "shared-web-pool"
POOL_SIZE = 40  # small: popular pictures turn up for many queries
FAULTS = ("404", "410", "500once", "429", "503", "html200", "wrongtype", "truncated", "redirect")

_WORDS = (
    "Рыжий кот",
    "Закат над морем",
    "Горный пейзаж",
    "Старый город",
    "Портрет девушки",
    "Собака в парке",
    "Осенний лес",
    "Ночная Москва",
    "Букет роз",
    "Зимняя дорога",
)
_SITES = (
    ("vk.com", "https://vk.com/wall-{a}_{b}"),
    ("pinterest.ru", "https://www.pinterest.ru/pin/{a}{b}/"),
    ("commons.wikimedia.org", "https://commons.wikimedia.org/wiki/File:Photo_{a}.jpg"),
    ("livejournal.com", "https://user{a}.livejournal.com/{b}.html"),
    ("ok.ru", "https://ok.ru/group/{a}/topic/{b}"),
    ("dzen.ru", "https://dzen.ru/a/{a}{b}"),
)
_SIZES = (
    (1280, 960),
    (1920, 1080),
    (1080, 1350),
    (800, 600),
    (2560, 1440),
    (960, 1280),
    (600, 600),
)


def image_key(data: bytes) -> str:
    """The key the imitation records an uploaded picture under (sha1 of its bytes)."""
    return hashlib.sha1(data).hexdigest()


def cbir_ids(data: bytes) -> tuple[int, str]:
    """(image_shard, image_id) as Yandex's uploader returns them, derived from the bytes."""
    digest = hashlib.sha256(data).hexdigest()
    return 1_000_000 + int(digest[:6], 16) % 9_000_000, f"Li{digest[6:30]}{digest[30:34]}"


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _token(rng: random.Random, n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    return "".join(rng.choice(alphabet) for _ in range(n))


def _urls(rng: random.Random, pic: str, w: int, h: int) -> tuple[str, list[tuple[str, int, int]]]:
    """The original URL and its copies (same stem ``pic``, other sizes/hosts)."""
    shape = rng.randrange(6)
    n = rng.randint(1, 99)
    if shape == 0:
        base = f"http://sun9-{n}.userapi.com/impg/{_token(rng, 16)}/{pic}.jpg"
        orig = f"{base}?size={w}x{h}&quality=95&sign={_hex(rng, 32)}&type=album"
        small = f"{base}?size={w // 2}x{h // 2}&quality=95&sign={_hex(rng, 32)}&type=album"
    elif shape == 1:
        base = f"http://sun9-{n}.vkuserphoto.ru/s/v1/ig2/{pic}.jpg"
        orig = f"{base}?size={w}x{h}&quality=95&type=album"
        small = f"{base}?size={w // 2}x{h // 2}&quality=95&type=album"
    elif shape == 2:
        a, b = _hex(rng, 2), _hex(rng, 2)
        orig = f"http://i.pinimg.com/originals/{a}/{b}/{_hex(rng, 2)}/{pic}.jpg"
        small = f"http://i.pinimg.com/736x/{a}/{b}/{_hex(rng, 2)}/{pic}.jpg"
        w, h = max(w, 736), max(w, 736) * 3 // 4
    elif shape == 3:
        d = _hex(rng, 2)
        orig = f"http://upload.wikimedia.org/wikipedia/commons/{d[0]}/{d}/{pic}.jpg"
        small = f"http://upload.wikimedia.org/wikipedia/commons/thumb/{d[0]}/{d}/{pic}.jpg/640px-{pic}.jpg"
    elif shape == 4:
        orig = f"http://pp.userapi.com/c{rng.randint(600000, 860000)}/v{rng.randint(100000, 999999)}/{pic}.jpg"
        small = f"http://sun9-{n}.userapi.com/impf/{_token(rng, 16)}/{pic}.jpg?size={w // 2}x{h // 2}&quality=96&type=album"
    else:
        orig = f"http://img{rng.randint(1, 9)}.livejournal.com/photos/{w}x{h}/{pic}.png"
        small = f"http://i.imgur.com/{pic}.jpg?yr_size={w // 2}x{h // 2}"
    copies = [(orig, w, h), (small, w // 2, h // 2)]
    if rng.random() < 0.5:
        copies.append(
            (f"http://i.pinimg.com/736x/{_hex(rng, 2)}/{_hex(rng, 2)}/{pic}.jpg", 736, 552)
        )
    return orig, copies


def _entity(
    rng: random.Random, pos: int, fault_rate: float, pic: str | None = None
) -> dict[str, Any]:
    eid = _hex(rng, 16)
    pic = pic or _token(rng, 11)
    w, h = rng.choice(_SIZES)
    orig, copies = _urls(rng, pic, w, h)
    w, h = copies[0][1], copies[0][2]
    if fault_rate and rng.random() < fault_rate:
        orig += ("&" if "?" in orig else "?") + f"yr_fault={rng.choice(FAULTS)}"
        copies[0] = (orig, w, h)
    as_str = rng.random() < 0.3  # Yandex sends some numbers as strings

    def num(v: int) -> int | str:
        return str(v) if as_str else v

    def variant(item: tuple[str, int, int]) -> dict[str, Any]:
        url, vw, vh = item
        return {"url": url, "w": num(vw), "h": num(vh), "fileSizeInBytes": num(vw * vh // 7)}

    words = rng.choice(_WORDS)
    first, _, rest = words.partition(" ")
    domain, page = rng.choice(_SITES)
    thumb = f"//avatars.mds.yandex.net/i?id={_hex(rng, 32)}-{rng.randint(100000, 9999999)}-images-thumbs&n=13"
    snippet = {
        "title": f"{first} <b>{rest}</b> &amp; &quot;фото&quot; №{pos}",
        "text": f"Фото из альбома &laquo;{words}&raquo; &mdash; {domain}",
        "url": page.format(a=rng.randint(1000, 99999), b=rng.randint(1, 9999)),
        "domain": domain,
    }
    thumb_obj: dict[str, Any] = (
        {"url": thumb, "size": {"width": num(320), "height": num(240)}}
        if rng.random() < 0.5
        else {"url": thumb, "w": num(320), "h": num(240)}
    )
    return {
        "id": eid,
        "pos": pos,
        "alt": f"{words} №{pos}",
        "image": thumb,
        "origUrl": orig,
        "origWidth": num(w),
        "origHeight": num(h),
        "url": orig,
        "width": num(w),
        "height": num(h),
        "docid": f"Z{_hex(rng, 20)}",
        "reqid": f"{rng.randint(10**12, 10**13)}-{rng.randint(10**5, 10**6)}",
        "rimId": _hex(rng, 32),
        "freshnessCounter": str(rng.randint(0, 9)) if as_str else rng.randint(0, 9),
        "gifLabel": False,
        "ecomShield": False,
        "censored": False,
        "loading": "loaded",
        "snippet": snippet,
        "viewerData": {
            "img_href": orig,
            "snippet": snippet,
            "preview": [variant(c) for c in copies[:2]],
            "dups": [variant(c) for c in copies[2:]],
            "thumb": thumb_obj,
        },
    }


@lru_cache(maxsize=4)
def _pool(fault_rate: float) -> list[dict[str, Any]]:
    rng = random.Random(POOL_SEED)
    return [_entity(rng, 0, fault_rate) for _ in range(POOL_SIZE)]


def all_results(
    seed: str,
    total: int,
    *,
    shared_fraction: float = 0.1,
    repost_fraction: float = 0.15,
    fault_rate: float = 0.0,
) -> list[dict[str, Any]]:
    """Every result for one uploaded picture, in rank order (``pos`` 0..total-1).

    A ``shared_fraction`` of them come from one pool common to every query (the
    same result found from two photos), and a ``repost_fraction`` are reposts:
    another result showing an earlier result's picture on another site, at
    another size. So downstream dedup has real work.
    """
    rng = random.Random(seed)
    pool = _pool(fault_rate)
    count = min(int(total * shared_fraction), POOL_SIZE)
    shared = set(rng.sample(range(total), count)) if total else set()
    picks = iter(rng.sample(range(POOL_SIZE), len(shared)))
    pics: list[str] = []  # picture stems of this query's own results, for reposts
    out = []
    for pos in range(total):
        if pos in shared:
            item = dict(pool[next(picks)])
            item["pos"] = pos
            item["alt"] = f"{item['alt'].split(' №')[0]} №{pos}"
        else:
            repost = pics and rng.random() < repost_fraction
            pic = rng.choice(pics) if repost else _token(rng, 11)
            pics.append(pic)
            item = _entity(rng, pos, fault_rate, pic)
        if pos % 7 == 3:
            item["pos"] = str(pos)
        out.append(item)
    return out


def page_slices(first_page: int, per_page: int, pages: int) -> list[tuple[int, int]]:
    """(start, stop) of page 0 (rendered) and pages 1..pages (XHR) in the result list."""
    out = [(0, first_page)]
    for p in range(pages):
        start = first_page + p * per_page
        out.append((start, start + per_page))
    return out


def adapter_payload(
    entities: list[dict[str, Any]], *, last: bool, extra_content: bool = True, **shape: Any
) -> dict:
    """A ``serpList/fetch`` answer (built by :mod:`yandex_reverse.serp`)."""
    return serp.adapter_payload(entities, last=last, extra_content=extra_content, **shape)


def data_state(
    location: str, entities: list[dict[str, Any]], *, has_more: bool, **shape: Any
) -> dict:
    """The server-rendered ``data-state`` of the similar page (built by serp)."""
    return serp.data_state(location, entities, has_more=has_more, **shape)


def sites_for(seed: str, count: int) -> list[dict[str, Any]]:
    """The "Сайты" tab for one picture: pages where the picture itself appears."""
    rng = random.Random(f"sites:{seed}")
    out = []
    for n in range(count):
        domain, page = rng.choice(_SITES)
        w, h = rng.choice(_SIZES)
        as_str = rng.random() < 0.3
        out.append(
            serp.site(
                page.format(a=rng.randint(1000, 99999), b=rng.randint(1, 9999)),
                f"{rng.choice(_WORDS)} <b>фото</b> &amp; №{n}",
                domain=domain,
                description=f"Страница на {domain} с этой картинкой",
                thumb=f"//avatars.mds.yandex.net/i?id={_hex(rng, 32)}-images-thumbs&n=13",
                width=str(w) if as_str else w,
                height=str(h) if as_str else h,
            )
        )
    return out
