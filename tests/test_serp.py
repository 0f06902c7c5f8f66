"""The Yandex JSON format (yandex_reverse/serp.py): every shape of the reference read back."""

from __future__ import annotations

import json

import pytest

from tests.xhr_factory import entity
from yandex_reverse import serp


def ents(n: int) -> list[dict]:
    return [entity(f"e{i:02d}", pos=i) for i in range(n)]


@pytest.mark.parametrize("extra", [True, False])
@pytest.mark.parametrize("plain", [True, False])
def test_xhr_answer_adapter_found_by_name_in_either_form(extra: bool, plain: bool):
    data = serp.adapter_payload(ents(3), extra_content=extra, plain_block_name=plain)
    assert list(serp.find_entities(data)) == ["e00", "e01", "e02"]
    assert not serp.fetch_finished(data)
    assert serp.fetch_finished(serp.adapter_payload([], last=True))


def test_keys_give_the_order():
    for data in (
        serp.adapter_payload(ents(4), keys=True),
        serp.data_state("/images/search", ents(4), keys=True),
    ):
        inner = data["blocks"][-1] if "blocks" in data else data["initialState"]
        assert "keys" in str(inner)
        assert list(serp.find_entities(data)) == ["e00", "e01", "e02", "e03"]


def test_results_state_picks_the_one_with_entities():
    empty = serp.data_state("/images/search", [])
    other = {"location": "/", "initialState": {"header": {"x": 1}}}
    full = serp.data_state("/images/search", ents(2))
    assert serp.results_state([other, empty, full]) is full
    assert serp.results_state([other, empty]) is empty
    assert serp.results_state([other]) is None
    assert serp.state_serp(other) is None


def test_sites_new_and_legacy_shapes():
    sites = [serp.site("https://vk.com/wall1", "Кот", domain="vk.com", width=800, height=600)]
    new = serp.data_state("/images/search?cbir_page=sites", None, sites=sites)
    old = serp.legacy_sites_state(sites)
    assert serp.sites_of(new) == sites == serp.sites_of(old)
    assert serp.sites_of(serp.data_state("/", ents(1))) is None
    assert serp.sites_state([serp.data_state("/", ents(1)), new]) is new


@pytest.mark.parametrize(
    "reply",
    [
        serp.upload_reply_a(1382825, "Li2H7363", 1080, 1350),
        serp.upload_reply_b(
            "1382825/Li2H7363",
            "https://avatars.mds.yandex.net/get-images-cbir/1382825/Li2H7363/orig",
        ),
        serp.upload_reply_b(
            "1382825/Li2H7363",
            "https://avatars.mds.yandex.net/get-images-cbir/1382825/Li2H7363/orig",
            shape="url",
            plain_block_name=True,
        ),
    ],
)
def test_upload_replies_of_both_endpoints(reply: dict):
    assert serp.upload_reply(reply) == {
        "cbir_id": "1382825/Li2H7363",
        "url": "https://avatars.mds.yandex.net/get-images-cbir/1382825/Li2H7363/orig",
    }


def test_bad_shapes_have_one_line_reasons():
    with pytest.raises(serp.FormatError, match="captcha"):
        serp.find_entities(serp.captcha_reply("https://y/showcaptcha", "https://y/i", "k"))
    with pytest.raises(serp.FormatError, match="not an object"):
        serp.find_entities([1])
    with pytest.raises(serp.FormatError, match="no 'i-react-ajax-adapter:ajax' block"):
        serp.find_entities({"blocks": [{"name": {"block": "other"}}]})
    assert serp.upload_reply({"blocks": [{"params": {}}]}) is None
    assert serp.upload_reply("text") is None
    assert serp.is_captcha({"type": "captcha"})


def test_saved_names_round_trip():
    assert serp.saved_name("кот 1.jpg", 3) == "кот 1.jpg_xhr_003.json"
    assert serp.parse_saved_name("кот 1.jpg_sites_000.json") == ("кот 1.jpg", "sites", 0)
    assert serp.parse_saved_name("url_0123456789ab_xhr_012.json") == ("url_0123456789ab", "xhr", 12)
    assert serp.parse_saved_name("notes.json") is None


def test_url_query_names_are_stable_and_mapped(tmp_path):
    url = "https://example.com/кот.jpg?x=1"
    name = serp.url_query_name(url)
    assert name == serp.url_query_name(url) and len(name) == 16 and name.startswith("url_")
    assert serp.read_url_queries(tmp_path) == {}
    (tmp_path / serp.URL_QUERIES_FILE).write_text(
        json.dumps({"version": 1, "queries": {name: url}}), encoding="utf-8"
    )
    assert serp.read_url_queries(tmp_path) == {name: url}


def test_a_query_name_near_255_bytes_gets_a_short_stem_its_files_fit(tmp_path):
    assert serp.query_stem("cat.jpg") == "cat.jpg"
    assert serp.saved_name("cat.jpg", 3) == "cat.jpg_xhr_003.json"
    near = "д" * 122 + ".jpg"  # 248 bytes: "<name>_xhr_000.json" would be 261
    other = "д" * 122 + ".png"  # the same start
    stem = serp.query_stem(near)
    assert stem != near and stem != serp.query_stem(other)
    assert stem == serp.query_stem(near)  # stable
    assert stem.startswith("д" * 50) and "\ufffd" not in stem  # cut at a character
    for name in (
        serp.saved_name(near, 1234, serp.KIND_SITES).replace(".json", "_CORRUPT_JSON.txt"),
        serp.saved_name(near, 0),
    ):
        assert len(name.encode("utf-8")) <= serp.NAME_LIMIT
    assert serp.parse_saved_name(serp.saved_name(near, 2)) == (stem, "xhr", 2)
    (tmp_path / serp.QUERY_NAMES_FILE).write_text(
        json.dumps({"version": 1, "names": {stem: near}}), encoding="utf-8"
    )
    assert serp.full_query_name(tmp_path, stem) == near
    assert serp.full_query_name(tmp_path, "cat.jpg") == "cat.jpg"
    # A later run in the same process adds a name: the file is read again.
    later = "ж" * 122 + ".jpg"
    names = {stem: near, serp.query_stem(later): later}
    (tmp_path / "names.tmp").write_text(
        json.dumps({"version": 1, "names": names}), encoding="utf-8"
    )
    (tmp_path / "names.tmp").replace(tmp_path / serp.QUERY_NAMES_FILE)  # as step 1 writes it
    assert serp.full_query_name(tmp_path, serp.query_stem(later)) == later
    assert serp.full_query_name(tmp_path, stem) == near
