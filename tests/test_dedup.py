"""Step 6 (6_duplicate_finder.py) driven as a user runs it: real folders, real files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.conftest import run_on_terminal, run_script
from yandex_reverse.dedup import index
from yandex_reverse.dedup.hashing import perceptual_hash

SCRIPT = "6_duplicate_finder.py"
IMAGEHASH = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "ahash": imagehash.average_hash,
    "whash": imagehash.whash,
}


def photo(seed: int, width: int = 640, height: int = 480) -> Image.Image:
    """A photo-like picture: smooth random shapes plus grain; each seed looks different."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((width, height), Image.BICUBIC), float)
    grain = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def save_rotated_with_exif(image: Image.Image, path: Path) -> None:
    """Stored sideways with EXIF orientation 6: displays like ``image``."""
    exif = Image.Exif()
    exif[0x0112] = 6
    image.transpose(Image.Transpose.ROTATE_90).save(path, quality=92, exif=exif)


@pytest.fixture
def photos(workdir: Path) -> Path:
    """A folder with known duplicates of every kind, nested, plus broken files."""
    root = workdir / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "nested" / "deep").mkdir(parents=True)
    a = photo(1)
    a.save(root / "a.jpg", quality=92)
    shutil.copy(root / "a.jpg", root / "sub" / "a_copy.jpg")  # byte copy
    (root / "sub" / "a_copy.txt").write_text("page url", encoding="utf-8")  # sidecar
    a.save(root / "a_reenc.jpg", quality=55)  # re-encoded
    a.resize((320, 240), Image.LANCZOS).save(root / "a_small.jpg", quality=90)  # resized
    a.save(root / "nested" / "a.png")  # converted
    save_rotated_with_exif(a, root / "a_rot.jpg")  # EXIF-rotated
    b = photo(2)
    b.save(root / "b.jpg", quality=90)
    shutil.copy(root / "b.jpg", root / "nested" / "deep" / "b_copy.jpg")
    photo(3).save(root / "c.jpg", quality=90)  # distinct
    photo(4, 480, 640).save(root / "d.jpg", quality=90)  # distinct
    (root / "broken.jpg").write_bytes((root / "c.jpg").read_bytes()[:2500])  # truncated
    (root / "garbage.jpg").write_bytes(b"<html>not an image</html>")
    return root


def files_under(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def groups_of(report: dict) -> set[frozenset[str]]:
    return {
        frozenset([g["kept"]["path"], *(d["path"] for d in g["duplicates"])])
        for g in report["groups"]
    }


def run(cwd: Path, *args, **kw):
    return run_script(SCRIPT, *args, "--max-workers", "2", cwd=cwd, **kw)


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


A_FAMILY = {"a.jpg", "sub/a_copy.jpg", "a_reenc.jpg", "a_small.jpg", "nested/a.png", "a_rot.jpg"}


def test_exact_mode_groups_byte_copies_and_dry_run_changes_nothing(photos: Path, workdir: Path):
    before = files_under(photos)
    done = run(workdir, photos, "--mode", "exact", "--dry-run", "--report", "r.json")
    assert done.returncode == 0, done.stderr
    report = load(workdir / "r.json")
    assert groups_of(report) == {
        frozenset({"a.jpg", "sub/a_copy.jpg"}),
        frozenset({"b.jpg", "nested/deep/b_copy.jpg"}),
    }
    kept = {g["kept"]["path"] for g in report["groups"]}
    assert kept == {"a.jpg", "b.jpg"}  # equal files: the shortest path stays
    assert files_under(photos) == before
    # true counts and bytes, not the original's "0 found"
    duplicates = [d for g in report["groups"] for d in g["duplicates"]]
    assert len(duplicates) == 2
    freed = sum(d["bytes"] for d in duplicates)
    assert freed == (photos / "a.jpg").stat().st_size + (photos / "b.jpg").stat().st_size
    # Without a terminal the summary is plain aligned lines (no rich table).
    row = next(line for line in done.stdout.splitlines() if line.split()[:1] == ["duplicates"])
    assert row.split() == ["duplicates", "2"]


def test_similar_mode_finds_reencoded_resized_png_and_rotated_copies(photos: Path, workdir: Path):
    done = run(
        workdir, photos, "--mode", "similar", "--threshold", "10", "--dry-run", "--report", "r.json"
    )
    assert done.returncode == 0, done.stderr
    report = load(workdir / "r.json")
    assert groups_of(report) == {
        frozenset(A_FAMILY),
        frozenset({"b.jpg", "nested/deep/b_copy.jpg"}),
    }
    a_group = next(g for g in report["groups"] if "a.jpg" in groups_of({"groups": [g]}).pop())
    assert a_group["kept"]["path"] == "nested/a.png"  # same resolution: the largest file stays
    assert all(0 <= d["distance_to_kept"] <= 10 for d in a_group["duplicates"])
    unreadable = {u["path"]: u["reason"] for u in report["unreadable"]}
    assert set(unreadable) == {"broken.jpg", "garbage.jpg"}
    assert "truncated" in unreadable["broken.jpg"]
    assert "Traceback" not in done.stderr


def test_near_is_the_originals_name_for_similar_and_both_marks_exact_members(
    photos: Path, workdir: Path
):
    run(workdir, photos, "--mode", "near", "--dry-run", "--report", "near.json", check=True)
    run(workdir, photos, "--mode", "both", "--dry-run", "--report", "both.json", check=True)
    near, both = load(workdir / "near.json"), load(workdir / "both.json")
    assert (
        groups_of(near)
        == groups_of(both)
        == {
            frozenset(A_FAMILY),
            frozenset({"b.jpg", "nested/deep/b_copy.jpg"}),
        }
    )
    b_group = next(g for g in both["groups"] if g["kept"]["path"] == "b.jpg")
    assert b_group["kind"] == "exact"
    assert [d["match"] for d in b_group["duplicates"]] == ["exact"]


def test_second_run_reuses_cached_hashes_and_rehashes_changed_files(photos: Path, workdir: Path):
    run(workdir, photos, "--mode", "similar", "--dry-run", "--report", "1.json", check=True)
    assert load(workdir / "1.json")["hashing"] == {"hashed": 12, "from_cache": 0}
    assert (photos / ".dedup_cache.sqlite").is_file()
    photo(5).save(photos / "c.jpg", quality=80)  # changed content
    run(workdir, photos, "--mode", "similar", "--dry-run", "--report", "2.json", check=True)
    second = load(workdir / "2.json")
    assert second["hashing"] == {"hashed": 1, "from_cache": 11}
    assert groups_of(second) == groups_of(load(workdir / "1.json"))


def test_filename_mode_keeps_the_best_variant_of_each_image_id(workdir: Path):
    root = workdir / "yandex_images"
    root.mkdir()
    big, small = photo(7, 800, 600), photo(7, 200, 150)
    big.save(root / "abc123_preview_800x600_1a2b3c4d.jpg")
    big.save(root / "abc123_dups_800x600_5e6f7a8b.jpg")
    small.save(root / "abc123_thumb_200x150_9c0d1e2f.jpg")
    photo(8).save(root / "xyz789_full_640x480_00aa11bb.jpg")
    photo(9).save(root / "noprefix.jpg")
    done = run(workdir, root, "--mode", "filename", "--dry-run", "--report", "r.json")
    assert done.returncode == 0, done.stderr
    report = load(workdir / "r.json")
    assert len(report["groups"]) == 1
    group = report["groups"][0]
    assert group["kept"]["path"] == "abc123_preview_800x600_1a2b3c4d.jpg"
    assert {d["path"] for d in group["duplicates"]} == {
        "abc123_dups_800x600_5e6f7a8b.jpg",
        "abc123_thumb_200x150_9c0d1e2f.jpg",
    }


def test_without_a_terminal_removal_needs_yes(photos: Path, workdir: Path):
    before = files_under(photos)
    done = run(workdir, photos, "--mode", "exact")
    assert done.returncode == 2
    assert "--yes" in done.stderr
    assert files_under(photos) == before
    done = run(workdir, photos, "--mode", "exact", "--interactive")
    assert done.returncode == 2 and "--interactive" in done.stderr


def test_quarantine_keeps_relative_paths_and_undo_puts_everything_back(photos: Path, workdir: Path):
    before = files_under(photos)
    done = run(workdir, photos, "--mode", "both", "--yes")
    assert done.returncode == 0, done.stderr
    reports = sorted(workdir.glob("photos.dedup-*.json"))  # default: next to the folder
    assert len(reports) == 1
    report = load(reports[0])
    assert report["counts"]["moved"] == len(A_FAMILY) - 1 + 1
    quarantine = photos / "_duplicates"
    assert (quarantine / "sub" / "a_copy.jpg").read_bytes() == before["sub/a_copy.jpg"]
    assert (quarantine / "sub" / "a_copy.txt").read_text(encoding="utf-8") == "page url"
    assert (quarantine / "nested" / "deep" / "b_copy.jpg").is_file()
    left = files_under(photos)
    assert "nested/a.png" in left and "b.jpg" in left  # the kept copies
    assert not (photos / "sub" / "a_copy.txt").exists()  # the sidecar followed its image
    # the quarantine is not scanned again: a re-run finds nothing to do
    again = run(workdir, photos, "--mode", "both", "--yes", "--report", "again.json")
    assert again.returncode == 0 and load(workdir / "again.json")["groups"] == []
    undo = run_script(SCRIPT, "--undo", reports[0], cwd=workdir)
    assert undo.returncode == 0, undo.stderr
    assert files_under(photos) == before
    assert not quarantine.exists()
    assert run_script(SCRIPT, "--undo", reports[0], cwd=workdir).returncode == 0  # re-runnable
    assert files_under(photos) == before


def test_delete_never_removes_the_last_copy(photos: Path, workdir: Path):
    done = run(
        workdir, photos, "--mode", "similar", "--action", "delete", "--yes", "--report", "r.json"
    )
    assert done.returncode == 0, done.stderr
    report = load(workdir / "r.json")
    left = files_under(photos)
    for group in report["groups"]:
        assert group["kept"]["path"] in left
        assert not any(d["path"] in left for d in group["duplicates"])
    assert {"c.jpg", "d.jpg", "broken.jpg", "garbage.jpg"} <= set(left)
    assert not (photos / "_duplicates").exists()
    assert report["counts"]["deleted"] == len(A_FAMILY) - 1 + 1


def test_hard_links_and_symlinks_are_counted_once(photos: Path, workdir: Path):
    os.link(photos / "c.jpg", photos / "c_link.jpg")
    os.symlink(photos / "d.jpg", photos / "sub" / "d_symlink.jpg")
    run(workdir, photos, "--mode", "exact", "--dry-run", "--report", "r.json", check=True)
    report = load(workdir / "r.json")
    assert report["hard_links"] == [
        {"path": "c_link.jpg", "same_file_as": "c.jpg"},
        {"path": "sub/d_symlink.jpg", "same_file_as": "d.jpg"},
    ]
    assert all("c.jpg" not in g for g in groups_of(report))


def test_keep_newest_and_no_recursive(photos: Path, workdir: Path):
    os.utime(photos / "sub" / "a_copy.jpg", (2_000_000_000, 2_000_000_000))
    run(
        workdir,
        photos,
        "--mode",
        "exact",
        "--keep",
        "newest",
        "--dry-run",
        "--report",
        "r.json",
        check=True,
    )
    kept = {g["kept"]["path"] for g in load(workdir / "r.json")["groups"]}
    assert "sub/a_copy.jpg" in kept
    run(
        workdir,
        photos,
        "--mode",
        "exact",
        "--no-recursive",
        "--dry-run",
        "--report",
        "n.json",
        check=True,
    )
    assert load(workdir / "n.json")["groups"] == []


@pytest.mark.parametrize("method", sorted(IMAGEHASH))
def test_hashes_equal_imagehash_and_draft_decode_stays_close(tmp_path: Path, method: str):
    """Full decode: imagehash's exact value. JPEG draft decode: within a few bits."""
    image = photo(11, 1600, 1200)
    png, jpg, rotated = tmp_path / "p.png", tmp_path / "p.jpg", tmp_path / "r.jpg"
    image.save(png)
    image.save(jpg, quality=90)
    save_rotated_with_exif(image, rotated)
    for path in (png, jpg, rotated):
        expected = str(IMAGEHASH[method](ImageOps.exif_transpose(Image.open(path))))
        value, width, height, error = perceptual_hash(str(path), method, 8, False)
        assert error is None and value is not None
        assert value.hex() == expected
        assert (width, height) == (1600, 1200)
        drafted = perceptual_hash(str(path), method, 8, True)[0]
        assert drafted is not None
        flipped = bin(int.from_bytes(drafted, "big") ^ int.from_bytes(value, "big")).count("1")
        assert flipped <= 4, (method, path.name, flipped)
    # 16x16 hashes are 256 bits
    value = perceptual_hash(str(png), method, 16, False)[0]
    assert value is not None and value.hex() == str(
        IMAGEHASH[method](Image.open(png), hash_size=16)
    )


@pytest.mark.parametrize(
    ("nbits", "threshold", "n"), [(64, 12, 1500), (64, 3, 800), (256, 40, 300)]
)
def test_hash_index_finds_exactly_the_pairs_brute_force_finds(nbits: int, threshold: int, n: int):
    rng = np.random.default_rng(nbits + threshold)
    raw = rng.integers(0, 256, (n, nbits // 8), dtype=np.uint8)
    # planted near copies at distances 0..threshold+2, and exact repeats
    for k in range(60):
        raw[n - 1 - k] = raw[k]
        flips = rng.choice(nbits, size=k % (threshold + 3), replace=False)
        for bit in flips:
            raw[n - 1 - k, bit // 8] ^= 1 << (bit % 8)
    raw[100] = raw[101] = raw[102]
    packed = index.pack([row.tobytes() for row in raw])
    i, j, d = index.close_pairs(packed, threshold, nbits=nbits)
    bits = np.unpackbits(raw, axis=1).astype(np.int16)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    bi, bj = np.nonzero(np.triu(dist <= threshold, 1))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == set(
        zip(bi.tolist(), bj.tolist(), strict=True)
    )
    assert (d == dist[i, j]).all()
    assert len(i) >= 40


def on_terminal(cwd: Path, answers: str, *args) -> tuple[int, str]:
    done = run_on_terminal(SCRIPT, *args, cwd=cwd, answers=answers)
    return done.returncode, done.stdout + done.stderr


def test_on_a_terminal_the_plan_is_shown_and_asked_once(photos: Path, workdir: Path):
    before = files_under(photos)
    code, out = on_terminal(workdir, "n\n", photos, "--mode", "exact", "--report", "no.json")
    assert code == 0, out
    assert out.count("Move 2 duplicate files") == 1
    assert "sub/a_copy.jpg" in out  # the plan
    assert files_under(photos) == before
    code, out = on_terminal(workdir, "y\n", photos, "--mode", "exact", "--report", "yes.json")
    assert code == 0, out
    assert load(workdir / "yes.json")["counts"]["moved"] == 2


def test_interactive_asks_for_each_file(photos: Path, workdir: Path):
    code, out = on_terminal(
        workdir, "y\nn\n", photos, "--mode", "exact", "--interactive", "--report", "r.json"
    )
    assert code == 0, out
    assert out.count("(kept: ") == 2
    report = load(workdir / "r.json")
    assert report["counts"] == {"moved": 1, "deleted": 0, "skipped": 1, "failed": 0}
    assert report["skipped"][0]["reason"] == "declined"


def test_impossible_hash_settings_are_refused_and_other_methods_work(photos: Path, workdir: Path):
    bad = run(
        workdir,
        photos,
        "--mode",
        "similar",
        "--hash-method",
        "whash",
        "--hash-size",
        "6",
        "--dry-run",
    )
    assert bad.returncode == 2 and "--hash-size" in bad.stderr
    bad = run(workdir, photos, "--mode", "similar", "--threshold", "64", "--dry-run")
    assert bad.returncode == 2 and "--threshold" in bad.stderr
    done = run(
        workdir, photos, "--mode", "similar", "--hash-method", "dhash", "--hash-size", "16",
        "--threshold", "40", "--dry-run", "--report", "r.json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert frozenset({"b.jpg", "nested/deep/b_copy.jpg"}) in groups_of(load(workdir / "r.json"))


@pytest.mark.parametrize("count", [3, 70])  # 70: more than one group keeps open at once
def test_identical_files_compares_first_block_then_the_rest(tmp_path: Path, count: int) -> None:
    from yandex_reverse.dedup.hashing import HEAD, identical_files

    body = bytes(range(256)) * 40  # 10,240 bytes: a first block and a rest
    paths = []
    for n in range(count):
        data = bytearray(body)
        if n % 3 == 1:
            data[-1] ^= 0xFF  # same first 4 KiB, a different rest
        elif n % 3 == 2:
            data[HEAD - 1] ^= 0xFF  # differs in the last byte of the first block
        path = tmp_path / f"f{n:03d}.bin"
        path.write_bytes(bytes(data))
        paths.append(str(path))
    groups, errors = identical_files(paths, len(body))
    assert errors == []
    want = [[n for n in range(count) if n % 3 == k] for k in range(3)]
    assert sorted(groups) == sorted(g for g in want if len(g) > 1)
    # small files are whole in the first block; an unreadable one is reported, not grouped
    small = [tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"]
    for path in small[:2]:
        path.write_bytes(b"x" * 100)
    groups, errors = identical_files([str(p) for p in small], 100)
    assert groups == [[0, 1]]
    assert [index for index, _exc in errors] == [2]


def test_identical_files_first_blocks_of_one_bucket_still_compared_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """First blocks are bucketed by xxh3_64; a bucket holding different blocks
    (a collision, forced here) must still split them by their bytes. A read
    buffer smaller than the rest reads it in pieces, to the same answer."""
    from yandex_reverse.dedup import hashing

    body = bytes(range(256)) * 40
    paths = []
    for n in range(6):
        data = bytearray(body)
        if n >= 3:
            data[10] ^= 0xFF  # another first block
        if n == 5:
            data[-1] ^= 0xFF  # and another rest
        path = tmp_path / f"f{n}.bin"
        path.write_bytes(bytes(data))
        paths.append(str(path))
    want = [[0, 1, 2], [3, 4]]
    import xxhash  # imported by hashing at the first group that needs it

    monkeypatch.setattr(xxhash, "xxh3_64_intdigest", lambda _data: 0)
    assert sorted(hashing.identical_files(paths, len(body))[0]) == want
    monkeypatch.undo()
    rest = len(body) - hashing.HEAD
    for size in (1, 7, 4096, rest, len(body), 2 * rest + 1, 2 * rest + 2, 3 * rest):
        groups, errors = hashing.identical_files(paths, len(body), bytearray(size))
        assert (sorted(groups), errors) == (want, []), size


@pytest.mark.parametrize("buffer", [None, 1000, 10**6])
def test_a_pair_is_compared_byte_for_byte_and_a_grown_one_hashed(
    tmp_path: Path, buffer: int | None
) -> None:
    """Two files tied on their first block are compared, not hashed (when both
    rests fit the buffer): equal, different in the last byte, one unreadable,
    and files that grew since the scan (then hashed, as read now)."""
    from yandex_reverse.dedup.hashing import identical_files

    body = bytes(range(256)) * 40
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(body)
    b.write_bytes(body)
    c.write_bytes(body[:-1] + b"!")
    scratch = None if buffer is None else bytearray(buffer)
    assert identical_files([str(a), str(b)], len(body), scratch) == ([[0, 1]], [])
    assert identical_files([str(a), str(c)], len(body), scratch) == ([], [])
    groups, errors = identical_files([str(a), str(tmp_path / "gone")], len(body), scratch)
    assert groups == [] and [i for i, _e in errors] == [1]
    for path in (a, b):
        path.write_bytes(body + b"more")  # grown: both the same again, after the scan's size
    assert identical_files([str(a), str(b)], len(body), scratch) == ([[0, 1]], [])
    b.write_bytes(body + b"else")
    assert identical_files([str(a), str(b)], len(body), scratch) == ([], [])


def test_threaded_gives_every_result_and_raises_a_thread_s_error() -> None:
    from yandex_reverse.dedup.find import _threaded

    assert sorted(_threaded(lambda n: n * n, list(range(50)), 4)) == [n * n for n in range(50)]
    assert list(_threaded(lambda n: -n, [1, 2, 3], 1)) == [-1, -2, -3]

    def boom(n: int) -> int:
        if n == 7:
            raise OSError("disk gone")
        return n

    with pytest.raises(OSError, match="disk gone"):
        list(_threaded(boom, list(range(20)), 3))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_forked_gives_every_result_in_place_and_redoes_a_failed_child_s_share() -> None:
    from yandex_reverse.dedup.find import _forked

    items = list(range(23))
    got = dict(_forked(lambda n: [n, [n * n], [(n, str(n))]], items, 3))
    assert got == {n: [n, [n * n], [(n, str(n))]] for n in items}
    assert dict(_forked(lambda n: -n, [1, 2], 1)) == {0: -1, 1: -2}

    parent = os.getpid()

    def child_dies(n: int) -> int:
        if os.getpid() != parent and n == 4:
            os._exit(3)  # a child killed mid-way: its share is done again here
        return n + 1

    assert dict(_forked(child_dies, items, 2)) == {i: n + 1 for i, n in enumerate(items)}

    def boom(n: int) -> int:
        if n == 6:
            raise OSError("disk gone")
        return n

    with pytest.raises(OSError, match="disk gone"):  # raised where it happens here
        dict(_forked(boom, items, 2))


def test_exact_groups_on_two_processes_equal_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enough tied files that the comparing is shared with a forked process: the
    same groups, in the same order, and the same unreadable files, as on one."""
    from yandex_reverse.dedup import find

    monkeypatch.setattr(find, "_FORK_WORK", 0)  # these 2 MB would be read here alone

    root = tmp_path / "many"
    root.mkdir()
    rng = np.random.default_rng(5)
    for n in range(300):
        size = 5000 + n % 40  # 40 sizes: every file shares its size
        body = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        (root / f"f{n:03d}.jpg").write_bytes(body)
        if n % 3 == 0:
            (root / f"c{n:03d}.jpg").write_bytes(body)
        if n % 7 == 0:  # the same first block, another rest
            (root / f"h{n:03d}.jpg").write_bytes(body[:4096] + bytes(size - 4096))
    unreadable = root / "f001.jpg"
    unreadable.chmod(0)
    try:
        answers = []
        for workers in (1, 2, 3):
            found = find.scan(root, recursive=True, exclude=())
            groups = find.exact_groups(found, workers)
            answers.append(([[e.rel for e in g] for g in groups], sorted(found.unreadable)))
    finally:
        unreadable.chmod(0o644)
    assert len(answers[0][0]) == 100
    assert answers[0] == answers[1] == answers[2]
    if os.geteuid() != 0:  # root reads it anyway
        assert [rel for rel, _reason in answers[0][1]] == ["f001.jpg"]


def test_report_text_is_what_json_writes(tmp_path: Path) -> None:
    """The report's groups are written without json; the text must be json's own."""
    from yandex_reverse.dedup import cli, find

    names = ["a.jpg", 'q"uote\\back.jpg', "ё/тест.jpg", "tab\tnl\n.jpg", "bad\udcff.jpg", "🙂.png"]
    entries = [find.Entry(str(tmp_path / n), n, 10 + i, 5, i) for i, n in enumerate(names)]
    entries[1].width, entries[1].height, entries[1].hash = 640, 480, b"\x00\xff" * 4
    groups = [
        find.Group(
            "exact",
            [find.Member(entries[0], "kept", 0), find.Member(entries[1], "exact", 0)],
        ),
        find.Group(
            "similar",
            [find.Member(entries[2], "kept", None)]
            + [
                find.Member(e, "similar", d)
                for e, d in zip(entries[3:], (3, None, 12), strict=True)
            ],
        ),
    ]
    report = {
        "version": 1,
        "folder": str(tmp_path / "ё"),
        "settings": {"recursive": True, "threshold": 12, "x": None},
        "groups": groups,
        "unreadable": [{"path": "b\udcfe", "reason": "r\u2028"}],
        "moves": [{"source": "/a", "sidecars": [["/a.txt", "/q/a.txt", {"ino": 7}]]}],
        "deleted": ("x", "y"),
        "counts": {"moved": 0, "ratio": 0.5, "odd": float("nan"), "big": 10**30, "no": False},
    }
    want = json.dumps(
        {**report, "groups": [cli._group_json(g) for g in groups]}, ensure_ascii=False
    )
    assert cli._report_text(report) == want
    report["groups"] = []
    assert cli._report_text(report) == json.dumps(report, ensure_ascii=False)


def test_report_strings_are_written_as_json_writes_them() -> None:
    """The report's strings are quoted without json's C module: every character
    (controls, quote, backslash, DEL, lone surrogates, separators, astral),
    alone and inside text, as json.dumps(..., ensure_ascii=False) writes it."""
    from yandex_reverse.dedup import cli

    quote = cli._encode_string()
    codes = [*range(0x3000), *range(0xD7F0, 0xE010), 0xFEFF, 0xFFFD, 0xFFFF, 0x1F642, 0x10FFFF]
    for code in codes:
        for text in (chr(code), f"a/{chr(code)}b.jpg", chr(code) * 3):
            assert quote(text) == json.dumps(text, ensure_ascii=False), hex(code)
    assert quote("") == '""'


@pytest.mark.parametrize("columns", [None, "60", "200", "junk"])
def test_help_formatter_wraps_as_argparse_with_shutil(
    columns: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 6's parser finds the terminal width without shutil: the same help text."""
    import argparse

    from yandex_reverse.dedup import cli

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    ours = cli.build_parser()
    theirs = cli.build_parser()
    theirs.formatter_class = argparse.RawDescriptionHelpFormatter
    assert ours.format_help() == theirs.format_help()
    assert ours.formatter_class is not theirs.formatter_class


_LOG_SCRIPT = """
import sys
from pathlib import Path
if sys.argv[2] == "real":
    import logging  # the real logger writes every line
from yandex_reverse import console
console.setup_logging(Path(sys.argv[1]))
console.log.info("folder=%s mode=%s args=%s", Path("/a b"), "exact", {"x": [1]})
console.log.info("mapping %(k)s", {"k": "v"})
console.log.debug("plain %d%%", 5)
console.log.info("no args %s")
quick = "logging" not in sys.modules
console.log.warning("then a warning %s", "w")
console.log.info("and after it")
print(quick)
"""


def test_log_lines_written_without_logging_are_the_lines_logging_writes(tmp_path: Path) -> None:
    """Step 6 writes its settings line without importing logging; the file must
    read as the real handler writes it, before and after logging takes over."""
    import re
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    texts = {}
    for mode in ("quick", "real"):
        log_file = tmp_path / mode / "step.log"
        done = subprocess.run(
            [sys.executable, "-c", _LOG_SCRIPT, str(log_file), mode],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.strip() == str(mode == "quick")
        texts[mode] = log_file.read_text(encoding="utf-8")
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert len(re.findall(stamp, texts["quick"], re.M)) == 6
    assert re.sub(stamp, "", texts["quick"], flags=re.M) == re.sub(
        stamp, "", texts["real"], flags=re.M
    )


@pytest.mark.parametrize(("recursive", "workers"), [(True, 1), (True, 2), (True, 3), (False, 2)])
def test_exact_mode_s_scan_sees_what_the_full_scan_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recursive: bool, workers: int
) -> None:
    """Exact mode's scan (``shared_sizes``: its own walk, entries only for files
    whose size another file has, the lstat calls shared with forked processes)
    against the full scan on a tree with every odd case: the same files
    counted, the same hard links, symlinks, notes and unreadable files, the
    same entries in the same order for every shared size, and the same groups."""
    from yandex_reverse.dedup import find

    monkeypatch.setattr(find, "_FORK_STATS", 1)  # fork even for these few files
    from yandex_reverse.fsutil import OUTPUT_MARKER

    root = tmp_path / "photos"
    for sub in ("b", "a/z", "a/y", "sorted", ".hidden", "marked", "_duplicates", "x.jpg"):
        (root / sub).mkdir(parents=True)
    (root / "marked" / OUTPUT_MARKER).write_text("", encoding="utf-8")
    rng = np.random.default_rng(9)
    bodies = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (9000, 9000, 5000, 77)]
    places = ["b/2.jpg", "a/z/1.JPG", "a/y/3.png", "10.jpg", "9.jpeg", "a/0.webp", "b/1.jpg"]
    for n, rel in enumerate(places):
        (root / rel).write_bytes(bodies[n % len(bodies)])
    (root / "a" / "z" / "copy.jpg").write_bytes(bodies[0])
    with contextlib.suppress(OSError, OverflowError):  # a date after 2262: past 64-bit ns
        os.utime(root / "a" / "z" / "copy.jpg", ns=(0, (1 << 63) + 10**9 * 86_400))
    (root / "unique.jpg").write_bytes(bytes(12345))
    for rel in ("zero.jpg", "a/zero.jpg", "notes.txt", ".dot.jpg", ".hidden/in.jpg"):
        (root / rel).write_bytes(bodies[0] if rel.endswith("in.jpg") else b"")
    for rel in ("sorted/s.jpg", "marked/m.jpg", "_duplicates/d.jpg", "x.jpg/inside.jpg"):
        (root / rel).write_bytes(bodies[0])
    os.link(root / "b" / "2.jpg", root / "a" / "link.jpg")  # before its file in walk order
    os.link(root / "unique.jpg", root / "b" / "unique_link.jpg")
    os.symlink(root / "unique.jpg", root / "b" / "to_unique.jpg")
    os.symlink(root / "10.jpg", root / "a" / "to_shared.jpg")
    os.symlink(tmp_path, root / "a" / "folder_link.jpg")
    os.symlink(tmp_path / "gone.jpg", root / "b" / "dangling.jpg")
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "a" / "pipe.jpg")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(bodies[0])
    os.symlink(outside, root / "0.jpg")
    answers = []
    for shared in (False, True):
        found = find.scan(
            root,
            recursive=recursive,
            exclude=[root / "_duplicates"],
            shared_sizes=shared,
            workers=workers,
        )
        answers.append(found)
    full, lean = answers
    real_links = [rel for rel, _ in full.hard_links if not (root / rel).is_symlink()]
    sizes = [e.size for e in full.entries] + [(root / rel).stat().st_size for rel in real_links]
    want = [e for e in full.entries if sizes.count(e.size) > 1]
    assert [(e.rel, e.name, e.size, e.mtime_ns) for e in lean.entries] == [
        (e.rel, e.name, e.size, e.mtime_ns) for e in want
    ]
    assert [e.order for e in lean.entries] == sorted(e.order for e in lean.entries)
    assert lean.files == full.files == len(full.entries)
    assert (lean.hard_links, lean.unreadable, lean.notes) == (
        full.hard_links,
        full.unreadable,
        full.notes,
    )
    assert [[e.rel for e in g] for g in find.exact_groups(lean, 2)] == [
        [e.rel for e in g] for g in find.exact_groups(full, 1)
    ]
    if recursive:  # the cases are there
        assert full.hard_links[:2] == [
            ("b/2.jpg", "a/link.jpg"),
            ("b/unique_link.jpg", "unique.jpg"),
        ]
        assert ("b/to_unique.jpg", "unique.jpg") in full.hard_links
        assert ("a/to_shared.jpg", "10.jpg") in full.hard_links
        assert len(full.notes) == 2 and len(want) > 6


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_exact_mode_s_scan_redoes_a_failed_child_s_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan's forked lstat share fails in the child: done here, same scan."""
    from yandex_reverse.dedup import find

    root = tmp_path / "photos"
    root.mkdir()
    for n in range(40):
        (root / f"{n:02d}.jpg").write_bytes(bytes(1000 + n % 7))
    monkeypatch.setattr(find, "_FORK_STATS", 1)
    want = find.scan(root, recursive=True, exclude=(), shared_sizes=True, workers=1)
    here, real = os.getpid(), find._lstat_files

    def failing_in_a_child(*args):
        if os.getpid() != here:
            raise OSError("disk gone")
        return real(*args)

    monkeypatch.setattr(find, "_lstat_files", failing_in_a_child)
    got = find.scan(root, recursive=True, exclude=(), shared_sizes=True, workers=3)
    assert [(e.rel, e.size, e.mtime_ns) for e in got.entries] == [
        (e.rel, e.size, e.mtime_ns) for e in want.entries
    ]
    assert got.files == want.files == 40 and len(got.entries) == 40
