"""`yandex-reverse run`: the steps in order in one working folder, stopping at the first failure.

Offline: step 1 is covered by the demo (it needs the imitation's URL), so
these runs start at step 2 from XHR files, with step 5 going through the
image web imitation as its proxy (HTTP_PROXY, as a user behind a proxy).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import REPO, rows
from tests.xhr_factory import entity, write_xhr
from yandex_reverse.fake_yandex.image_web import ImageWebServer
from yandex_reverse.imageinfo import iter_images


def yandex_reverse(*args: str, cwd: Path, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "yandex_reverse", *args], cwd=cwd, capture_output=True,
        text=True, timeout=900, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "COLUMNS": "200",
             "HF_HUB_OFFLINE": "1", **(env or {})},
    )  # fmt: skip


def test_run_stops_at_the_first_failing_step(tmp_path: Path) -> None:
    done = yandex_reverse("run", "--from", "import", cwd=tmp_path)  # no XHR/ here
    assert done.returncode == 1
    assert "Step 2: XHR → SQLite failed" in " ".join(done.stderr.split())
    assert "every step resumes" in done.stderr
    assert "Step 3" not in done.stdout  # nothing after the failing step ran
    assert not (tmp_path / "yandex_images").exists() and not (tmp_path / "report.html").exists()
    assert "Traceback" not in done.stdout + done.stderr


def test_run_does_the_steps_in_one_folder_and_a_second_run_resumes(tmp_path: Path) -> None:
    write_xhr(
        tmp_path / "XHR",
        "cat.jpg",
        0,
        [
            entity(
                f"r{i}",
                pos=i,
                orig_url=f"http://sun9-52.userapi.com/impg/r{i}.jpg?size={900 + 40 * i}x600",
                previews=[],
                dups=[],
            )  # the image web proxies plain http (no CONNECT)
            for i in range(4)
        ],
    )
    with ImageWebServer() as web:
        env = {"HTTP_PROXY": web.proxy_url, "HTTPS_PROXY": web.proxy_url}
        first = yandex_reverse("run", "--from", "import", "--to", "megapixels", cwd=tmp_path,
                               env=env)  # fmt: skip
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        db = tmp_path / "yandex_images.db"
        assert rows(db, "SELECT count(*) FROM images")[0][0] == 4
        assert rows(db, "SELECT count(*) FROM downloads WHERE status = 'done'")[0][0] == 4
        assert (tmp_path / "vk_images.db").is_file()  # step 3 (userapi.com is VK)
        downloads = {p.name for p in iter_images(tmp_path / "yandex_images", recursive=False)}
        assert len(downloads) == 4
        sidecar = next((tmp_path / "yandex_images").glob("r0_*.txt")).read_text(encoding="utf-8")
        fields = dict(line.split(": ", 1) for line in sidecar.splitlines() if ": " in line)
        page, title = rows(db, "SELECT coalesce(snippet_url, url), title FROM images "
                               "WHERE id = 'r0'")[0]  # fmt: skip
        assert fields["query_photo"] == "cat.jpg"  # where it was found, in the sidecar
        assert fields["source_page"] == page and fields["title"] == title
        for kind in ("orientation", "megapixels"):
            sorted_here = {p.name for p in iter_images(tmp_path / "sorted" / kind)}
            assert sorted_here == downloads, kind  # copies, outside the downloads folder
        again = yandex_reverse("run", "--from", "import", "--to", "megapixels", cwd=tmp_path,
                               env=env)  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
    assert rows(db, "SELECT count(*) FROM downloads")[0][0] == 4  # nothing fetched twice
    assert {p.name for p in iter_images(tmp_path / "yandex_images", recursive=False)} == downloads
    for kind in ("orientation", "megapixels"):
        assert len(list(iter_images(tmp_path / "sorted" / kind))) == 4  # no _1 copies
    assert not (tmp_path / "yandex_images" / "_duplicates").exists() or not list(
        iter_images(tmp_path / "yandex_images" / "_duplicates")
    )
    report = yandex_reverse("run", "--from", "report", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert report.stdout.strip().splitlines()[-1] == f"Report: {tmp_path / 'report.html'}"


def test_run_without_musiq_weights_falls_back_to_piqe_with_one_line(tmp_path: Path) -> None:
    downloads = tmp_path / "yandex_images"
    downloads.mkdir()
    for i, size in enumerate([(40, 30), (30, 40), (32, 32)]):
        Image.effect_noise(size, 20 + 30 * i).convert("RGB").save(downloads / f"p{i}.png")
    hub = tmp_path / "torch_home"  # no weights anywhere and no network (HF_HUB_OFFLINE)
    hub.mkdir()
    done = yandex_reverse("run", "--from", "quality", "--to", "quality", cwd=tmp_path,
                          env={"TORCH_HOME": str(hub), "LANG": "C"})  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = [line for line in done.stdout.splitlines() if "Taking piqe" in line]
    assert len(said) == 1, done.stdout
    assert "weights for musiq are missing" in said[0] and "Put it at" in said[0]
    models = rows(tmp_path / "sorted" / "quality" / "quality_report.db",
                  "SELECT DISTINCT models FROM image_quality")  # fmt: skip
    assert models == [("piqe",)]
