"""Step 7.3 driven as a user runs it: the real script, real images, real pyiqa metrics.

No machine here can download weights, so the runs use pyiqa's weight-free
``piqe`` and ``entropy``, and MUSIQ's real architecture with random weights
(``YR_PYIQA_PRETRAINED=0``). ``HF_HUB_OFFLINE=1`` comes from ``run_script``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.conftest import REPO, run_script

SCRIPT = "7_3_separate_images_by_quality.py"
CATS = ("high", "medium", "low")


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Edges, gradients and texture: something piqe and entropy can tell apart."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 3) % 256, (y * 2) % 256, ((x // 16 + y // 16) % 2) * 200], -1)
    base = base + rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype("uint8"))


def make_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sharp = _photo(320, 240, 1)
    paths = {
        "sharp": folder / "sharp.jpg",
        "blurred": folder / "blurred.jpg",
        "very_blurred": folder / "very_blurred.png",
        "noisy": folder / "noisy.jpg",
        "tiny": folder / "tiny.png",
        "huge": folder / "huge.jpg",
        "rotated": folder / "rotated.jpg",
        "corrupt": folder / "corrupt.jpg",
        "truncated": folder / "truncated.jpg",
    }
    sharp.save(paths["sharp"], quality=95)
    sharp.filter(ImageFilter.GaussianBlur(2)).save(paths["blurred"], quality=95)
    sharp.filter(ImageFilter.GaussianBlur(6)).save(paths["very_blurred"])
    noise = np.random.default_rng(2).normal(0, 60, (240, 320, 3))
    noisy = np.clip(np.asarray(sharp, dtype=float) + noise, 0, 255).astype("uint8")
    Image.fromarray(noisy).save(paths["noisy"], quality=95)
    _photo(40, 30, 3).save(paths["tiny"])
    _photo(2400, 300, 4).save(paths["huge"], quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    _photo(320, 240, 5).save(paths["rotated"], quality=95, exif=exif)
    paths["corrupt"].write_bytes(b"this is not a JPEG at all" * 10)
    full = (folder / "sharp.jpg").read_bytes()
    paths["truncated"].write_bytes(full[: len(full) // 3])
    return paths


def db_rows(dest: Path) -> dict[str, sqlite3.Row]:
    conn = sqlite3.connect(dest / "quality_report.db")
    conn.row_factory = sqlite3.Row
    try:
        return {r["filename"]: r for r in conn.execute("SELECT * FROM image_quality")}
    finally:
        conn.close()


def summary_count(stdout: str, label: str) -> int:
    match = re.search(rf"{re.escape(label)}\s*│\s*([\d,]+)", stdout)
    assert match, f"{label!r} not in summary:\n{stdout}"
    return int(match.group(1).replace(",", ""))


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def photos(workdir: Path) -> tuple[Path, dict[str, Path]]:
    source = workdir / "photos"
    return source, make_images(source)


def test_scores_match_pyiqa_and_images_sort_by_thresholds(photos, workdir):
    source, paths = photos
    done = run_script(SCRIPT, "--source", source, "--model", "piqe", "--yes", cwd=workdir)
    assert done.returncode == 0, done.stderr + done.stdout
    dest = workdir / "sorted" / "quality"
    rows = db_rows(dest)
    assert len(rows) == len(paths)

    import pyiqa
    import torch

    metric = pyiqa.create_metric("piqe", device="cpu")
    for name in ("sharp", "blurred", "very_blurred", "noisy", "tiny"):
        row = rows[paths[name].name]
        raw = json.loads(row["scores_json"])["piqe"]["raw"]
        assert raw == pytest.approx(float(metric(str(paths[name]))), rel=1e-4, abs=1e-3)
        # one scale: piqe is lower-better on 0-100, so the score is 100 - piqe
        assert row["max_score"] == pytest.approx(100 - raw, abs=1e-3)
        expected = (
            "high" if row["max_score"] >= 65 else "medium" if row["max_score"] >= 50 else "low"
        )
        assert row["category"] == expected
        assert paths[name].exists()  # copy mode keeps the original
        assert (dest / expected / paths[name].name).read_bytes() == paths[name].read_bytes()

    # EXIF applied: sizes as shown, and the score is that of the upright picture
    rotated = rows["rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (240, 320)
    upright = torch.from_numpy(
        np.asarray(
            Image.open(paths["rotated"]).transpose(Image.Transpose.ROTATE_270).convert("RGB")
        ).copy()
    )
    expected_raw = float(metric(upright.permute(2, 0, 1)[None].float() / 255))
    assert json.loads(rotated["scores_json"])["piqe"]["raw"] == pytest.approx(
        expected_raw, rel=1e-4, abs=1e-3
    )

    # the huge image is scored (shrunk in memory), and no temporary file was left anywhere
    assert rows["huge.jpg"]["category"] in CATS and rows["huge.jpg"]["width"] == 2400
    assert not [p for p in source.iterdir() if "resized" in p.name]

    # broken files: a one-line reason, listed, left in place, never sorted
    for name in ("corrupt.jpg", "truncated.jpg"):
        assert rows[name]["error_message"] and rows[name]["category"] is None
        assert f"not scored: {name}" in done.stdout
        assert (source / name).exists()
        assert not any((dest / c / name).exists() for c in CATS)
    assert "Traceback" not in done.stdout + done.stderr

    report = json.loads((dest / "quality_report.json").read_text(encoding="utf-8"))
    assert set(report) == set(rows)
    assert report["sharp.jpg"]["scale"] == "piqe: (0..100) to 0..100, inverted (lower is better)"
    assert report["sharp.jpg"]["path"] == f"{rows['sharp.jpg']['category']}/sharp.jpg"
    assert all(
        not Path(e[k]).is_absolute() for e in report.values() for k in ("path", "source_path")
    )
    assert (dest / "quality_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary_count(done.stdout, "scored now") == 7

    # a re-run scores nothing and duplicates nothing
    before = {name: tuple(row) for name, row in rows.items()}
    again = run_script(SCRIPT, "--source", source, "--model", "piqe", "--yes", cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert summary_count(again.stdout, "scored now") == 0
    assert summary_count(again.stdout, "unchanged, score reused") == len(paths)
    assert {n: tuple(r) for n, r in db_rows(dest).items()} == before
    sorted_files = [name for c in CATS for name in files_in(dest / c)]
    assert sorted(sorted_files) == sorted(
        p.name for k, p in paths.items() if k not in ("corrupt", "truncated")
    )

    # a changed image is scored again
    _photo(320, 240, 9).save(paths["sharp"], quality=95)
    os.utime(paths["sharp"], ns=(time.time_ns(), time.time_ns() + 10**9))
    third = run_script(SCRIPT, "--source", source, "--model", "piqe", "--yes", cwd=workdir)
    assert summary_count(third.stdout, "scored now") == 1


def test_percentiles_rank_images_and_dry_run_moves_nothing(photos, workdir):
    source, paths = photos
    (source / "sub").mkdir()
    _photo(200, 150, 11).save(source / "sub" / "nested.jpg")
    dest = workdir / "out"
    done = run_script(
        SCRIPT, "--source", source, "--dest", dest, "--model", "entropy", "--mode", "move",
        "--percentiles", "30,70", "--max-side", "400", "--dry-run", cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    rows = db_rows(dest)
    assert "sub/nested.jpg" not in rows  # not --recursive
    scored = sorted(
        (r for r in rows.values() if r["max_score"] is not None), key=lambda r: r["max_score"]
    )
    assert len(scored) == 7
    cats = [r["category"] for r in scored]
    assert cats[0] == "low" and cats[-1] == "high"
    assert cats == sorted(cats, key=["low", "medium", "high"].index)  # rank order
    assert cats.count("low") == 2 and cats.count("high") == 2
    # entropy is 0..8 bits: the 0-100 score is raw x 12.5
    raw = json.loads(scored[0]["scores_json"])["entropy"]["raw"]
    assert scored[0]["max_score"] == pytest.approx(raw * 12.5, abs=1e-3)
    # dry run: every source file still there, no category folder
    assert all(p.exists() for p in paths.values())
    assert not any((dest / c).exists() for c in CATS)
    assert "would be high: moved" in done.stdout

    recursive = run_script(
        SCRIPT, "--source", source, "--dest", dest, "--model", "entropy", "--recursive",
        "--percentiles", "30,70", "--max-side", "400", "--dry-run", cwd=workdir,
    )  # fmt: skip
    assert summary_count(recursive.stdout, "scored now") == 1
    assert "sub/nested.jpg" in db_rows(dest)


def test_move_never_overwrites_and_sidecars_follow(photos, workdir):
    source, paths = photos
    (source / "sharp.txt").write_text("https://example.com/sharp.jpg", encoding="utf-8")
    dest = workdir / "sorted"
    for cat in CATS:  # a different picture already sits under the same name everywhere
        (dest / cat).mkdir(parents=True)
        _photo(64, 48, 20).save(dest / cat / "sharp.jpg")
    done = run_script(
        SCRIPT, "--source", source, "--dest", dest, "--model", "piqe", "--mode", "move",
        "--errors-folder", "--yes", cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    row = db_rows(dest)["sharp.jpg"]
    folder = dest / row["category"]
    assert {"sharp.jpg", "sharp_1.jpg", "sharp_1.txt"} <= set(files_in(folder))
    assert Image.open(folder / "sharp.jpg").size == (64, 48)  # untouched
    assert row["placed_path"] == str(folder / "sharp_1.jpg")
    assert not paths["sharp"].exists() and not (source / "sharp.txt").exists()
    # unscorable files went to errors/ on request
    assert files_in(dest / "errors") == ["corrupt.jpg", "truncated.jpg"]
    assert not any(p.exists() for p in paths.values())
    report = json.loads((dest / "quality_report.json").read_text(encoding="utf-8"))
    # paths as seen from the report's folder: the folders can move together
    assert report["sharp.jpg"]["path"] == f"{row['category']}/sharp_1.jpg"
    assert report["sharp.jpg"]["source_path"] == "../photos/sharp.jpg"
    assert report["corrupt.jpg"]["path"] == "errors/corrupt.jpg"

    # a re-run finds nothing to do; the report still holds every image
    again = run_script(SCRIPT, "--source", source, "--dest", dest, "--model", "piqe",
                       "--mode", "move", "--yes", cwd=workdir)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert summary_count(again.stdout, "images found") == 0
    assert len(json.loads((dest / "quality_report.json").read_text(encoding="utf-8"))) == len(paths)


def test_killed_run_resumes_without_losing_scores(workdir):
    source = workdir / "many"
    source.mkdir()
    for i in range(20):
        _photo(400, 300, 100 + i).save(source / f"p{i:02d}.png", compress_level=1)
    dest = workdir / "q"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, str(REPO / SCRIPT), "--source", str(source), "--dest", str(dest),
            "--model", "entropy", "--batch-size", "1", "--workers", "1", "--yes"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    first = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (dest / "quality_report.db").exists():
                try:
                    first = len(db_rows(dest))
                except sqlite3.OperationalError:
                    first = 0
                if first >= 2:
                    break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    kept = db_rows(dest)
    assert 2 <= len(kept) < 20
    assert all(r["max_score"] is not None for r in kept.values())

    done = run_script(SCRIPT, "--source", source, "--dest", dest, "--model", "entropy", "--yes",
                      cwd=workdir)  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert summary_count(done.stdout, "unchanged, score reused") == len(kept)
    assert summary_count(done.stdout, "scored now") == 20 - len(kept)
    rows = db_rows(dest)
    assert len(rows) == 20 and all(r["category"] in CATS for r in rows.values())
    assert {n: r["processed_at"] for n, r in rows.items() if n in kept} == {
        n: r["processed_at"] for n, r in kept.items()
    }
    assert sum(len(files_in(dest / c)) for c in CATS) == 20


def test_musiq_architecture_scores_batches_of_mixed_sizes(workdir):
    source = workdir / "m"
    source.mkdir()
    sizes = [(96, 64), (64, 96), (128, 128), (200, 90), (70, 70)]
    for i, (w, h) in enumerate(sizes):
        _photo(w, h, 40 + i).save(source / f"m{i}.jpg", quality=95)
    done = run_script(
        SCRIPT, "--source", source, "--model", "musiq", "--batch-size", "4", "--yes",
        "--thresholds", "0,-100", cwd=workdir, env={"YR_PYIQA_PRETRAINED": "0"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    rows = db_rows(workdir / "sorted" / "quality")
    assert len(rows) == 5
    assert all(r["musiq_score"] is not None and r["models"] == "musiq" for r in rows.values())
    assert all(r["scale"] == "musiq: as is" for r in rows.values())


def test_musiq_padded_batch_equals_one_image_at_a_time():
    """Padded patch sequences and fused attention change no score: the step's MUSIQ
    on a batch of mixed sizes equals pyiqa's own MUSIQ (same weights) image by image."""
    import copy

    import pyiqa
    import torch

    from yandex_reverse.quality import metrics, scorer

    reference = pyiqa.create_metric("musiq", device="cpu", pretrained=False)
    ours = copy.deepcopy(reference)
    metrics.fast_attention(ours.net)
    opts = dict(ours.net.data_preprocess_opts)
    items = []
    for i, (w, h) in enumerate([(96, 64), (160, 120), (48, 200)]):
        image = torch.from_numpy(np.asarray(_photo(w, h, i)).copy()).permute(2, 0, 1).float() / 255
        items.append({"index": i, "image": image, "patches": metrics.musiq_patches(image, opts)})
    runner = scorer.ModelRunner(
        [metrics.Metric("musiq", ours, None, is_musiq=True)], torch.device("cpu"), 3
    )
    with torch.inference_mode():
        batched = runner.score(items)
        for item in items:
            alone = float(reference(item["image"][None]))
            assert batched[item["index"]]["musiq"] == pytest.approx(alone, rel=1e-4, abs=1e-4)


def test_missing_weights_end_with_one_clear_line(workdir):
    source = workdir / "w"
    source.mkdir()
    _photo(64, 48, 1).save(source / "a.jpg")
    hub = workdir / "empty_hub"
    hub.mkdir()
    done = run_script(SCRIPT, "--source", source, "--model", "musiq", "--weights-dir", hub,
                      "--yes", cwd=workdir)  # fmt: skip
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert "weights for musiq are missing" in message
    assert f"Put it at {hub / 'pyiqa' / 'musiq_koniq_ckpt-e95806b9.pth'}" in message
    assert "https://huggingface.co/" in message
    assert "Traceback" not in done.stderr + done.stdout


def test_without_terminal_or_yes_nothing_starts(photos, workdir):
    source, _ = photos
    done = run_script(SCRIPT, "--source", source, "--model", "piqe", cwd=workdir)
    assert done.returncode == 2
    assert "--yes" in done.stderr
    assert not (workdir / "sorted" / "quality").exists()
    bad = run_script(SCRIPT, "--source", source, "--thresholds", "50,65", "--yes", cwd=workdir)
    assert bad.returncode == 2 and "--thresholds" in bad.stderr


def test_scorer_from_settings_turns_tasks_into_rows(photos):
    """The interface a Ray actor uses: settings (picklable) -> Scorer -> rows per task,
    the same rows the step writes, broken files as rows with a reason."""
    import pickle

    import pyiqa

    from yandex_reverse.quality.decode import Task
    from yandex_reverse.quality.scorer import Scorer, ScoreSettings

    _, paths = photos
    settings = pickle.loads(pickle.dumps(ScoreSettings(models=("piqe",), device="cpu")))
    tasks = [
        Task(path, path.name, path.stat().st_size, path.stat().st_mtime_ns)
        for path in paths.values()
    ]
    rows = {row["filename"]: row for row in Scorer(settings).score(tasks)}
    assert set(rows) == {p.name for p in paths.values()}
    metric = pyiqa.create_metric("piqe", device="cpu")
    for name in ("sharp", "noisy", "tiny"):
        row = rows[paths[name].name]
        raw = json.loads(row["scores_json"])["piqe"]["raw"]
        assert raw == pytest.approx(float(metric(str(paths[name]))), rel=1e-4, abs=1e-3)
        assert row["max_score"] == pytest.approx(100 - raw, abs=1e-3)
        assert row["models"] == "piqe" and row["error_message"] is None
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == (240, 320)
    for name in ("corrupt.jpg", "truncated.jpg"):
        assert rows[name]["error_message"] and rows[name]["error_stage"] == "decode"


def test_out_of_memory_halves_the_batch_and_scores_stay():
    """The GPU path's batch halving, driven on the CPU: a model that runs out of memory
    above two images per call gets its batch halved (8 -> 4 -> 2) and every image
    still gets the score it has alone; one image that cannot fit fails with a reason."""
    import pyiqa
    import torch

    from yandex_reverse.quality import metrics, scorer

    piqe = pyiqa.create_metric("piqe", device="cpu")

    class Tight(torch.nn.Module):
        def __init__(self, limit: int) -> None:
            super().__init__()
            self.limit = limit
            self.calls: list[int] = []

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            self.calls.append(len(batch))
            if len(batch) > self.limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return piqe(batch)

    images = [
        torch.from_numpy(np.asarray(_photo(96, 64, i)).copy()).permute(2, 0, 1).float() / 255
        for i in range(6)
    ]
    items = [{"index": i, "image": image} for i, image in enumerate(images)]
    model = Tight(limit=2)
    runner = scorer.ModelRunner(
        [metrics.Metric("piqe", model, None)], torch.device("cpu"), batch_size=8
    )
    with torch.inference_mode():
        out = runner.score(items)
        alone = [float(piqe(image[None])) for image in images]
    assert runner.halvings == 2 and runner.batch_size == 2
    assert model.calls == [6, 4, 2, 2, 2]
    assert [out[i]["piqe"] for i in range(6)] == pytest.approx(alone, rel=1e-5, abs=1e-5)

    model.limit = 0  # not even one image fits: a reason per image, no exception
    with torch.inference_mode():
        out = runner.score(items[:2])
    assert runner.batch_size == 1
    assert out[0] == "model: piqe out of memory at batch size 1"


def test_fast_piqe_gives_pyiqa_numbers_bit_for_bit(photos):
    """The step's PIQE (score only, strip-wise Gaussian) equals pyiqa's piqe exactly,
    one image at a time and in a same-size batch, on sizes that need padding and not."""
    import torch
    from pyiqa.archs.piqe_arch import piqe
    from pyiqa.utils.img_util import imread2tensor

    from yandex_reverse.quality.metrics import FastPiqe

    _, paths = photos
    fast = FastPiqe.create()
    images = [imread2tensor(str(paths[k]))[None] for k in ("sharp", "noisy", "tiny", "huge")]
    images.append(torch.rand(2, 3, 200, 130, generator=torch.Generator().manual_seed(3)))
    with torch.inference_mode():
        for image in images:  # 320x240, 40x30 (pad), 2400x300, a batch of two 130x200
            assert torch.equal(fast(image), piqe(image)[0])


def test_piqe_block_stats_equal_pyiqa_block_stage():
    """block_stats (double, two-pass, from a view of the image) gives pyiqa's block
    variance, sigma, beta and impaired flags bit for bit, on image-like and noisy
    input, with rows and columns past the last whole block."""
    import torch
    from pyiqa.archs.piqe_arch import noise_criterion, notice_dist_criterion

    from yandex_reverse.quality.metrics import FastPiqe, block_stats

    fast = FastPiqe.create()
    gen = torch.Generator().manual_seed(5)
    smooth = torch.linspace(0, 255, 200 * 150).reshape(1, 1, 200, 150).round()
    smooth[..., 100:, :] = torch.randint(0, 256, (100, 150), generator=gen).float()
    smooth[..., 40:90, 30:100] = 128  # a flat patch: impaired edges, zero variances
    noisy = torch.randint(0, 256, (2, 1, 100, 67), generator=gen).float()
    flags = []
    for img in (smooth, noisy):
        norm = fast._normalize(img)
        b = norm.shape[0]
        blocks = norm.unfold(2, 16, 16).unfold(3, 16, 16).contiguous().view(b, -1, 16, 16)
        var = torch.var(blocks, dim=[2, 3], unbiased=True)
        sigma, beta = noise_criterion(blocks, 15, var)
        impaired = notice_dist_criterion(blocks, 6, 0.1, 16)
        my_var, center, surround, my_impaired = block_stats(norm)
        my_sigma = torch.sqrt(my_var)
        csd = torch.nan_to_num(center / surround)
        my_beta = torch.abs(my_sigma - csd) / torch.max(my_sigma, csd)
        assert torch.equal(my_var, var) and torch.equal(my_sigma, sigma)
        # 0/0 in a flat block gives NaN on both sides
        assert torch.equal(my_beta.nan_to_num(-1.0), beta.nan_to_num(-1.0))
        assert torch.equal(my_impaired, impaired)
        flags.append(impaired)
    assert bool(flags[0].any()) and not bool(flags[0].all())  # both kinds were compared


def test_musiq_bfloat16_is_checked_against_float32_on_the_first_image():
    """bfloat16 MUSIQ is used only while the first image's score stays within 0.05 of
    float32; that image keeps its float32 score; a net whose scores move more stays
    in float32."""
    import copy

    import pyiqa
    import torch

    from yandex_reverse.quality import metrics

    reference = pyiqa.create_metric("musiq", device="cpu", pretrained=False)
    opts = dict(reference.net.data_preprocess_opts)
    image = torch.from_numpy(np.asarray(_photo(96, 64, 1)).copy()).permute(2, 0, 1).float() / 255
    patches = metrics.musiq_patches(image, opts)[None]
    with torch.inference_mode():
        exact = float(reference(image[None]))
        checked = metrics.MusiqForward(copy.deepcopy(reference.net), low_precision=True)
        assert float(checked(patches)) == pytest.approx(exact, abs=1e-5)
        assert checked.bf16 is True and checked.difference is not None
        assert 0 < checked.difference <= metrics.BF16_TOLERANCE
        assert float(checked(patches)) == pytest.approx(exact, abs=metrics.BF16_TOLERANCE)

        loud = copy.deepcopy(reference.net)  # scores x1000: bfloat16's error grows with them
        loud.head.weight.mul_(1000)
        loud.head.bias.mul_(1000)
        guarded = metrics.MusiqForward(loud, low_precision=True)
        first = float(guarded(patches))
        assert guarded.bf16 is False and guarded.difference > metrics.BF16_TOLERANCE
        assert float(guarded(patches)) == first  # float32 from then on

        # a batch: the first image is the float32 one, the rest as chosen
        other = torch.from_numpy(np.asarray(_photo(96, 64, 2)).copy()).permute(2, 0, 1) / 255
        pair = torch.cat([patches, metrics.musiq_patches(other.float(), opts)[None]])
        exact_other = float(reference(other.float()[None]))
        batched = metrics.MusiqForward(copy.deepcopy(reference.net), low_precision=True)
        both = batched(pair).reshape(-1)
        assert float(both[0]) == pytest.approx(exact, abs=1e-5)
        assert float(both[1]) == pytest.approx(exact_other, abs=metrics.BF16_TOLERANCE)
        assert batched.bf16 is True


def test_musiq_a_thread_scoring_during_the_bfloat16_check_obeys_it():
    """While one thread checks bfloat16, another scores (bfloat16) meanwhile; if the check
    chooses float32, that thread's scores are float32's, not its bfloat16 guess."""
    import copy
    import threading

    import pyiqa
    import torch

    from yandex_reverse.quality import metrics

    reference = pyiqa.create_metric("musiq", device="cpu", pretrained=False)
    opts = dict(reference.net.data_preprocess_opts)
    image = torch.from_numpy(np.asarray(_photo(96, 64, 1)).copy()).permute(2, 0, 1).float() / 255
    patches = metrics.musiq_patches(image, opts)[None]
    loud = copy.deepcopy(reference.net)  # bfloat16 visibly off
    with torch.inference_mode():
        loud.head.weight.mul_(1000)
        loud.head.bias.mul_(1000)
        exact = float(metrics.MusiqForward(copy.deepcopy(loud), low_precision=False)(patches))
    checked = metrics.MusiqForward(loud, low_precision=True)
    got: list[float] = []

    def score() -> None:
        with torch.inference_mode():
            got.append(float(checked(patches)))

    checked._deciding.acquire()  # as if another thread were checking
    worker = threading.Thread(target=score)
    worker.start()
    worker.join(timeout=0.5)
    assert worker.is_alive()  # its bfloat16 guess waits for the decision
    checked.bf16 = False
    checked._deciding.release()
    worker.join(timeout=60)
    assert got == [pytest.approx(exact, abs=1e-3)]
    assert checked.bf16 is False


def test_thresholds_that_leave_a_category_empty_say_so_and_suggest_better(photos, workdir):
    source, _ = photos
    args = ("--source", source, "--model", "piqe", "--dry-run")
    done = run_script(SCRIPT, *args, "--thresholds", "100,100", cwd=workdir)
    assert done.returncode == 0, done.stderr + done.stdout
    text = " ".join(done.stdout.split())
    assert "No image is high: with piqe the scores run from" in text
    suggested = re.search(r"--thresholds (\d+\.\d),(\d+\.\d) \(30% high", text)
    assert suggested, text
    again = run_script(SCRIPT, *args, "--thresholds", ",".join(suggested.groups()), cwd=workdir)
    assert again.returncode == 0, again.stderr + again.stdout
    cats = [
        r["category"] for r in db_rows(workdir / "sorted" / "quality").values() if r["category"]
    ]
    assert set(cats) == set(CATS) and len(cats) == 7
    assert "No image is" not in again.stdout


def test_on_a_terminal_missing_weights_are_said_at_once_and_piqe_offered(workdir):
    """The model answer is checked before the next question: MUSIQ without its weights
    gets the line saying where to put them, then the menu again with piqe as the
    default; Enter takes it and the run scores with piqe."""
    import pexpect

    from tests.conftest import spawn

    source = workdir / "t"
    source.mkdir()
    for i in range(3):
        _photo(64, 48, i).save(source / f"a{i}.jpg")
    hub = workdir / "empty_hub"
    hub.mkdir()
    child = spawn(SCRIPT, "--source", str(source), "--weights-dir", str(hub), cwd=workdir)
    child.expect("Quality model")
    child.expect("> ")
    child.sendline("1")  # musiq
    child.expect("weights for musiq are missing", timeout=120)
    child.expect("Or use --model piqe")
    child.expect(r"4\) PIQE .*\(default\)")
    child.expect("> ")
    child.sendline("")  # Enter: the default, piqe
    child.expect("Sort mode", timeout=120)
    child.expect("> ")
    child.sendline("")
    child.expect("Output folder")
    child.expect("> ")
    child.sendline("")
    child.expect(r"Start quality assessment\?")
    child.sendline("y")
    child.expect("Quality sorting", timeout=180)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    rows = db_rows(workdir / "sorted" / "quality")
    assert len(rows) == 3 and {r["models"] for r in rows.values()} == {"piqe"}


def test_create_metrics_wires_the_fast_path_of_each_metric():
    """MUSIQ gets its batched forward (bfloat16 allowed with precision='auto') and
    piqe on the CPU its fused kernel: neither falls back to pyiqa's own call."""
    import torch

    from yandex_reverse.quality import metrics

    musiq, piqe = metrics.create_metrics(
        ["musiq", "piqe"], torch.device("cpu"), None, pretrained=False
    )
    assert isinstance(musiq.fast, metrics.MusiqForward) and musiq.is_musiq
    # bfloat16 still to be decided on the first image where it pays, else float32
    assert musiq.fast.bf16 is (None if metrics.bf16_pays(torch.device("cpu")) else False)
    assert isinstance(piqe.fast, metrics.FastPiqe) and not piqe.is_musiq


def test_the_cpu_batch_is_one_image_for_musiq_and_two_for_the_others():
    """On the CPU MUSIQ runs one image per call (measured faster per image than
    two); the other metrics keep two; --batch-size still decides when given."""
    from yandex_reverse.quality.scorer import Scorer, ScoreSettings

    def batch(models: tuple[str, ...], size: int | None = None) -> int:
        settings = ScoreSettings(models, device="cpu", pretrained=False, batch_size=size)
        return Scorer(settings).runner.batch_size

    assert batch(("musiq",)) == 1
    assert batch(("piqe",)) == 2
    assert batch(("musiq", "piqe")) == 1
    assert batch(("musiq",), 4) == 4


# The real script run so that, at exit, it writes which of these modules it loaded
_PROBE = """
import atexit, json, os, runpy, sys
script, out = sys.argv[1], sys.argv.pop(2)
sys.argv = sys.argv[1:]
watched = ("pyiqa", "torchvision", "torch._dynamo", "torch")
atexit.register(lambda: open(out, "w").write(json.dumps([m for m in watched if m in sys.modules])))
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""


def test_piqe_path_imports_no_pyiqa_and_scores_as_pyiqa(photos, workdir):
    """--model piqe on the CPU scores without importing pyiqa, torchvision or
    torch._dynamo (~2.5 s of start-up per process, per Ray actor), and every score is
    pyiqa's piqe of the same pixels (--max-side 0: as pyiqa reads them), bit for bit."""
    source, paths = photos
    loaded = workdir / "loaded.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO / SCRIPT), str(loaded), "--source", source,
         "--model", "piqe", "--device", "cpu", "--max-side", "0", "--yes"],
        cwd=workdir, input="", capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(loaded.read_text()) == ["torch"]
    rows = db_rows(workdir / "sorted" / "quality")

    import torch
    from pyiqa.archs.piqe_arch import piqe
    from pyiqa.utils.img_util import imread2tensor

    with torch.inference_mode():
        for name in ("sharp", "blurred", "very_blurred", "noisy", "tiny", "huge"):
            raw = json.loads(rows[paths[name].name]["scores_json"])["piqe"]["raw"]
            assert raw == float(piqe(imread2tensor(str(paths[name]))[None])[0][0])


def test_piqe_helpers_equal_pyiqa_functions():
    """The in-house Gaussian kernel, YIQ luma, symmetric pad and 0-100 scale give
    pyiqa's own (fspecial, to_y_channel, symm_pad, DEFAULT_CONFIGS) exactly."""
    import torch
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.matlab_utils import fspecial, symm_pad
    from pyiqa.utils.color_util import to_y_channel

    from yandex_reverse.quality import metrics

    for size, sigma in ((7, 7.0 / 6), (11, 1.5), (3, 0.5)):
        assert torch.equal(metrics.gaussian_kernel(size, sigma), fspecial(size, sigma, 1))
    generator = torch.Generator().manual_seed(7)
    for shape in ((2, 3, 37, 53), (1, 3, 16, 16), (1, 3, 5, 7), (1, 3, 47, 31)):
        img = torch.rand(shape, generator=generator)
        y = to_y_channel(img, out_data_range=1, color_space="yiq")
        assert torch.equal(metrics.yiq_luma(img), y)
        right, bottom = shape[3] % 16, shape[2] % 16
        padded = metrics.symmetric_pad_end(y, right, bottom)
        assert torch.equal(padded, symm_pad(y, (0, right, 0, bottom)))
    config = DEFAULT_CONFIGS["piqe"]
    scale = metrics.parse_score_range(config["score_range"], config["lower_better"])
    assert scale == metrics.PIQE_SCALE
