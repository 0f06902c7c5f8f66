"""Step 7.2 driven as a user would: the real script, real image files of known
sizes, flags or answers typed on a pseudo-terminal."""

from __future__ import annotations

import re
from pathlib import Path

import pexpect
import pytest
from PIL import Image

from tests.conftest import run_script, spawn, tree

SCRIPT = "7_2_separate_images_by_MegaPixels.py"
_shade = iter(range(1, 10_000))


def make_image(path: Path, size: tuple[int, int], *, orientation: int | None = None) -> Path:
    """A real image of ``size``; large ones as 1-bit PNG so they are quick to write."""
    shade = next(_shade)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png" and size[0] * size[1] > 100_000:
        image = Image.new("1", size, 0)
        image.putpixel((shade % size[0], 0), 1)
        image.save(path)
        return path
    image = Image.new("RGB", size, (shade % 256, shade // 256 % 256, 40))
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, exif=exif)
    else:
        image.save(path)
    return path


SIZES = {
    "tiny.png": (300, 200),  # 0.06 MP
    "almost1.png": (1000, 999),  # 0.999 MP
    "one.png": (1000, 1000),  # 1.0 MP
    "onehalf.jpg": (1500, 1000),  # 1.5 MP
    "half_up.png": (1000, 2250),  # 2.25 MP: 2.3 in 0.1 steps (not banker's 2.2)
    "twohalf.png": (2000, 1250),  # 2.5 MP
    "rotated.jpg": (200, 100),  # 0.02 MP, EXIF orientation 6
    "big.png": (5000, 4000),  # 20 MP
}
EXPECTED = {
    "exact": {
        "tiny.png": "0.1MP",
        "almost1.png": "1.0MP",
        "one.png": "1.0MP",
        "onehalf.jpg": "1.5MP",
        "half_up.png": "2.3MP",
        "twohalf.png": "2.5MP",
        "rotated.jpg": "0.0MP",
        "big.png": "20.0MP",
    },
    "medium": {
        "tiny.png": "0.0MP",
        "almost1.png": "1.0MP",
        "one.png": "1.0MP",
        "onehalf.jpg": "1.5MP",
        "half_up.png": "2.5MP",
        "twohalf.png": "2.5MP",
        "rotated.jpg": "0.0MP",
        "big.png": "20.0MP",
    },
    "ranges": {
        "tiny.png": "0.0-2.0MP",
        "almost1.png": "0.0-2.0MP",
        "one.png": "0.0-2.0MP",
        "onehalf.jpg": "0.0-2.0MP",
        "half_up.png": "2.0-5.0MP",
        "twohalf.png": "2.0-5.0MP",
        "rotated.jpg": "0.0-2.0MP",
        "big.png": "20.0MP+",
    },
    "coarse": {
        **dict.fromkeys(SIZES, "0.0-5.0MP"),
        "big.png": "10.0MP+",
    },
    "very-coarse": {
        "tiny.png": "under-1.0MP",
        "almost1.png": "under-1.0MP",
        "one.png": "1.0-3.0MP",
        "onehalf.jpg": "1.0-3.0MP",
        "half_up.png": "1.0-3.0MP",
        "twohalf.png": "1.0-3.0MP",
        "rotated.jpg": "under-1.0MP",
        "big.png": "8.0MP+",
    },
    "custom:0.05,2.4": {
        "tiny.png": "0.05-2.4MP",
        "almost1.png": "0.05-2.4MP",
        "one.png": "0.05-2.4MP",
        "onehalf.jpg": "0.05-2.4MP",
        "half_up.png": "0.05-2.4MP",
        "twohalf.png": "2.4MP+",
        "rotated.jpg": "under-0.05MP",
        "big.png": "2.4MP+",
    },
}

EXPECTED["5"] = EXPECTED["very-coarse"]  # the original's menu number works as a flag too


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images of known sizes, made once; each test copies them."""
    src = tmp_path_factory.mktemp("originals")
    for name, size in SIZES.items():
        make_image(src / name, size, orientation=6 if name == "rotated.jpg" else None)
    (src / "onehalf.txt").write_text("sidecar of onehalf.jpg\n")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (src / "fake.jpg").write_text("<html>not an image</html>")
    return src


@pytest.fixture
def photos(originals: Path, workdir: Path) -> Path:
    src = workdir / "photos"
    src.mkdir()
    for file in originals.iterdir():
        (src / file.name).write_bytes(file.read_bytes())
    return src


def distribution(stdout: str) -> list[str]:
    """Folder names in the order the report lists them."""
    return re.findall(r"^\W*((?:under-)?[\d.]+(?:-[\d.]+)?MP\+?)\s", stdout, re.MULTILINE)


@pytest.mark.parametrize("strategy", list(EXPECTED))
def test_every_strategy_puts_each_image_in_an_unambiguous_folder(
    photos: Path, workdir: Path, strategy: str
) -> None:
    done = run_script(
        SCRIPT, "--source", photos, "--mode", "copy", "--strategy", strategy, "--yes", cwd=workdir
    )
    assert done.returncode == 0, done.stderr
    out = workdir / "sorted" / "megapixels"
    found = {p.name: p.parent.name for p in out.glob("*/*") if p.suffix != ".txt"}
    assert found == EXPECTED[strategy]
    assert (out / EXPECTED[strategy]["onehalf.jpg"] / "onehalf.txt").exists(), "sidecar follows"
    # Folders are listed in numeric order (a text sort puts under-1.0MP last, as the original did).
    listed = distribution(done.stdout)
    assert listed == sorted(set(EXPECTED[strategy].values()), key=_numeric)
    for name in ("broken.png", "fake.jpg"):
        assert (photos / name).exists() and f"{name}:" in done.stdout


def _numeric(name: str) -> tuple[float, float]:
    numbers = [float(x) for x in re.findall(r"[\d.]+", name)]
    if name.startswith("under-"):
        return (0.0, numbers[0])
    if name.endswith("+"):
        return (numbers[0], float("inf"))
    return (numbers[0], numbers[-1])


def test_quantiles_make_folders_of_about_equal_counts(workdir: Path) -> None:
    """Hundreds of files (read by the worker processes) split into 4 even groups."""
    src = workdir / "many"
    for i in range(440):
        make_image(src / f"img{i:03d}.png", (100 + i, 100))
    done = run_script(
        SCRIPT,
        "--source",
        src,
        "--mode",
        "move",
        "--strategy",
        "quantiles:4",
        "--yes",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    folders = sorted((workdir / "sorted" / "megapixels").iterdir(), key=lambda p: _numeric(p.name))
    counts = [len(list(f.iterdir())) for f in folders]
    assert len(counts) == 4 and sum(counts) == 440
    assert all(abs(c - 110) <= 12 for c in counts), counts
    assert folders[0].name.startswith("under-") and folders[-1].name.endswith("MP+")
    assert not list(src.glob("*.png"))


def test_dry_run_changes_nothing(photos: Path, workdir: Path) -> None:
    before = tree(photos)
    done = run_script(
        SCRIPT,
        "--source",
        photos,
        "--mode",
        "move",
        "--strategy",
        "ranges",
        "--dry-run",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    assert tree(photos) == before and not (workdir / "sorted" / "megapixels").exists()
    assert "would be moved" in done.stdout
    assert distribution(done.stdout) == ["0.0-2.0MP", "2.0-5.0MP", "20.0MP+"]


def test_rerun_and_a_clash_with_a_different_file(photos: Path, workdir: Path) -> None:
    out = workdir / "sorted" / "megapixels"
    stranger = make_image(out / "1.0-3.0MP" / "one.png", (10, 10)).read_bytes()
    args = ("--source", photos, "--mode", "copy", "--strategy", "very-coarse", "--yes")
    first = run_script(SCRIPT, *args, cwd=workdir)
    assert first.returncode == 0, first.stderr
    assert (out / "1.0-3.0MP" / "one.png").read_bytes() == stranger, "never overwritten"
    assert (out / "1.0-3.0MP" / "one_1.png").read_bytes() == (photos / "one.png").read_bytes()
    snapshot = tree(photos)
    again = run_script(SCRIPT, *args, "--recursive", cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert tree(photos) == snapshot, "no _1 copies of what is already sorted"
    assert re.search(r"already in place.*\b8\b", again.stdout)


def test_move_into_the_source_itself_skips_existing_bucket_folders(
    photos: Path, workdir: Path
) -> None:
    args = ("--source", photos, "--dest", photos, "--mode", "move", "--strategy", "coarse")
    done = run_script(SCRIPT, *args, "--recursive", "--yes", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert (photos / "10.0MP+" / "big.png").exists()
    snapshot = tree(photos)
    again = run_script(SCRIPT, *args, "--recursive", "--yes", cwd=workdir)
    assert again.returncode == 0 and tree(photos) == snapshot
    assert {p.name for p in photos.iterdir() if p.is_file()} == {"broken.png", "fake.jpg"}


def test_wrong_flags_and_missing_answers_exit_2(photos: Path, workdir: Path) -> None:
    before = tree(photos)
    for args, word in [
        (("--mode", "copy", "--strategy", "custom:3,x", "--yes"), "--strategy"),
        (("--mode", "copy", "--strategy", "quantiles:1", "--yes"), "--strategy"),
        (("--mode", "copy", "--strategy", "fine", "--yes"), "--strategy"),
        (("--mode", "copy", "--strategy", "8", "--yes"), "--strategy"),
        (("--mode", "copy", "--workers", "0", "--yes"), "--workers"),
        (("--mode", "copy", "--strategy", "ranges"), "--yes"),
    ]:
        done = run_script(SCRIPT, "--source", photos, *args, cwd=workdir)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert word in done.stderr
    assert tree(photos) == before


def test_without_a_terminal_the_default_strategy_is_ranges(photos: Path, workdir: Path) -> None:
    done = run_script(SCRIPT, "--source", photos, "--mode", "copy", "--yes", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert (workdir / "sorted" / "megapixels" / "20.0MP+" / "big.png").exists()


def test_prompts_in_the_original_order_on_a_terminal(photos: Path, workdir: Path) -> None:
    out = workdir / "elsewhere" / "by mp"
    child = spawn(SCRIPT, cwd=workdir)
    child.expect("Folder with images")
    child.sendline(f'"{photos}"')
    child.expect("Output folder:")
    child.expect(r"1\) .*sorted/megapixels")
    child.expect(r"2\) Another path")
    child.sendline("2")
    child.expect("Output folder path")
    child.sendline(f'"{out}"')
    child.expect("Mode:")
    child.expect(r"1\) Copy")
    child.expect(r"2\) Move")
    child.sendline("1")
    child.expect("Sorting strategy:")
    for number, word in enumerate(
        ["Exact", "Medium", "Ranges", "Coarse", "Very coarse", "Quantiles", "Custom"], 1
    ):
        child.expect(rf"{number}\) {word}")
    child.sendline("8")
    child.expect("Invalid choice, try again")
    child.sendline("7")
    child.expect("Boundaries in MP")
    child.sendline("2,abc")
    child.expect("Try again")
    child.sendline("2, 0.5")
    child.expect(r"Mode:\s+copy")
    child.expect(r"Strategy:\s+custom:2, 0.5")
    child.expect(r"Start sorting\?\S* \[y/N\]")
    child.sendline("Y")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert (out / "0.5-2.0MP" / "one.png").exists()
    assert (out / "under-0.5MP" / "tiny.png").exists()
    assert (out / "2.0MP+" / "big.png").exists()
    assert (photos / "one.png").exists(), "1 = copy: the originals stay"
