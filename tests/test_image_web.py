"""The image web (fake_yandex.image_web): real images from URLs, faults on demand,
reached as an HTTP proxy for any host or directly as /<host>/<path>."""

from __future__ import annotations

import http.client
import io
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.utils import parsedate_to_datetime

import pytest
from PIL import Image, ImageChops, ImageStat

from tests.conftest import REPO
from yandex_reverse.fake_yandex.image_web import ImageWebServer


@pytest.fixture(scope="module")
def web():
    with ImageWebServer() as server:
        yield server


def via_proxy(web: ImageWebServer, url: str, timeout: float = 10):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": web.proxy_url}))
    return opener.open(url, timeout=timeout)


def raw(web: ImageWebServer, url: str, timeout: float = 10) -> http.client.HTTPResponse:
    """An absolute-form request line, as any HTTP client sends it to a proxy."""
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=timeout)
    conn.request("GET", url)
    return conn.getresponse()


def picture(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_size_and_format_come_from_the_url(web):
    cases = {
        "http://sun9-52.userapi.com/impg/a1/p1.jpg?size=1280x960&quality=95&type=album": (
            (1280, 960),
            "JPEG",
        ),
        "http://i.pinimg.com/736x/ab/cd/p2.png": ((736, 552), "PNG"),
        "http://upload.wikimedia.org/wikipedia/commons/a/ab/p3.webp?yr_size=300x200": (
            (300, 200),
            "WEBP",
        ),
        "http://example.com/thumbs/320x240/p4.gif": ((320, 240), "GIF"),
        "http://example.com/p5": ((800, 600), "JPEG"),
    }
    for url, (size, fmt) in cases.items():
        with via_proxy(web, url) as resp:
            image = picture(resp.read())
            assert (image.size, image.format) == (size, fmt), url
            assert resp.headers["Content-Type"] == Image.MIME[fmt]


def test_same_picture_name_gives_the_same_picture_at_any_size(web):
    with via_proxy(web, "http://sun9-1.userapi.com/impg/x/cat.jpg?size=1280x960") as resp:
        big = picture(resp.read()).convert("RGB").resize((64, 48))
    with via_proxy(web, "http://i.pinimg.com/736x/zz/cat.jpg") as resp:
        small = picture(resp.read()).convert("RGB").resize((64, 48))
    with via_proxy(web, "http://i.pinimg.com/736x/zz/dog.jpg") as resp:
        other = picture(resp.read()).convert("RGB").resize((64, 48))
    same = sum(ImageStat.Stat(ImageChops.difference(big, small)).mean)
    different = sum(ImageStat.Stat(ImageChops.difference(big, other)).mean)
    assert same < 15 < different


def test_direct_and_proxy_forms_serve_the_same_bytes(web):
    url = "http://sun9-7.userapi.com/impg/q/direct.jpg?size=400x300"
    with via_proxy(web, url) as resp:
        proxied = resp.read()
    with urllib.request.urlopen(web.direct_url(url), timeout=10) as resp:
        direct = resp.read()
    assert proxied == direct and picture(direct).size == (400, 300)


def test_status_faults(web):
    for code in ("404", "410"):
        with pytest.raises(urllib.error.HTTPError) as err:
            via_proxy(web, f"http://e.com/a/{code}.jpg?yr_fault={code}")
        assert err.value.code == int(code)
    with pytest.raises(urllib.error.HTTPError) as err:
        via_proxy(web, "http://e.com/a/once.jpg?yr_fault=500once")
    assert err.value.code == 500
    with via_proxy(web, "http://e.com/a/once.jpg?yr_fault=500once") as resp:
        assert resp.status == 200


def test_retry_after_in_seconds_and_as_http_date(web):
    resp = raw(web, "http://e.com/r/s.jpg?yr_fault=429&yr_retry=3")
    assert resp.status == 429 and resp.headers["Retry-After"] == "3"
    resp = raw(web, "http://e.com/r/d.jpg?yr_fault=429date&yr_retry=3")
    when = parsedate_to_datetime(resp.headers["Retry-After"]).timestamp()
    assert resp.status == 429 and 2 <= when - time.time() <= 6
    resp = raw(web, "http://e.com/r/u.jpg?yr_fault=503")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    # after yr_times answers (default 1) the image comes
    assert raw(web, "http://e.com/r/u.jpg?yr_fault=503").status == 200


def test_body_faults(web):
    page = raw(web, "http://e.com/b/h.jpg?yr_fault=html200")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.read().lstrip().startswith(b"<!DOCTYPE html>")
    wrong = raw(web, "http://e.com/b/w.jpg?yr_fault=wrongtype")
    assert wrong.headers["Content-Type"].startswith("text/plain")
    assert picture(wrong.read()).format == "JPEG"
    cut = raw(web, "http://e.com/b/t.jpg?yr_fault=truncated")
    with pytest.raises(http.client.IncompleteRead):
        cut.read()
    reset = raw(web, "http://e.com/b/r.jpg?yr_fault=reset")
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        reset.read()
    big = raw(web, "http://e.com/b/o.jpg?yr_fault=oversize")
    assert big.headers.get("Content-Length") is None
    assert len(big.read(3_000_000)) == 3_000_000  # and it keeps coming
    drip = raw(web, "http://e.com/b/d.jpg?yr_fault=drip", timeout=5)
    assert int(drip.headers["Content-Length"]) > 1000
    assert len(drip.read(16)) == 16  # a trickle; the rest would take minutes


def test_slow_answer_and_timeout(web):
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        raw(web, "http://e.com/s/t.jpg?yr_fault=timeout", timeout=0.5)
    assert raw(web, "http://e.com/s/d.jpg?yr_delay=0.2").status == 200
    assert time.monotonic() - start >= 0.2


def test_redirect_chain_lands_and_loop_never_ends(web):
    with via_proxy(
        web, "http://sun9-3.userapi.com/impg/r/chain.jpg?size=300x200&yr_fault=redirect"
    ) as resp:
        assert picture(resp.read()).size == (300, 200)
        assert resp.url == "http://sun9-3.userapi.com/impg/r/chain.jpg?size=300x200"
    first = raw(web, "http://sun9-3.userapi.com/impg/r/chain.jpg?yr_fault=redirect")
    assert first.status == 302 and "cdn1.redirect-sun9-3.userapi.com" in first.headers["Location"]
    with pytest.raises(urllib.error.HTTPError, match="redirect"):
        via_proxy(web, "http://e.com/r/loop.jpg?yr_fault=redirectloop")
    # Direct requests are redirected in the direct form.
    with urllib.request.urlopen(
        web.direct_url("http://e.com/r/d.jpg?yr_fault=redirect&yr_hops=2"), timeout=10
    ) as resp:
        assert resp.url.startswith(web.proxy_url + "/e.com/") and picture(resp.read())


def test_requests_are_counted_per_url(web):
    url = "http://count.example/x/c.jpg?size=10x10"
    for _ in range(2):
        via_proxy(web, url).close()
    assert web.hits[url] == 2


def test_command_line_prints_its_proxy_url():
    proc = subprocess.Popen(
        [sys.executable, "-m", "yandex_reverse.fake_yandex.image_web", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proxy = proc.stdout.readline().strip()
        assert proxy.startswith("http://127.0.0.1:")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
        with opener.open("http://sun9-9.userapi.com/impg/c/cli.png?size=64x48", timeout=10) as r:
            assert picture(r.read()).size == (64, 48)
    finally:
        proc.terminate()
        proc.wait(10)
