"""The Yandex imitation over real HTTP: shapes, switches, control endpoint, CLI."""

from __future__ import annotations

import html
import io
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import PurePosixPath
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest
from PIL import Image

from tests.conftest import REPO
from yandex_reverse import serp
from yandex_reverse.fake_yandex.results import ADAPTER, all_results, image_key
from yandex_reverse.fake_yandex.site import FakeYandex, ServerThread

UPLOAD_A = "/images-apphost/image-download?cbird=111&images_avatars_size=preview&images_avatars_namespace=images-cbir"
FETCH_REQUEST = json.dumps(
    {
        "blocks": [
            {"block": "extra-content", "params": {}, "version": 2},
            {
                "block": {"block": ADAPTER},
                "params": {"type": "ImagesApp", "ajaxKey": "serpList/fetch"},
                "version": 2,
            },
        ]
    }
)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def http(url: str, data: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) without following redirects."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with OPENER.open(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (60 + seed, 40), (seed * 50 % 255, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(FakeYandex()) as thread:
        yield thread


@pytest.fixture
def site(server: ServerThread) -> tuple[FakeYandex, str]:
    server.fake.reset(settings=True)
    server.fake.configure(first_page=5, per_page=4, pages=2)
    origin = server.base_url.removesuffix("/images/")
    return server.fake, origin


def upload(origin: str, data: bytes) -> dict:
    status, _, body = http(origin + UPLOAD_A, data, {"Content-Type": "image/jpeg"})
    assert status == 200
    return json.loads(body)


def fetch(origin: str, cbir_id: str, page: int):
    query = urlencode(
        {
            "format": "json",
            "request": FETCH_REQUEST,
            "p": page,
            "rpt": "imagelike",
            "cbir_id": cbir_id,
        }
    )
    assert "serpList%2Ffetch" in query
    return http(f"{origin}/images/search?{query}", headers={"X-Requested-With": "XMLHttpRequest"})


def adapter_entities(payload: dict) -> dict:
    (block,) = [b for b in payload["blocks"] if b["name"]["block"] == ADAPTER]
    return block["params"]["adapterData"]["serpList"]["items"]["entities"]


def test_results_are_deterministic_and_look_real():
    first = all_results("seed-a", 200)
    assert first == all_results("seed-a", 200)
    other = {e["id"] for e in all_results("seed-b", 200)}
    assert len(other - {e["id"] for e in first}) > 150
    assert len({e["id"] for e in first}) == 200
    hosts = {urlsplit(e["origUrl"]).hostname for e in first}
    assert any(h.endswith("userapi.com") for h in hosts)
    assert any(h.endswith("vkuserphoto.ru") for h in hosts)
    assert "i.pinimg.com" in hosts and "upload.wikimedia.org" in hosts
    assert all(e["origUrl"].startswith("http://") for e in first)
    assert all(e["image"].startswith("//avatars.mds.yandex.net/i?id=") for e in first)
    assert any(isinstance(e["origWidth"], str) for e in first)
    assert any(isinstance(e["pos"], str) for e in first)
    assert all("<b>" in e["snippet"]["title"] and "&amp;" in e["snippet"]["title"] for e in first)
    for e in first:  # preview and dups of a result share the picture's stem
        stems = {
            PurePosixPath(urlsplit(v["url"]).path).stem.removeprefix("640px-")
            for v in e["viewerData"]["preview"] + e["viewerData"]["dups"]
        }
        assert len(stems) == 1, stems


def test_some_results_are_shared_between_queries_and_faults_are_opt_in():
    a = {e["origUrl"] for e in all_results("q1", 100)}
    b = {e["origUrl"] for e in all_results("q2", 100)}
    assert a & b
    assert not any("yr_fault=" in u for u in a)
    faulty = [e["origUrl"] for e in all_results("q1", 100, fault_rate=0.3)]
    assert 10 < sum("yr_fault=" in u for u in faulty) < 60


def test_upload_similar_page_and_fetch_pages(site):
    fake, origin = site
    data = jpeg(1)
    reply = upload(origin, data)
    assert reply["cbir_id"] == f"{reply['image_shard']}/{reply['image_id']}"
    assert reply["url"].startswith("https://avatars.mds.yandex.net/get-images-cbir/")
    assert (reply["width"], reply["height"]) == (61, 40)

    q = urlencode({"cbir_id": reply["cbir_id"], "rpt": "imageview", "url": reply["url"]})
    status, _, body = http(f"{origin}/images/search?{q}")
    page = body.decode()
    assert status == 200 and "CbirNavigation-TabsItem_name_similar-page" in page
    href = html.unescape(re.search(r'name_similar-page"[^>]*href="([^"]+)"', page)[1])
    assert "cbir_page=similar" in href

    status, _, body = http(origin + href)
    page = body.decode()
    state = json.loads(
        html.unescape(re.search(r'id="ImagesApp-\w+" data-state="([^"]+)"', page)[1])
    )
    first = state["initialState"]["serpList"]["items"]["entities"]
    assert len(first) == 5 and page.count('class="SerpItem"') == 5
    assert "FetchListButton-Button" in page and "Показать ещё" in page

    ids = set(first)
    for p in (1, 2):
        status, headers, body = fetch(origin, reply["cbir_id"], p)
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        payload = json.loads(body)
        assert payload["blocks"][1]["name"]["block"] == ADAPTER
        ids |= set(adapter_entities(payload))
    assert len(ids) == 5 + 4 + 4
    served = fake.served[image_key(data)]
    assert served.uploads == 1 and served.results == 13 and served.end == "button"


@pytest.mark.parametrize(("end", "status"), [("404", 404), ("error", 500)])
def test_ends_past_the_last_page(site, end, status):
    fake, origin = site
    fake.configure(end=end)
    reply = upload(origin, jpeg(2))
    got, _, body = fetch(origin, reply["cbir_id"], 3)
    assert got == status and body == b""


def test_broken_json_once_and_empty_pages(site):
    fake, origin = site
    fake.configure(broken_json_page=1, empty_pages=[2], extra_content=False)
    reply = upload(origin, jpeg(3))
    _, _, body = fetch(origin, reply["cbir_id"], 1)
    with pytest.raises(ValueError):
        json.loads(body)
    _, _, body = fetch(origin, reply["cbir_id"], 1)
    payload = json.loads(body)
    assert payload["blocks"][0]["name"]["block"] == ADAPTER
    assert len(adapter_entities(payload)) == 4
    _, _, body = fetch(origin, reply["cbir_id"], 2)
    assert adapter_entities(json.loads(body)) == {}


def test_error_pages_fail_their_first_tries_and_endless_empty_pages(site):
    fake, origin = site
    fake.configure(error_pages=[1], error_times=2, end="endless")
    reply = upload(origin, jpeg(4))
    assert [fetch(origin, reply["cbir_id"], 1)[0] for _ in range(3)] == [500, 500, 200]
    for page in (3, 4, 9):  # past the last page: empty pages, none says it is the last
        _, _, body = fetch(origin, reply["cbir_id"], page)
        payload = json.loads(body)
        assert adapter_entities(payload) == {} and not serp.fetch_finished(payload)
    assert fake.served[image_key(jpeg(4))].end == "endless"


def test_captcha_redirects_pages_and_answers_json(site):
    fake, origin = site
    fake.configure(captcha_next=2)
    status, headers, _ = http(f"{origin}/images/")
    assert status == 302 and urlsplit(headers["Location"]).path == "/showcaptcha"
    assert parse_qs(urlsplit(headers["Location"]).query)["retpath"] == [f"{origin}/images/"]
    status, headers, body = http(origin + UPLOAD_A, jpeg(4))
    assert headers["x-yandex-captcha"] == "captcha" and json.loads(body)["type"] == "captcha"
    status, _, body = http(f"{origin}/showcaptcha?retpath={quote(origin + '/images/')}")
    assert (
        'class="CheckboxCaptcha"' in body.decode()
        and "SmartCaptcha by Yandex Cloud" in body.decode()
    )
    assert http(f"{origin}/images/")[0] == 200  # K requests later it is over


def test_captcha_on_nth_upload_and_upload_500(site):
    fake, origin = site
    fake.configure(captcha_on_upload=[2], upload_500_next=1)
    assert http(origin + UPLOAD_A, jpeg(5))[0] == 500
    _, _, body = http(origin + UPLOAD_A, jpeg(5))
    assert json.loads(body)["type"] == "captcha"
    assert "cbir_id" in upload(origin, jpeg(5))
    assert fake.served[image_key(jpeg(5))].captchas == 1


def test_upload_variant_b_multipart(site):
    _, origin = site
    boundary = "XyZ"
    data = jpeg(6)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="upfile"; filename="x.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = quote(json.dumps({"blocks": [{"block": "cbir-uploader__get-cbir-id"}]}))
    status, _, reply = http(
        f"{origin}/images/touch/search?rpt=imageview&format=json&request={request}",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    params = json.loads(reply)["blocks"][0]["params"]
    assert status == 200 and params["originalImageUrl"].endswith("/orig")
    assert "/" in params["cbirId"]


def test_control_endpoint_flips_switches_and_reports(site):
    fake, origin = site
    status, _, body = http(
        f"{origin}/__control", json.dumps({"latency": 0.01, "end": "404"}).encode()
    )
    assert status == 200 and json.loads(body)["end"] == "404"
    assert fake.settings.latency == 0.01
    assert http(f"{origin}/__control", b'{"nope": 1}')[0] == 400
    upload(origin, jpeg(7))
    snap = json.loads(http(f"{origin}/__served")[2])
    assert snap["uploads"] == 1 and snap["latency_total"] > 0
    assert http(f"{origin}/__reset", b"{}")[0] == 200
    assert json.loads(http(f"{origin}/__served")[2])["uploads"] == 0


def test_cli_prints_its_base_url_and_serves():
    proc = subprocess.Popen(
        [sys.executable, "-m", "yandex_reverse.fake_yandex", "--port", "0", "--pages", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with proc:  # closes both pipes when the server is gone
        try:
            base = proc.stdout.readline().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/images/", base)
            status, _, body = http(base)
            assert status == 200 and 'aria-label="Поиск по картинке"' in body.decode()
            assert json.loads(http(base.removesuffix("images/") + "__control")[2])["pages"] == 1
        finally:
            proc.terminate()
            proc.wait(10)
