"""The shared image opener: format allow-list and a thread-safe pixel guard."""

from __future__ import annotations

import gc
import io
import struct
import threading
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from yandex_reverse import imageinfo
from yandex_reverse.imageinfo import ImageError, open_image, read_info


def png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header claims ``width`` x ``height`` (a pixel bomb)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), "red").save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_png_claiming_is_what_pillow_reads(tmp_path: Path) -> None:
    path = tmp_path / "claim.png"
    path.write_bytes(png_claiming(300, 200))
    with Image.open(path) as image:  # Pillow's own view of the header
        assert image.size == (300, 200)


def test_many_threads_opening_bombs_and_photos_at_once_refuse_every_bomb(tmp_path: Path) -> None:
    """Bombs just above the limit (where Pillow only warns) and far above it,
    opened by 16 threads together with normal photos while other threads keep
    changing the process-wide warning filters: every bomb is refused, every
    photo opens with its size."""
    limit = imageinfo.MAX_PIXELS
    bombs = []
    for n, (w, h) in enumerate([(10_000, 9_000), (limit // 1000 + 1, 1000), (30_000, 30_000)]):
        path = tmp_path / f"bomb{n}.png"
        path.write_bytes(png_claiming(w, h))
        assert w * h > limit
        bombs.append(path)
    photos = []
    for n in range(4):
        path = tmp_path / f"photo{n}.jpg"
        Image.new("RGB", (40 + n, 30), (n * 40, 90, 200)).save(path, "JPEG")
        photos.append(path)
    jobs = [(p, True) for p in bombs] * 100 + [(p, False) for p in photos] * 75
    stop = threading.Event()

    def meddle() -> None:  # what the old guard did, from other threads
        while not stop.is_set():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
            with warnings.catch_warnings():
                warnings.simplefilter("error")

    def one(job: tuple[Path, bool]) -> tuple[Path, bool, str]:
        path, is_bomb = job
        try:
            info = read_info(path)
        except ImageError as exc:
            return path, is_bomb, str(exc)
        return path, is_bomb, f"{info.width}x{info.height}"

    # The meddlers turn every warning into an error for moments at a time, in
    # the whole process: garbage an earlier test left (a socket that warns when
    # it is freed) must not be collected inside one of those moments, where its
    # warning would be raised in the collector and fail this test at random.
    gc.collect()
    gc.disable()
    meddlers = [threading.Thread(target=meddle) for _ in range(2)]
    for thread in meddlers:
        thread.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(one, jobs))
    finally:
        stop.set()
        for thread in meddlers:
            thread.join()
        gc.enable()
    assert len(outcomes) == len(jobs)
    for path, is_bomb, outcome in outcomes:
        if is_bomb:
            assert outcome.startswith("refused as a decompression bomb"), (path, outcome)
        else:
            n = int(path.stem[-1])
            assert outcome == f"{40 + n}x30", (path, outcome)


def test_the_pixel_limit_is_per_call(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(png_claiming(2000, 1000))
    with pytest.raises(ImageError, match="2000x1000 = 2000000 pixels, limit 1000000"):
        open_image(path, max_pixels=1_000_000)
    with open_image(path) as image:  # the default limit is untouched by that call
        assert image.size == (2000, 1000)
    assert Image.MAX_IMAGE_PIXELS == imageinfo.MAX_PIXELS  # Pillow's global left as it was


def test_only_accepted_formats_reach_pillow(tmp_path: Path) -> None:
    """An EPS named .jpg would run Ghostscript; it never reaches the EPS decoder."""
    eps = tmp_path / "photo.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with Image.open(eps) as image:  # Pillow alone would take it
        assert image.format == "EPS"
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        read_info(eps)
    assert "EPS" not in imageinfo.ACCEPTED_FORMATS
    assert {"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"} <= set(imageinfo.ACCEPTED_FORMATS)


def test_a_file_object_opens_too_with_a_narrower_list() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (5, 4)).save(buf, "GIF")
    buf.seek(0)
    with pytest.raises(ImageError, match="not an image"):
        open_image(buf, formats=("JPEG", "PNG"))
    buf.seek(0)
    with open_image(buf, formats=imageinfo.WEB_FORMATS) as image:
        assert image.size == (5, 4)


def test_the_extension_table_matches_pillows_registry() -> None:
    """The table is written out (so that step 6's exact mode never imports
    Pillow); it must say what the installed Pillow says, less the refused
    formats."""
    Image.init()
    registry = {
        ext.lower(): fmt
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and fmt not in imageinfo.EXCLUDED_FORMATS
    }
    table = imageinfo.EXTENSION_FORMATS
    assert {e: f for e, f in registry.items() if e in table} == {
        e: f for e, f in table.items() if e in registry
    }
    missing_here = set(registry) - set(table)
    assert not missing_here, f"Pillow reads these, add them to EXTENSION_FORMATS: {missing_here}"
    assert {".eps", ".ps", ".pdf"}.isdisjoint(imageinfo.IMAGE_EXTENSIONS)


def test_importing_the_module_does_not_import_pillow() -> None:
    import subprocess
    import sys

    code = "import sys, yandex_reverse.imageinfo; print('PIL' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
