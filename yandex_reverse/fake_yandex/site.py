"""The Yandex Images imitation: an aiohttp app a real Chromium uses like the live site.

Markup, endpoints and JSON follow ``reference/yandex-images.md``: the start
page with the camera button and upload panel, both upload endpoints (A:
``/images-apphost/image-download``, B: ``/images/touch/search`` with
``cbir-uploader__get-cbir-id``), the result page with the CbirNavigation tabs,
the "Похожие" page with its server-rendered ``data-state`` and thumbs, and the
"Показать ещё" button issuing ``serpList/fetch`` XHRs. Switches (a
:class:`Settings`) make it misbehave the ways the live site does: captcha,
latency, 404 / error ends, broken JSON, failed uploads, a renamed selector.
They can be set in-process (:meth:`FakeYandex.configure`) or over HTTP
(``POST /__control``). :attr:`FakeYandex.served` records what each uploaded
picture was shown, so tests compare it with what the crawler saved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import io
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from .. import serp
from . import results

CONTROL_PREFIX = "/__"
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
CAPTCHA_HEADER = "x-yandex-captcha"
END_MODES = ("button", "404", "error", "disabled", "empty", "endless")
CAMERA_MARKUPS = ("aria", "desktop", "inline", "legacy")
CAPTCHA_STYLES = ("json", "redirect", "header")
XHR_VARIANTS = ("", "filters")
UPLOAD_VARIANTS = ("A", "B", "B-url")
COOKIE_MODES = ("", "load", "late", "again")
STATIC = Path(__file__).with_name("static")


@dataclass
class Settings:
    """What the imitation does; every field can be changed at run time."""

    pages: int = 3  # serpList/fetch pages after the server-rendered one
    first_page: int = 30  # results rendered in the similar page
    per_page: int = 30  # results per XHR page
    end: str = (
        "button"  # after the last page: the button goes, a 404, an error notice, "disabled",
        # "empty" (one more page answered with no results, then the button goes), or
        # "endless" (every later page answered with no results, the button staying for ever)
    )
    empty_pages: list[int] = field(default_factory=list)  # XHR pages answered with no results
    broken_json_page: int | None = None  # this XHR page is broken JSON the first time it is served
    latency: float = 0.0  # seconds added to every request
    captcha_on_upload: list[int] = field(
        default_factory=list
    )  # the Nth uploads (1-based) get a captcha
    captcha_next: int = 0  # the next K requests get a captcha
    captcha_page: int | None = None  # this XHR page answers a captcha (JSON + header)
    upload_500_next: int = 0  # the next K uploads answer 500
    upload_variant: str = (
        "A"  # the upload endpoint: A, B (cbirId reply) or B-url (params.url reply)
    )
    renamed_similar_tab: bool = False  # the "Похожие" tab loses its usual class (a markup change)
    extra_content: bool = True  # blocks[0] is extra-content (the adapter is then blocks[1])
    fault_rate: float = 0.0  # share of results whose origUrl carries ?yr_fault=...
    shared_fraction: float = 0.1  # share of results common to every query
    max_upload_bytes: int = 20 * 1024 * 1024  # larger uploads answer 413
    # the live page's behaviours (reference §1, §6), each a switch:
    scroll_loads: int = 1  # pages loaded by scrolling to the bottom before the button shows
    button_delay: float = 0.0  # seconds after each load before the button shows (again)
    client_route: bool = False  # "Похожие" is a pushState route; its results come as a p=0 XHR
    cookie_popup: str = ""  # the cookie popup: "" none, "load", "late", "again" (comes back)
    cookie_delay: float = 0.3  # seconds before a late popup shows
    hydration_delay: float = 0.0  # the camera button does nothing for this long after load
    trusted_clicks: bool = False  # "Показать ещё" ignores clicks not made by a real pointer
    data_states: int = 1  # data-state attributes on the similar page (the results in the last)
    keys_order: bool = False  # serpList.items carries keys (the order); entities shuffled
    plain_block_name: bool = False  # blocks name themselves "block": "…" rather than name.block
    under_construction: bool = False  # Host yandex.com answers "…is under construction"
    sites: int = 5  # entries of the "Сайты" tab
    legacy_sites: bool = False  # the sites tab as before 2025-05: a top-level "sites" state
    # more of the live page's variations (reference §1.2, §1.8, §2, §4, §6):
    camera_markup: str = "aria"  # aria-label / .HeaderDesktopActions-CbirButton only /
    # button.HeaderForm-InlineCbirButton (opens on mousedown only) / legacy .input__cbir-button
    decoy_file_input: bool = False  # another (inert) file input comes before the panel's
    more_markup: str = "default"  # "plain": the "more" button has no FetchListButton-Button class
    scroll_container: bool = False  # the grid scrolls inside its own element, not the window
    retry_pages: list[int] = field(default_factory=list)  # XHR pages answering 503 once;
    # the page's script retries them after a moment, no notice
    slow_pages: list[int] = field(default_factory=list)  # XHR pages answered after slow_delay s
    slow_delay: float = 2.5
    fetch_batch: int = 1  # the page asks for this many pages at once; they answer last first
    duplicate_fetches: bool = False  # the page asks for every page twice
    captcha_style: str = "json"  # captcha_page answers JSON + header, redirects to /showcaptcha,
    # or ("header") a 200 captcha HTML page flagged only by x-yandex-captcha
    drop_pages: list[int] = field(default_factory=list)  # XHR pages whose connection drops once
    xhr_variant: str = ""  # "filters": serpList/fetchByFilters, rpt=imageview, source-serpid, uinfo
    route_keeps_url: bool = False  # with client_route, the tab switches without changing the URL
    lone_surrogates: bool = False  # some titles are cut in the middle of an emoji (\ud83d)
    repeat_results: int = 0  # each XHR page repeats this many results of the page before
    partial_keys: bool = False  # with keys_order, keys lists all but the last entity (+ a stale id)
    xhr_content_type: str = JSON_HEADERS["Content-Type"]  # what the XHR answers say they are
    similar_redirect: bool = (
        False  # the "Похожие" link is a short URL redirecting (302) to the grid
    )
    error_retry: bool = False  # the error notice holds a "Повторить" button that loads again
    # (the "more" button then stays hidden while the notice shows)
    error_pages: list[int] = field(default_factory=list)  # XHR pages answering 500 for their
    error_times: int = (
        3  # first error_times requests (the page's script retries twice: 3 = one notice)
    )
    more_link: bool = False  # "Показать ещё" is a plain link to the next page, server-rendered
    # (a new document, its results in its data-state; no XHR at all)
    # per-picture overrides: {image_key or its prefix: {"pages": 1, "end": "404", "captcha": true, ...}}
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown setting {key!r}")
            setattr(self, key, value)
        if self.end not in END_MODES:
            raise ValueError(f"end must be one of {END_MODES}")
        if self.upload_variant not in UPLOAD_VARIANTS:
            raise ValueError(f"upload_variant must be one of {UPLOAD_VARIANTS}")
        if self.cookie_popup not in COOKIE_MODES:
            raise ValueError(f"cookie_popup must be one of {COOKIE_MODES}")
        if self.camera_markup not in CAMERA_MARKUPS:
            raise ValueError(f"camera_markup must be one of {CAMERA_MARKUPS}")
        if self.captcha_style not in CAPTCHA_STYLES:
            raise ValueError(f"captcha_style must be one of {CAPTCHA_STYLES}")
        if self.xhr_variant not in XHR_VARIANTS:
            raise ValueError(f"xhr_variant must be one of {XHR_VARIANTS}")
        if self.fetch_batch < 1:
            raise ValueError("fetch_batch must be at least 1")


@dataclass
class Served:
    """What one uploaded picture was shown (ids per page; page 0 is the rendered one)."""

    uploads: int = 0
    captchas: int = 0
    name: str | None = None
    cbir_id: str | None = None
    pages: dict[int, list[str]] = field(default_factory=dict)
    end: str | None = None
    url: str | None = None  # a search by image URL: the URL
    sites: list[str] = field(default_factory=list)  # the "Сайты" tab's URLs, when it was shown
    bodies: dict[int, str] = field(default_factory=dict, repr=False)  # the JSON served, per page
    sites_body: str | None = field(default=None, repr=False)  # the sites tab's state, as served

    @property
    def results(self) -> int:
        return sum(len(ids) for ids in self.pages.values())


@lru_cache(maxsize=256)
def _results(key: str, total: int, shared: float, faults: float) -> list[dict[str, Any]]:
    return results.all_results(key, total, shared_fraction=shared, fault_rate=faults)


class FakeYandex:
    """State and handlers of one imitation instance."""

    def __init__(self, **settings: Any) -> None:
        self.settings = Settings()
        self.settings.update(settings)
        self.lock = threading.Lock()
        self.in_flight = 0  # requests being answered now (control requests not counted)
        self.reset()

    def reset(self, *, settings: bool = False) -> None:
        """Forget what was served (and, with ``settings``, restore the defaults)."""
        with self.lock:
            if settings:
                self.settings = Settings()
            self.served: dict[str, Served] = {}
            self.by_cbir: dict[str, str] = {}
            self.broken_done: set[tuple[str, int]] = set()
            self.retried: set[tuple[str, int]] = set()
            self.errors: dict[tuple[str, int], int] = {}  # (picture, page) -> 500s answered
            self.upload_count = 0
            self.requests = 0
            self.latency_total = 0.0
            self.cookie_requests = 0
            self.max_in_flight = self.in_flight  # the most requests answered at once

    def configure(self, **changes: Any) -> None:
        with self.lock:
            self.settings.update(changes)

    def for_image(self, key: str) -> Settings:
        """The settings for one picture: the global ones plus its override, if any."""
        merged = dataclasses.replace(self.settings)
        for prefix, changes in self.settings.overrides.items():
            if key.startswith(prefix):
                merged.update({k: v for k, v in changes.items() if k != "captcha"})
        return merged

    def wants_captcha(self, key: str) -> bool:
        return any(
            key.startswith(prefix) and changes.get("captcha")
            for prefix, changes in self.settings.overrides.items()
        )

    def snapshot(self) -> dict[str, Any]:
        """What was served, as JSON (``GET /__served``)."""
        with self.lock:
            return {
                "requests": self.requests,
                "uploads": self.upload_count,
                "latency_total": self.latency_total,
                "max_in_flight": self.max_in_flight,
                "images": {
                    key: {
                        **{
                            k: v
                            for k, v in dataclasses.asdict(s).items()
                            if k not in ("bodies", "sites_body")
                        },
                        "results": s.results,
                    }
                    for key, s in self.served.items()
                },
            }

    # ------------------------------------------------------------- the app

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/", self.root)
        app.router.add_get("/images", self.root)
        app.router.add_get("/images/", self.start_page)
        app.router.add_post("/images-apphost/image-download", self.upload_a)
        app.router.add_post("/images/touch/search", self.upload_b)
        app.router.add_get("/images/search", self.search)
        app.router.add_get("/images/similar", self.similar_short)
        app.router.add_get("/showcaptcha", self.captcha_page)
        app.router.add_route("*", "/checkcaptcha", self.check_captcha)
        app.router.add_get("/__control", self.get_control)
        app.router.add_post("/__control", self.post_control)
        app.router.add_get("/__served", self.get_served)
        app.router.add_post("/__reset", self.post_reset)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await handler(request)
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, handler)
        finally:
            with self.lock:
                self.in_flight -= 1

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        with self.lock:
            self.requests += 1
            delay = self.settings.latency
            self.latency_total += delay
            captcha = False
            if self.settings.captcha_next > 0 and not request.path.endswith("captcha"):
                self.settings.captcha_next -= 1
                captcha = True
        if delay:
            await asyncio.sleep(delay)
        if "gdpr" in request.cookies:
            with self.lock:
                self.cookie_requests += 1  # the browser kept the cookie popup's answer
        host = (request.host or "").rsplit(":", 1)[0].lower()
        if self.settings.under_construction and host.endswith("yandex.com"):
            return _html(_UNDER_CONSTRUCTION)
        if captcha:
            return self.captcha_answer(request)
        return await handler(request)

    # ------------------------------------------------------------- captcha

    def captcha_url(self, request: web.Request, retpath: str | None = None) -> str:
        params = {
            "cc": "1",
            "mt": uuid.uuid4().hex.upper(),
            "retpath": retpath or str(request.url),
            "t": f"2/{int(time.time())}/{uuid.uuid4().hex[:8]}",
            "u": str(uuid.uuid4()),
            "s": uuid.uuid4().hex,
        }
        return f"{request.url.origin()}/showcaptcha?{urlencode(params)}"

    def captcha_answer(self, request: web.Request, retpath: str | None = None) -> web.Response:
        """A captcha as the request expects it: JSON for XHR/upload, else a redirect."""
        page = self.captcha_url(request, retpath)
        if request.method == "POST" or request.query.get("format") == "json":
            body = serp.captcha_reply(
                page, f"{request.url.origin()}/captchaimg?{uuid.uuid4().hex}", uuid.uuid4().hex
            )
            return web.json_response(body, headers={CAPTCHA_HEADER: "captcha"})
        raise web.HTTPFound(page)

    async def captcha_page(self, request: web.Request) -> web.Response:
        retpath = request.query.get("retpath", "/images/")
        key = uuid.uuid4().hex
        action = f"/checkcaptcha?{urlencode({'key': key, 'retpath': retpath})}"
        hidden = "".join(
            f'<input type="hidden" name="{n}" value="{uuid.uuid4().hex}">'
            for n in ("rdata", "pdata", "tdata", "picasso")
        )
        body = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>Are you not a robot?</title></head><body>
<div class="Spacer"><h1>Ой!</h1><p>Нам очень жаль, но запросы с вашего устройства похожи на автоматические.</p>
<form method="POST" action="{html.escape(action)}">
<div class="CheckboxCaptcha" data-testid="checkbox-captcha">
<div class="CheckboxCaptcha-Anchor"><input type="submit" id="js-button" class="CheckboxCaptcha-Button"
 role="checkbox" aria-checked="false" aria-labelledby="checkbox-label" value=""></div>
<div class="CheckboxCaptcha-Label" id="checkbox-label">I'm not a robot</div></div>
{hidden}</form><p class="Footer">SmartCaptcha by Yandex Cloud</p></div></body></html>"""
        return _html(body)

    async def check_captcha(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query.get("retpath", "/images/"))

    # ------------------------------------------------------------- pages

    async def root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/images/")

    async def start_page(self, request: web.Request) -> web.Response:
        s = self.settings
        start = {
            "variant": s.upload_variant,
            "hydration": s.hydration_delay,
            "cameraEvent": "mousedown" if s.camera_markup == "inline" else "click",
        }
        camera = {
            "aria": '<button type="button" class="Button HeaderDesktopActions-CbirButton" aria-label="Поиск по картинке" data-camera="1">&#128247;</button>',
            "desktop": '<button type="button" class="Button HeaderDesktopActions-CbirButton" title="Search by image" data-camera="1">&#128247;</button>',
            "inline": '<button type="button" class="HeaderForm-InlineCbirButton" data-camera="1">&#128247;</button>',
            "legacy": '<span class="input__cbir-button" role="button" data-camera="1">&#128247;</span>',
        }[s.camera_markup]
        decoy = (
            '<form class="FeedbackForm" style="display:none"><input type="file" name="attachment"></form>'
            if s.decoy_file_input
            else ""
        )
        state = {
            "location": "/images/",
            "initialState": {"cbir": {"uploadVariant": start["variant"]}},
        }
        body = f"""{_root(state)}
<header class="HeaderDesktop">{decoy}<form class="HeaderForm" action="/images/search">
<input class="HeaderForm-Input" name="text" placeholder="Поиск изображений">
{camera}
</form></header>
<div class="CbirPanel-Popup Popup2" style="display:none"><div class="CbirPanel-Main">
<div class="CbirCore"><label class="CbirCore-FileLabel">Выберите файл
<input type="file" class="CbirCore-FileInput" accept="image/*"></label>
<input class="CbirCore-UrlInput" placeholder="Введите адрес картинки"></div></div></div>
{_script("FAKE_START", start, "start.js")}"""
        return _html(self._page("Яндекс Картинки: поиск изображений в интернете", body))

    def _page(self, title: str, body: str) -> str:
        """A page with the styles and, when switched on, the cookie popup."""
        cookie = {"mode": self.settings.cookie_popup, "delay": self.settings.cookie_delay}
        return _page(title, body + _script("FAKE_COOKIE", cookie, "cookie.js"))

    async def _upload(
        self, request: web.Request, data: bytes, name: str | None
    ) -> web.Response | dict:
        key = results.image_key(data)
        with self.lock:
            self.upload_count += 1
            nth = self.upload_count
            served = self.served.setdefault(key, Served())
            served.uploads += 1
            served.name = name or served.name
            fail = self.settings.upload_500_next > 0
            if fail:
                self.settings.upload_500_next -= 1
            captcha = nth in self.settings.captcha_on_upload or self.wants_captcha(key)
            if captcha:
                served.captchas += 1
        if fail:
            return web.Response(status=500, text="Internal Server Error")
        if captcha:
            return self.captcha_answer(request, retpath=f"{request.url.origin()}/images/")
        if len(data) > self.settings.max_upload_bytes:
            return web.Response(status=413, text="Request Entity Too Large")
        shard, image_id = results.cbir_ids(data)
        cbir_id = f"{shard}/{image_id}"
        with self.lock:
            self.by_cbir[cbir_id] = key
            served.cbir_id = cbir_id
        width, height = _image_size(data)
        return {"shard": shard, "id": image_id, "cbir_id": cbir_id, "w": width, "h": height}

    async def upload_a(self, request: web.Request) -> web.Response:
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            upfile = form.get("upfile")
            if not isinstance(upfile, web.FileField):
                return web.Response(status=400, text="no upfile")
            data, name = upfile.file.read(), upfile.filename
        else:
            data, name = await request.read(), None
        out = await self._upload(request, data, name)
        if isinstance(out, web.Response):
            return out
        return web.json_response(serp.upload_reply_a(out["shard"], out["id"], out["w"], out["h"]))

    async def upload_b(self, request: web.Request) -> web.Response:
        form = await request.post()
        upfile = form.get("upfile")
        if not isinstance(upfile, web.FileField):
            return web.Response(status=400, text="no upfile")
        out = await self._upload(request, upfile.file.read(), upfile.filename)
        if isinstance(out, web.Response):
            return out
        orig = f"https://avatars.mds.yandex.net/get-images-cbir/{out['shard']}/{out['id']}/orig"
        shape = "url" if self.settings.upload_variant == "B-url" else "ids"
        plain = self.settings.plain_block_name
        return web.json_response(
            serp.upload_reply_b(out["cbir_id"], orig, shape=shape, plain_block_name=plain)
        )

    async def search(self, request: web.Request) -> web.Response:
        cbir_id = request.query.get("cbir_id", "")
        if not cbir_id and request.query.get("url") and request.query.get("rpt") == "imageview":
            cbir_id = self.url_search(request.query["url"])
        key = self.by_cbir.get(cbir_id)
        if key is None:
            return _html(
                _page("Ничего не нашлось", '<div class="EmptySearch">Ничего не нашлось</div>')
            )
        if request.query.get("format") == "json":
            return await self.fetch_page(request, key)
        if request.query.get("cbir_page") == "similar":
            return self.similar_page(request, key)
        if request.query.get("cbir_page") == "sites":
            return self.sites_page(request, key, cbir_id)
        return self.result_page(request, key, cbir_id)

    async def similar_short(self, request: web.Request) -> web.Response:
        """A short "Похожие" link (``similar_redirect``): 302 to the grid's canonical URL."""
        query = {**request.query, "cbir_page": "similar", "rpt": "imagelike"}
        raise web.HTTPFound("/images/search?" + urlencode(query))

    def url_search(self, url: str) -> str:
        """A search by image URL: the URL seeds the results as uploaded bytes would."""
        data = url.encode("utf-8")
        key = results.image_key(data)
        shard, image_id = results.cbir_ids(data)
        cbir_id = f"{shard}/{image_id}"
        with self.lock:
            served = self.served.setdefault(key, Served())
            served.uploads += 1
            served.url = served.name = url
            served.cbir_id = cbir_id
            self.by_cbir[cbir_id] = key
        return cbir_id

    def _nav(self, request: web.Request, cbir_id: str, active: str) -> tuple[str, str]:
        """The CbirNavigation tabs, and the similar page's URL."""
        q = {"cbir_id": cbir_id, "url": request.query.get("url", "")}
        similar = "/images/search?" + urlencode({**q, "cbir_page": "similar", "rpt": "imagelike"})
        link = "/images/similar?" + urlencode(q) if self.settings.similar_redirect else similar
        sites = "/images/search?" + urlencode({**q, "cbir_page": "sites", "rpt": "imageview"})
        search = "/images/search?" + urlencode({**q, "rpt": "imageview"})

        def cls(name: str) -> str:
            return " CbirNavigation-TabsItem_active" if name == active else ""

        if self.settings.renamed_similar_tab:
            tab = f'<a class="CbirNavigation-TabsItem CbirNavigation-TabsItem_type_similar{cls("similar")}" data-tab="similar" href="{html.escape(link)}">Похожие</a>'
        else:
            tab = f'<a class="CbirNavigation-TabsItem CbirNavigation-TabsItem_name_similar-page{cls("similar")}" data-cbir-page-type="similar" href="{html.escape(link)}">Похожие</a>'
        nav = f"""<div class="CbirNavigation" id="CbirNavigation-{uuid.uuid4().hex[:8]}"><nav class="CbirNavigation-Tabs">
<a class="CbirNavigation-TabsItem CbirNavigation-TabsItem_name_search-by-image{cls("search")}" data-cbir-page-type="search-by-image" href="{html.escape(search)}">Поиск по изображению</a>
{tab}
<a class="CbirNavigation-TabsItem CbirNavigation-TabsItem_name_sites-page{cls("sites")}" data-cbir-page-type="sites" href="{html.escape(sites)}">Сайты</a>
</nav></div>"""
        return nav, similar

    def _client(self, request: web.Request, key: str, s: Settings, *, first_xhr: int) -> dict:
        """The similar grid's script settings."""
        return {
            "cbir": request.query.get("cbir_id", ""),
            "url": request.query.get("url", ""),
            "yu": str(int(key[:12], 16)),
            "serpid": key[12:34],
            "firstXhr": first_xhr,
            "scrollLoads": s.scroll_loads,
            "buttonDelay": s.button_delay,
            "end": s.end,
            "finished": first_xhr > 0 and s.pages == 0 and s.end in ("button", "disabled"),
            "clientRoute": s.client_route,
            "trustedOnly": s.trusted_clicks,
            "batch": s.fetch_batch,
            "duplicates": s.duplicate_fetches,
            "retries": 2,
            "scrollContainer": s.scroll_container,
            "moreMarkup": s.more_markup,
            "filters": s.xhr_variant == "filters",
            "keepUrl": s.route_keeps_url,
            "errorRetry": s.error_retry,
        }

    def result_page(self, request: web.Request, key: str, cbir_id: str) -> web.Response:
        s = self.for_image(key)
        nav, _ = self._nav(request, cbir_id, "search")
        state = {"location": str(request.rel_url), "initialState": {"cbirNavigation": {}}}
        body = _root(state) + nav
        if s.client_route:
            body += _script(
                "FAKE_SIMILAR", self._client(request, key, s, first_xhr=0), "similar.js"
            )
        return _html(self._page("Результаты поиска по изображению", body))

    def sites_page(self, request: web.Request, key: str, cbir_id: str) -> web.Response:
        s = self.for_image(key)
        sites = results.sites_for(key, s.sites)
        location = str(request.rel_url)
        if s.legacy_sites:
            state = serp.legacy_sites_state(sites)
            root = _root(state, root_id=f"CbirSites_infinite-{uuid.uuid4().hex[:8]}")
        else:
            state = serp.data_state(location, None, sites=sites)
            root = _root(state)
        with self.lock:
            served = self.served[key]
            served.sites = [x["url"] for x in sites]
            served.sites_body = json.dumps(state, ensure_ascii=False)
        nav, _ = self._nav(request, cbir_id, "sites")
        items = "".join(
            f'<div class="CbirSites-Item"><a href="{html.escape(x["url"])}">{html.escape(x["title"])}</a></div>'
            for x in sites
        )
        return _html(self._page("Сайты с картинкой", root + nav + items))

    def similar_page(self, request: web.Request, key: str) -> web.Response:
        s = self.for_image(key)
        number = 0
        if s.more_link:  # the next pages are documents too: ...&p=N
            try:
                number = min(max(0, int(request.query.get("p", "0"))), s.pages)
            except ValueError:
                number = 0
        entities = self._page_entities(key, s, number)
        has_more = number < s.pages or (not s.more_link and s.end not in ("button", "disabled"))
        location = str(request.rel_url)
        state = results.data_state(location, entities, has_more=has_more, keys=s.keys_order)
        if s.keys_order and s.partial_keys:
            _partial_keys(state["initialState"]["serpList"]["items"])
        with self.lock:
            served = self.served[key]
            served.pages[number] = [e["id"] for e in entities]
            served.bodies[number] = serp.dumps(state)
            if not has_more:
                served.end = "button"
        others = [
            {"location": location, "initialState": {"header": {"user": None}}},
            results.data_state(location, [], has_more=True),
        ]
        roots = "".join(_root(others[i % 2]) for i in range(max(0, s.data_states - 1)))
        thumbs = "".join(_thumb(e) for e in entities)
        grid = f'<div class="SerpList">{thumbs}</div><div class="SerpList-Sentinel"></div>'
        if s.more_link:
            grid += _more_link(request, number + 1) if has_more else ""
        else:
            grid += _more_button(s.more_markup)
        if s.scroll_container:
            grid = f'<div class="ScrollArea">{grid}</div>'
        body = (
            roots
            + _root(state)
            + grid
            + (
                ""  # a page of plain links: no script
                if s.more_link
                else _script(
                    "FAKE_SIMILAR", self._client(request, key, s, first_xhr=1), "similar.js"
                )
            )
        )
        page = self._page("Похожие картинки", body)
        if s.scroll_container:
            page = page.replace("<body>", '<body class="Body_scroll_container">', 1)
        return _html(page)

    def _page_entities(self, key: str, s: Settings, page: int) -> list[dict[str, Any]]:
        total = s.first_page + s.per_page * s.pages
        every = _results(key, total, s.shared_fraction, s.fault_rate)
        slices = results.page_slices(s.first_page, s.per_page, s.pages)
        start, stop = slices[page]
        if page > 0 and s.repeat_results:  # the feed overlaps: the end of the page before again
            start = max(slices[page - 1][0], start - s.repeat_results)
        chosen = every[start:stop]
        if s.lone_surrogates:  # a title cut by UTF-16 units, halfway through an emoji
            chosen = [_cut_emoji(e) if i % 3 == 0 else e for i, e in enumerate(chosen)]
        return chosen

    async def fetch_page(self, request: web.Request, key: str) -> web.Response:
        """One ``serpList/fetch`` XHR answer."""
        s = self.for_image(key)
        try:
            page = int(request.query.get("p", "1"))
        except ValueError:
            return web.Response(status=400)
        served = self.served[key]
        first = 0 if s.client_route else 1
        if s.fetch_batch > 1:  # the pages of one batch answer in reverse order
            await asyncio.sleep(0.3 * (s.fetch_batch - 1 - (page - first) % s.fetch_batch))
        if page in s.slow_pages:
            await asyncio.sleep(s.slow_delay)
        if s.captcha_page == page:
            with self.lock:
                served.captchas += 1
            if s.captcha_style == "redirect":
                raise web.HTTPFound(self.captcha_url(request))
            if s.captcha_style == "header":
                page = await self.captcha_page(request)
                page.headers[CAPTCHA_HEADER] = "captcha"
                return page
            return self.captcha_answer(request)
        if page in s.drop_pages and (key, -page - 1) not in self.retried:
            with self.lock:
                self.retried.add((key, -page - 1))
            if request.transport is not None:
                request.transport.close()  # the connection drops: no answer at all
            return web.Response(status=503)
        if page in s.error_pages:
            with self.lock:
                self.errors[(key, page)] = failed = self.errors.get((key, page), 0) + 1
            if failed <= s.error_times:
                return web.Response(status=500, text="Internal Server Error")
        if page in s.retry_pages and (key, page) not in self.retried:
            with self.lock:
                self.retried.add((key, page))
            return web.Response(status=503, text="Service Unavailable")
        if page < first or page > s.pages:
            if s.end == "404":
                served.end = "404"
                return web.Response(status=404)
            if s.end == "error":
                served.end = "error"
                return web.Response(status=500)
            served.end = s.end
            last = s.end not in ("empty", "endless")
            text = serp.dumps(results.adapter_payload([], last=last, extra_content=s.extra_content))
            with self.lock:
                served.pages[page] = []
                served.bodies[page] = text
            return web.Response(text=text, headers=JSON_HEADERS)
        if s.broken_json_page == page and (key, page) not in self.broken_done:
            self.broken_done.add((key, page))
            text = json.dumps(
                results.adapter_payload(self._page_entities(key, s, page), last=False)
            )
            return web.Response(text=text[: len(text) // 2], headers=JSON_HEADERS)
        entities = [] if page in s.empty_pages else self._page_entities(key, s, page)
        last = page == s.pages and s.end in ("button", "disabled")
        if last:
            served.end = s.end
        payload = results.adapter_payload(
            entities,
            last=last,
            extra_content=s.extra_content,
            plain_block_name=s.plain_block_name,
            keys=s.keys_order,
        )
        if s.keys_order and s.partial_keys:
            _partial_keys(serp.find_block(payload, serp.ADAPTER_BLOCK)["params"]["adapterData"]["serpList"]["items"])  # fmt: skip
        text = serp.dumps(payload)
        with self.lock:
            served.pages[page] = [e["id"] for e in entities]
            served.bodies[page] = text
        return web.Response(text=text, headers={"Content-Type": s.xhr_content_type})

    # ------------------------------------------------------------- control

    async def get_control(self, request: web.Request) -> web.Response:
        return web.json_response(dataclasses.asdict(self.settings))

    async def post_control(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            self.configure(**changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(dataclasses.asdict(self.settings))

    async def get_served(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def post_reset(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        self.reset(settings=bool(body.get("settings")))
        return web.json_response({"ok": True})


# ----------------------------------------------------------------- serving


async def start(
    fake: FakeYandex, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Start ``fake`` on ``host:port`` (0 = any free port); return the runner and the base URL."""
    runner = web.AppRunner(fake.make_app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}/images/"


class ServerThread:
    """Run the imitation in a background thread with its own event loop (for tests)."""

    def __init__(self, fake: FakeYandex, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fake, self.host, self.port = fake, host, port
        self.loop = asyncio.new_event_loop()
        self.base_url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-yandex")
        self._runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._runner, self.base_url = self.loop.run_until_complete(
            start(self.fake, self.host, self.port)
        )
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the Yandex imitation did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(15)


# ----------------------------------------------------------------- markup


def _image_size(data: bytes) -> tuple[int, int]:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return 0, 0


def _html(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/html", charset="utf-8")


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="ru"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_static('style.css')}</style></head><body>{body}</body></html>"
    )


def _more_button(markup: str) -> str:
    """The hidden "Показать ещё" box; ``plain``: a button without the FetchListButton-Button class."""
    cls = "Button2 Button2_size_l" if markup == "plain" else "Button FetchListButton-Button"
    return (
        f'<div class="FetchListButton" style="display:none"><button type="button" class="{cls}">'
        '<span class="Button-Text">Показать ещё</span></button></div>'
    )


def _more_link(request: web.Request, number: int) -> str:
    """ "Показать ещё" as a plain link to the server-rendered page ``number``."""
    query = {**request.query, "p": str(number)}
    href = html.escape("/images/search?" + urlencode(query))
    return (
        f'<div class="FetchListButton"><a class="Button FetchListButton-Button Link" href="{href}">'
        '<span class="Button-Text">Показать ещё</span></a></div>'
    )


def _cut_emoji(entity: dict[str, Any]) -> dict[str, Any]:
    """The entity with its titles ending in half an emoji (a lone high surrogate)."""
    snippet = {**entity["snippet"], "title": entity["snippet"]["title"] + " \ud83d"}
    viewer = {**entity["viewerData"], "snippet": snippet}
    return {**entity, "alt": entity["alt"] + " \ud83d", "snippet": snippet, "viewerData": viewer}


def _partial_keys(items: dict[str, Any]) -> None:
    """``keys`` that miss the last entity and name one that is not there."""
    items["keys"] = [*items["keys"][:-1], "0000stale0000"]


def _root(state: dict[str, Any], root_id: str | None = None) -> str:
    payload = html.escape(serp.dumps(state), quote=True)
    root_id = root_id or f"ImagesApp-{uuid.uuid4().hex[:10]}"
    return f'<div class="Root" id="{root_id}" data-state="{payload}"></div>'


def _thumb(entity: dict[str, Any]) -> str:
    href = "/images/search?" + urlencode(
        {
            "img_url": entity["origUrl"],
            "pos": entity["pos"],
            "rpt": "simage",
            "pos_id": entity["id"],
        }
    )
    alt = html.escape(entity["alt"].encode("utf-8", "replace").decode("utf-8"), quote=True)
    return (
        f'<div class="SerpItem" data-id="{entity["id"]}"><div class="SerpItem-Thumb">'
        f'<div class="ImagesContentImage"><a class="Link ImagesContentImage-Cover" href="{html.escape(href)}">'
        f'<img class="ImagesContentImage-Image" src="{html.escape(entity["image"])}" alt="{alt}"></a>'
        f"</div></div></div>"
    )


@cache
def _static(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def _script(variable: str, settings: dict[str, Any], name: str) -> str:
    """A script from ``static/``, its settings in ``window.<variable>`` (JSON, ``<`` escaped)."""
    config = json.dumps(settings, ensure_ascii=False).replace("<", "\\u003c")
    return f"<script>window.{variable} = {config};\n{_static(name)}</script>"


_UNDER_CONSTRUCTION = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>Yandex</title></head><body><div class="Construction"><h1>yandex.com is under construction</h1>
<p>We are working on a new version of the site. Meanwhile, try yandex.ru.</p></div></body></html>"""

__all__ = ["FakeYandex", "ServerThread", "Settings", "start"]
