"""The image web: an offline stand-in for every image host Yandex links to.

An aiohttp server on 127.0.0.1 that answers as a plain HTTP proxy for any host
and path (absolute-form request lines, so result URLs keep their real host
names: ``http://sun9-52.userapi.com/impg/...``) and also answers direct
requests ``http://127.0.0.1:PORT/<host>/<path>``. It draws a real image
deterministically from the URL (see IMAGEWEB_CONTRACT in the docs):

* the picture is seeded by the last path segment without its extension, so the
  ``preview`` and ``dups`` of one result show the same picture at different
  sizes (real perceptual duplicates for step 6);
* the size comes from ``size=WxH`` (VK), a path segment ``WxH`` or ``NNNx``
  (pinimg, height by 4:3), ``yr_size=WxH``, else 800x600;
* the format from the path extension (.jpg/.jpeg/.png/.webp/.gif), else JPEG;
* faults from ``yr_fault=<name>`` (or a default fault for every URL): see
  :data:`FAULTS`.

Run it with ``python -m yandex_reverse.fake_yandex.image_web --port P``; it
prints its proxy URL on the first line. Tests use :class:`ImageWebServer`,
which runs it in a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import re
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter, OrderedDict
from email.utils import formatdate
from pathlib import PurePosixPath
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
from aiohttp import web
from PIL import Image

# name -> what the server does for it.
FAULTS: dict[str, str] = {
    "404": "404 Not Found",
    "410": "410 Gone",
    "500once": "500 on the first request for the URL, the image afterwards",
    "429": "429 with Retry-After in seconds for the first yr_times requests (default 1)",
    "429date": "429 with Retry-After as an HTTP-date for the first yr_times requests",
    "503": "503 with Retry-After in seconds for the first yr_times requests",
    "timeout": "no answer for yr_delay seconds (default 3600)",
    "drip": "headers at once, then the body a few bytes at a time",
    "reset": "headers and part of the body, then the connection is reset",
    "truncated": "a body shorter than its Content-Length, then a clean close",
    "html200": "an HTML page with status 200",
    "wrongtype": "the image with Content-Type text/plain",
    "oversize": "a chunked body with no Content-Length that never ends (up to 1 GiB)",
    "redirect": "a chain of yr_hops (default 3) redirects across hosts, then the image",
    "redirectloop": "redirects between two URLs forever",
    "redirectto": "one redirect to the URL in yr_to (e.g. a loopback or private address)",
    "eps": "an EPS (PostScript) document served as image/jpeg",
    "bomb": "a PNG whose header claims 10000x9000 pixels (above Pillow's limit, below twice it)",
}
# Any URL with yr_hold=<name> waits until ImageWebServer.release(name) (tests: a
# response held until the test has done what it needs, instead of a race).
FORMATS = {
    ".jpg": ("JPEG", "image/jpeg"),
    ".jpeg": ("JPEG", "image/jpeg"),
    ".png": ("PNG", "image/png"),
    ".webp": ("WEBP", "image/webp"),
    ".gif": ("GIF", "image/gif"),
}
DEFAULT_SIZE = (800, 600)
MAX_SIDE = 4096
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"}
_WXH = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_WX = re.compile(r"^(\d{1,5})x$")
HITS: web.AppKey[Counter[str]] = web.AppKey("hits", Counter)
# Requests being answered now, and the most at once, per host (per-host limits are
# measured here: a client that keeps them never makes PEAK exceed its limit).
ACTIVE: web.AppKey[Counter[str]] = web.AppKey("active", Counter)
PEAK: web.AppKey[Counter[str]] = web.AppKey("peak", Counter)
DEFAULT_FAULT: web.AppKey[str | None] = web.AppKey("default_fault", str)
CACHE: web.AppKey[_Cache] = web.AppKey("cache", object)
HOLDS: web.AppKey[dict[str, asyncio.Event]] = web.AppKey("holds", dict)
_HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    b"<body><h1>Checking your browser</h1><p>This is not an image.</p></body></html>"
)


# ------------------------------------------------------------------ drawing


def _size_from(path: str, query: dict[str, list[str]]) -> tuple[int, int]:
    def parse(value: str) -> tuple[int, int] | None:
        match = _WXH.match(value.strip().lower())
        return (int(match[1]), int(match[2])) if match else None

    size = parse(query["size"][0]) if "size" in query else None
    if size is None:
        for segment in path.split("/"):
            if size := parse(segment):
                break
            if match := _WX.match(segment.lower()):
                width = int(match[1])
                size = (width, max(1, width * 3 // 4))
                break
    if size is None and "yr_size" in query:
        size = parse(query["yr_size"][0])
    width, height = size or DEFAULT_SIZE
    return min(max(width, 1), MAX_SIDE), min(max(height, 1), MAX_SIDE)


def _stem_and_format(path: str) -> tuple[str, str, str]:
    name = PurePosixPath(path).name or "index"
    suffix = PurePosixPath(name).suffix.lower()
    fmt, mime = FORMATS.get(suffix, ("JPEG", "image/jpeg"))
    stem = name[: -len(suffix)] if suffix else name
    return stem, fmt, mime


def render(stem: str, width: int, height: int, fmt: str) -> bytes:
    """A deterministic picture for ``stem``: the same stem gives the same picture at any size.

    A coarse random colour field (what perceptual hashes see) enlarged
    smoothly, plus fine grain that makes JPEGs of realistic weight.
    """
    seed = int.from_bytes(hashlib.sha256(stem.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")
    picture = coarse.resize((width, height), Image.Resampling.BICUBIC)
    if fmt in ("JPEG", "WEBP"):
        grain_rng = np.random.default_rng([seed, width, height])
        grain = grain_rng.integers(-10, 11, (height, width, 1), dtype=np.int16)
        pixels = np.asarray(picture, dtype=np.int16) + grain
        picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    out = io.BytesIO()
    if fmt == "JPEG":
        picture.save(out, "JPEG", quality=85)
    elif fmt == "WEBP":
        picture.save(out, "WEBP", quality=80, method=0)
    elif fmt == "GIF":
        picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(out, "GIF")
    else:
        picture.save(out, fmt, compress_level=1)
    return out.getvalue()


class _Cache:
    """Rendered images by (stem, size, format), bounded in bytes (LRU)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.size = 0
        self.items: OrderedDict[tuple[str, int, int, str], bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[str, int, int, str]) -> bytes:
        with self.lock:
            data = self.items.get(key)
            if data is not None:
                self.items.move_to_end(key)
                return data
        data = render(*key)
        with self.lock:
            if key not in self.items:
                self.items[key] = data
                self.size += len(data)
                while self.size > self.limit and len(self.items) > 1:
                    _, old = self.items.popitem(last=False)
                    self.size -= len(old)
        return data


# ------------------------------------------------------------------ serving


def _target(request: web.Request) -> tuple[str, str, str, bool]:
    """(host, path, query, direct) of the URL the client asked for."""
    raw = request.raw_path  # absolute-form stays absolute here
    if raw.startswith(("http://", "https://")):
        parts = urlsplit(raw)
        return (parts.hostname or "").lower(), parts.path or "/", parts.query, False
    host = (request.host or "").rsplit(":", 1)[0].lower()
    parts = urlsplit(raw)
    if host in _LOCAL_HOSTS or not host:
        # Direct form: /<host>/<path>
        segments = parts.path.lstrip("/").split("/", 1)
        real_host = segments[0].lower()
        path = "/" + (segments[1] if len(segments) > 1 else "")
        return real_host, path, parts.query, True
    return host, parts.path or "/", parts.query, False


def _link(request: web.Request, host: str, path: str, query: str, direct: bool) -> str:
    """An absolute URL to (host, path, query) in the form the client used."""
    tail = f"{quote(path, safe='/%')}" + (f"?{query}" if query else "")
    if direct:
        return f"http://{request.host}/{host}{tail}"
    return f"http://{host}{tail}"


def _drop_params(query: str, *names: str) -> str:
    return "&".join(p for p in query.split("&") if p and p.split("=", 1)[0] not in names)


def _retry_after(params: dict[str, list[str]], as_date: bool) -> str:
    seconds = float(params.get("yr_retry", ["1"])[0])
    if as_date:
        # An HTTP-date has whole seconds: round up so the wait is never too short.
        return formatdate(time.time() + seconds + 1, usegmt=True)
    return str(max(0, round(seconds)))


def _abort_with_reset(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


async def _handle(request: web.Request) -> web.StreamResponse:
    app = request.app
    host = _target(request)[0]
    active, peak = app[ACTIVE], app[PEAK]
    active[host] += 1
    peak[host] = max(peak[host], active[host])
    try:
        return await _answer(request)
    finally:
        active[host] -= 1


async def _answer(request: web.Request) -> web.StreamResponse:
    app = request.app
    if request.method == "CONNECT":
        # TLS to arbitrary hosts cannot be imitated: the imitation's URLs are http://.
        return web.Response(status=501, text="CONNECT (https) is not supported by the image web")
    host, path, query, direct = _target(request)
    if direct and host == "_stats":
        return web.json_response({"requests": sum(app[HITS].values()), "urls": len(app[HITS])})
    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    app[HITS][url] += 1
    hits = app[HITS][url]
    params = parse_qs(query, keep_blank_values=True)
    fault = params.get("yr_fault", [app[DEFAULT_FAULT] or ""])[0]
    stem, fmt, mime = _stem_and_format(path)
    width, height = _size_from(path, params)
    delay = float(params.get("yr_delay", ["0"])[0])
    times = int(params.get("yr_times", ["1"])[0])

    if "yr_hold" in params:
        await app[HOLDS].setdefault(params["yr_hold"][0], asyncio.Event()).wait()
    if fault == "timeout":
        await asyncio.sleep(float(params.get("yr_delay", ["3600"])[0]))
        return web.Response(status=504, text="gateway timeout")
    if delay > 0:
        await asyncio.sleep(delay)
    if fault in ("404", "410"):
        return web.Response(status=int(fault), text=f"{fault} {FAULTS[fault]}")
    if fault == "500once" and hits == 1:
        return web.Response(status=500, text="internal server error")
    if fault in ("429", "429date", "503") and hits <= times:
        status = 503 if fault == "503" else 429
        headers = {"Retry-After": _retry_after(params, fault == "429date")}
        return web.Response(status=status, text="slow down", headers=headers)
    if fault == "html200":
        return web.Response(status=200, body=_HTML_PAGE, content_type="text/html")
    if fault in ("redirect", "redirectloop"):
        hop = int(params.get("yr_hop", ["0"])[0])
        if fault == "redirectloop":
            nxt = _drop_params(query, "yr_hop") + f"&yr_hop={1 - min(hop, 1)}"
            raise web.HTTPFound(_link(request, host, path, nxt, direct))
        hops = int(params.get("yr_hops", ["3"])[0])
        if hop < hops:
            nxt = _drop_params(query, "yr_hop") + f"&yr_hop={hop + 1}"
            if hop + 1 == hops:  # the last hop lands on a clean URL
                nxt = _drop_params(query, "yr_hop", "yr_hops", "yr_fault")
            origin_host = host.split(".redirect-", 1)[-1]
            target_host = f"cdn{hop + 1}.redirect-{origin_host}" if hop + 1 < hops else origin_host
            raise web.HTTPFound(_link(request, target_host, path, nxt.lstrip("&"), direct))
    if fault == "redirectto":
        raise web.HTTPFound(params.get("yr_to", ["http://127.0.0.1/"])[0])
    if fault == "eps":
        return web.Response(status=200, body=_EPS, content_type="image/jpeg")
    if fault == "bomb":
        return web.Response(status=200, body=_bomb_png(10000, 9000), content_type="image/png")
    if fault == "oversize":
        return await _stream_oversize(request, app[CACHE].get((stem, width, height, fmt)), mime)

    loop = asyncio.get_running_loop()
    body = await loop.run_in_executor(None, app[CACHE].get, (stem, width, height, fmt))
    if fault == "wrongtype":
        return web.Response(status=200, body=body, content_type="text/plain")
    if fault in ("drip", "reset", "truncated"):
        return await _stream_broken(request, body, mime, fault)
    return web.Response(status=200, body=body, headers={"Content-Type": mime})


_EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
    b"newpath 0 0 moveto 64 64 lineto stroke showpage\n%%EOF\n"
)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height``, with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


async def _stream_broken(
    request: web.Request, body: bytes, mime: str, fault: str
) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": mime})
    response.content_length = len(body)
    await response.prepare(request)
    if fault == "drip":
        for start in range(0, len(body), 16):
            await response.write(body[start : start + 16])
            await asyncio.sleep(0.5)
        await response.write_eof()
        return response
    await response.write(body[: len(body) // 2])
    await asyncio.sleep(0.05)
    if fault == "reset":
        _abort_with_reset(request)
    else:
        transport = request.transport
        if transport is not None:
            transport.close()
    return response


async def _stream_oversize(request: web.Request, head: bytes, mime: str) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": mime})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(head[:-2])  # a JPEG without its end marker, then padding
    padding = b"\0" * 65536
    for _ in range(1 << 14):  # 1 GiB at most
        await response.write(padding)
    await response.write_eof()
    return response


def make_app(*, default_fault: str | None = None, cache_mb: int = 256) -> web.Application:
    """The image web as an aiohttp application (``app['hits']`` counts requests per URL)."""
    if default_fault and default_fault not in FAULTS:
        raise ValueError(f"unknown fault {default_fault!r}; known: {', '.join(FAULTS)}")
    app = web.Application(handler_args={"max_field_size": 16384})
    app[HITS] = Counter()
    app[ACTIVE] = Counter()
    app[PEAK] = Counter()
    app[DEFAULT_FAULT] = default_fault
    app[CACHE] = _Cache(cache_mb * 1024 * 1024)
    app[HOLDS] = {}
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


class ImageWebServer:
    """The image web in a background thread, for tests: ``with ImageWebServer() as web: ...``."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, default_fault: str | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.app = make_app(default_fault=default_fault)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def proxy_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def direct_url(self, url: str) -> str:
        """``http://host/path`` as a direct request to this server."""
        parts = urlsplit(url)
        return f"{self.proxy_url}/{parts.netloc}{parts.path}" + (
            f"?{parts.query}" if parts.query else ""
        )

    @property
    def hits(self) -> Counter[str]:
        return self.app[HITS]

    def release(self, name: str) -> None:
        """Let every request with ``yr_hold=<name>`` (waiting or to come) go on."""
        assert self._loop is not None

        def _set() -> None:
            self.app[HOLDS].setdefault(name, asyncio.Event()).set()

        self._loop.call_soon_threadsafe(_set)

    @property
    def peak_per_host(self) -> Counter[str]:
        """The most requests to each host answered at the same time."""
        return self.app[PEAK]

    def start(self) -> ImageWebServer:
        self._thread = threading.Thread(target=self._serve, name="image-web", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        # Slow answers (timeout, drip) still sleeping: end them before the loop goes.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> ImageWebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _serve_forever(host: str, port: int, default_fault: str | None, cache_mb: int) -> None:
    runner = web.AppRunner(
        make_app(default_fault=default_fault, cache_mb=cache_mb), access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"http://{host}:{bound}", flush=True)
    print(
        f"Image web: use --proxy http://{host}:{bound}, or direct URLs "
        f"http://{host}:{bound}/<host>/<path>. Ctrl-C stops.",
        file=sys.stderr,
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m yandex_reverse.fake_yandex.image_web",
        description="Offline imitation of the image hosts: an HTTP proxy that draws images.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument(
        "--fault", choices=sorted(FAULTS), help="a fault for every URL without yr_fault="
    )
    parser.add_argument(
        "--cache-mb", type=int, default=256, help="memory for rendered images (default 256)"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve_forever(args.host, args.port, args.fault, args.cache_mb))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
