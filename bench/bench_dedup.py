"""Step 6 benchmark: similar mode vs imagededup, exact mode vs jdupes, the hash index at 100k.

Data: 2,000 JPEGs of 1-3 MP in bench/_work/dedup/images (made once, reused):
1,500 distinct pictures, 200 byte copies, 150 re-encodes (quality 60-75) and
150 resized copies (50-80 %), so the true groups are known. Each tool runs
on the same folder in this one run; group agreement is checked against the
truth and between the tools. Ours runs as the real script (interpreter start
included); imagededup's import (torch) is left out of its time.

Exact mode also runs on 20,000 files in bench/_work/dedup/many: 18,000
distinct files of 10-120 KB (a JPEG header, then random bytes: neither tool
decodes in exact mode, so the pixels do not matter) and 2,000 byte copies,
spread over 40 folders. jdupes comes from Debian (``make bench`` installs it
when missing and running as root); without it the peer rows say so.

    .venv/bin/python bench/bench_dedup.py [--exact-only [--rounds N]]
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from statistics import median
from typing import TypeVar

import numpy as np

from bench.common import report, work_dir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "6_duplicate_finder.py"
DISTINCT, COPIES, REENCODES, RESIZES = 1500, 200, 150, 150
THRESHOLD = 10  # the seed's example; imagededup's default
SPEC = f"v1-{DISTINCT}-{COPIES}-{REENCODES}-{RESIZES}"
T = TypeVar("T")


def _grain() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(0, 7, (2400, 2400, 3)).astype(np.int16)


_GRAIN: np.ndarray | None = None


def _make(args: tuple[int, str]) -> None:
    """One distinct picture: smooth random colour field + film grain, 1-3 MP."""
    global _GRAIN
    from PIL import Image

    seed, path = args
    if _GRAIN is None:
        _GRAIN = _grain()
    rng = np.random.default_rng(seed)
    mp = rng.uniform(1.0, 3.0)
    ratio = rng.choice([4 / 3, 3 / 2, 3 / 4, 1.0, 16 / 9])
    width = int((mp * 1e6 * ratio) ** 0.5)
    height = int(mp * 1e6 / width)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    smooth = np.asarray(base.resize((width, height), Image.BICUBIC), dtype=np.int16)
    y, x = rng.integers(0, 2400 - height + 1), rng.integers(0, 2400 - width + 1)
    pixels = np.clip(smooth + _GRAIN[y : y + height, x : x + width], 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=int(rng.integers(85, 95)))


def _derive(args: tuple[str, str, str, int]) -> None:
    from PIL import Image

    kind, src, dst, seed = args
    rng = np.random.default_rng(seed)
    if kind == "copy":
        shutil.copyfile(src, dst)
        return
    with Image.open(src) as image:
        if kind == "reencode":
            image.save(dst, quality=int(rng.integers(60, 76)))
        else:
            scale = rng.uniform(0.5, 0.8)
            size = (int(image.width * scale), int(image.height * scale))
            image.resize(size, Image.LANCZOS).save(dst, quality=88)


def build_dataset(root: Path) -> dict[str, int]:
    """The folder and its truth: file name -> group number."""
    manifest = root / "truth.json"
    images = root / "images"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        if data.get("spec") == SPEC and len(list(images.rglob("*.jpg"))) == len(data["truth"]):
            return data["truth"]
    shutil.rmtree(images, ignore_errors=True)
    for sub in ("a", "b", "c/d"):
        (images / sub).mkdir(parents=True, exist_ok=True)
    subs = ["a", "b", "c/d", "."]
    truth: dict[str, int] = {}
    originals = []
    for n in range(DISTINCT):
        rel = f"{subs[n % 4]}/img{n:05d}.jpg".removeprefix("./")
        originals.append((n, str(images / rel)))
        truth[rel] = n
    print(
        f"generating {len(truth) + COPIES + REENCODES + RESIZES} JPEGs in {images} ...", flush=True
    )
    with ProcessPoolExecutor() as pool:
        list(pool.map(_make, originals, chunksize=8))
        rng = np.random.default_rng(1)
        picks = rng.choice(DISTINCT, COPIES + REENCODES + RESIZES, replace=False)
        jobs = []
        for k, n in enumerate(picks):
            kind = "copy" if k < COPIES else "reencode" if k < COPIES + REENCODES else "resize"
            rel = f"{subs[(n + 1) % 4]}/dup{k:04d}_{kind}.jpg".removeprefix("./")
            jobs.append((kind, originals[n][1], str(images / rel), k))
            truth[rel] = int(n)
        list(pool.map(_derive, jobs, chunksize=8))
    manifest.write_text(json.dumps({"spec": SPEC, "truth": truth}))
    return truth


def truth_groups(truth: dict[str, int], kinds: tuple[str, ...]) -> set[frozenset[str]]:
    by: dict[int, set[str]] = {}
    for rel, n in truth.items():
        derived = rel.startswith("dup") or "/dup" in rel
        if derived and not any(rel.endswith(f"_{k}.jpg") for k in kinds):
            continue
        by.setdefault(n, set()).add(rel)
    return {frozenset(g) for g in by.values() if len(g) > 1}


def components(pairs: list[tuple[str, str]]) -> set[frozenset[str]]:
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[root(a)] = root(b)
    out: dict[str, set[str]] = {}
    for x in parent:
        out.setdefault(root(x), set()).add(x)
    return {frozenset(g) for g in out.values() if len(g) > 1}


def ours(images: Path, mode: str, *extra: str) -> tuple[float, set[frozenset[str]]]:
    out = images.parent / f"ours_{mode}.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        str(images),
        "--mode",
        mode,
        "--dry-run",
        "--report",
        str(out),
    ]
    start = time.perf_counter()
    subprocess.run(
        [*cmd, *extra],
        check=True,
        cwd=images.parent,  # the log file lands in the work folder
        stdout=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )
    seconds = time.perf_counter() - start
    data = json.loads(out.read_text())
    groups = {
        frozenset([g["kept"]["path"], *(d["path"] for d in g["duplicates"])])
        for g in data["groups"]
    }
    return seconds, groups


_IMAGEDEDUP = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from imagededup.methods import PHash
hasher = PHash(verbose=False)
start = time.perf_counter()
found = hasher.find_duplicates(image_dir=sys.argv[1], max_distance_threshold=int(sys.argv[2]), recursive=True)
print(json.dumps({"seconds": time.perf_counter() - start, "dups": found}))
"""


def imagededup(images: Path) -> tuple[float, set[frozenset[str]]]:
    done = subprocess.run(
        [sys.executable, "-c", _IMAGEDEDUP, str(images), str(THRESHOLD)],
        check=True,
        capture_output=True,
        text=True,
    )
    data = json.loads(done.stdout.strip().splitlines()[-1])
    pairs = [(a, b) for a, dups in data["dups"].items() for b in dups]
    return data["seconds"], components(pairs)


def per_image(images: Path, count: int = 200) -> tuple[float, float]:
    """Seconds per picture for our hash and imagededup's, alternating file by file in
    one process: the load of a shared machine hits both alike."""
    import warnings

    from imagededup.methods import PHash

    from yandex_reverse.dedup.hashing import perceptual_hash

    warnings.filterwarnings("ignore")
    hasher = PHash(verbose=False)
    files = sorted(images.rglob("img*.jpg"))[:count]
    ours_s = peer_s = 0.0
    for path in files:
        start = time.perf_counter()
        perceptual_hash(str(path), "phash", 8, True)
        middle = time.perf_counter()
        hasher.encode_image(image_file=str(path))
        ours_s += middle - start
        peer_s += time.perf_counter() - middle
    return ours_s / len(files), peer_s / len(files)


def build_many(root: Path, count: int = 20_000, copies: int = 2_000) -> set[frozenset[str]]:
    """The 20,000-file folder (made once) and its true exact groups."""
    import random

    folder = root / "many"
    manifest = root / "many.json"
    spec = f"v1-{count}-{copies}"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        if data.get("spec") == spec and sum(1 for _ in folder.rglob("*.jpg")) == count:
            return {frozenset(g) for g in data["groups"]}
    shutil.rmtree(folder, ignore_errors=True)
    print(f"generating {count} files in {folder} ...", flush=True)
    rng = random.Random(20_000)
    names = []
    for n in range(count - copies):
        rel = f"d{n % 40:02d}/f{n:05d}.jpg"
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        body = rng.randbytes(rng.randint(10_000, 120_000))
        path.write_bytes(b"\xff\xd8\xff\xe0" + body)
        names.append(rel)
    groups = []
    for k, rel in enumerate(rng.sample(names, copies)):
        copy = f"d{(k * 7) % 40:02d}/copy{k:05d}.jpg"
        shutil.copyfile(folder / rel, folder / copy)
        groups.append([rel, copy])
    manifest.write_text(json.dumps({"spec": spec, "groups": groups}))
    return {frozenset(g) for g in groups}


def have_jdupes() -> bool:
    if shutil.which("jdupes"):
        return True
    print(
        "jdupes: not installed, its rows are skipped (make bench installs it as root: "
        "apt-get install -y jdupes)"
    )
    return False


def compiled() -> None:
    """Bytecode for the package, as an installed one has (pip compiles at install).

    Without it, an environment with ``PYTHONDONTWRITEBYTECODE`` (this
    machine's) compiles some forty modules from source at every start of
    the script: a cost no installed copy pays, and jdupes, a binary, never.
    """
    import compileall

    compileall.compile_dir(REPO / "yandex_reverse", quiet=1)


def warm(folder: Path) -> None:
    """The same warm page cache for every tool."""
    for path in folder.rglob("*.jpg"):
        path.read_bytes()


def exact_rows(images: Path, want: set[frozenset[str]], label: str, rounds: int) -> None:
    """Whole script against ``jdupes -r``, alternating, best of ``rounds``.

    Both are whole commands on the same warm folder, both only report
    (ours ``--dry-run`` with its JSON report, jdupes its list of groups),
    and each answer is checked against the truth.
    """
    compiled()
    warm(images)
    n = sum(1 for _ in images.rglob("*.jpg"))
    peer = have_jdupes()
    runs, cpu_ours, cpu_peer = [], [], []
    for _ in range(rounds):
        mine, cpu = with_cpu(lambda: ours(images, "exact"))
        cpu_ours.append(cpu)
        theirs = None
        if peer:
            theirs, cpu = with_cpu(lambda: jdupes(images))
            cpu_peer.append(cpu)
        runs.append((mine, theirs))
    t_ours, g_ours = min(r[0] for r in runs)
    print(f"exact, {label} (best of {rounds}, alternating; load {os.getloadavg()[0]:.1f}):")
    print("  " + agree("ours", g_ours, want))
    if peer:
        t_peer, g_peer = min(r[1] for r in runs if r[1])
        print(
            f"  ours {t_ours:.3f} s ({n / t_ours:.0f} files/s); jdupes {t_peer:.3f} s ({n / t_peer:.0f} files/s)"
        )
        print(
            f"  CPU, median of {rounds} (all processes): ours {median(cpu_ours):.3f} s, "
            f"jdupes {median(cpu_peer):.3f} s"
        )
        print("  " + agree("jdupes", g_peer, want))
        report(
            "dedup",
            f"exact mode, whole script, {label}",
            "files/s",
            n / t_ours,
            "jdupes -r",
            n / t_peer,
            aim=1.0,
            cpu_s=median(cpu_ours),
            peer_cpu_s=median(cpu_peer),
        )
    else:
        print(f"  ours {t_ours:.2f} s ({n / t_ours:.0f} files/s)")
        report(
            "dedup",
            f"exact mode, whole script, {label}",
            "files/s",
            n / t_ours,
            "jdupes -r",
            None,
            aim=1.0,
            skipped="jdupes is not installed (make bench installs it as root: apt-get install jdupes)",
        )


def with_cpu(run: Callable[[], T]) -> tuple[T, float]:
    """``run()`` and the CPU seconds (user + system) of the processes it ran and
    waited for: on a shared machine, a steadier figure than the wall clock."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    value = run()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return value, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def jdupes(images: Path) -> tuple[float, set[frozenset[str]]]:
    start = time.perf_counter()
    done = subprocess.run(
        ["jdupes", "-r", "-q", str(images)], capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - start
    groups, current = set(), []
    for line in [*done.stdout.splitlines(), ""]:
        if line.strip():
            current.append(Path(line).relative_to(images).as_posix())
        elif current:
            groups.add(frozenset(current))
            current = []
    return seconds, groups


def agree(name: str, got: set[frozenset[str]], want: set[frozenset[str]]) -> str:
    same = len(got & want)
    return (
        f"{name}: {len(got)} groups, {same}/{len(want)} equal to the truth, {len(got - want)} other"
    )


def bench_index() -> None:
    from yandex_reverse.dedup import index

    rng = np.random.default_rng(7)
    raw = rng.integers(0, 2**63, size=(100_000, 1), dtype=np.int64)
    raw[-1000:] = raw[:1000] ^ rng.integers(0, 2**12, size=(1000, 1))  # planted near copies
    packed = raw.view(np.uint64)
    for threshold in (10, 12):
        start = time.perf_counter()
        i, _j, _d = index.close_pairs(packed, threshold, nbits=64)
        seconds = time.perf_counter() - start
        print(
            f"index: 100,000 random 64-bit hashes, threshold {threshold}: {seconds:.2f} s, {len(i)} pairs"
        )
        report("dedup", f"hash index, 100k hashes, t={threshold}", "hashes/s", 100_000 / seconds)


def exact_only(root: Path, images: Path, truth: dict[str, int]) -> int:
    """``bench_dedup.py --exact-only [--rounds N]``: the two exact rows alone (a
    minute, not ten); N rounds each (default 5 and 3)."""
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 0
    exact_rows(images, truth_groups(truth, ("copy",)), f"{len(truth):,} JPEGs", rounds or 5)
    many = build_many(root)
    exact_rows(root / "many", many, "20,000 files", rounds or 3)
    return 0


def main() -> int:
    root = work_dir("dedup")
    truth = build_dataset(root)
    images = root / "images"
    n = len(truth)
    for cache in images.rglob(".dedup_cache.sqlite*"):
        cache.unlink()
    warm(images)  # the page cache, for every tool alike

    if "--exact-only" in sys.argv:
        return exact_only(root, images, truth)
    # alternating rounds, best of each: the machine is shared and its load swings
    rounds = [
        (ours(images, "similar", "--threshold", str(THRESHOLD), "--no-cache"), imagededup(images))
        for _ in range(2)
    ]
    t_ours, g_ours = min(r[0] for r in rounds)
    t_peer, g_peer = min(r[1] for r in rounds)
    want = truth_groups(truth, ("copy", "reencode", "resize"))
    print(f"similar, {n} JPEGs, phash, threshold {THRESHOLD} (best of 2 alternating rounds):")
    print(
        f"  ours {t_ours:.1f} s ({n / t_ours:.0f} img/s); imagededup {t_peer:.1f} s ({n / t_peer:.0f} img/s)"
    )
    print("  " + agree("ours", g_ours, want))
    print("  " + agree("imagededup", g_peer, want))
    print(f"  ours and imagededup agree on {len(g_ours & g_peer)} of {len(g_ours | g_peer)} groups")
    report("dedup", "similar mode (phash)", "images/s", n / t_ours, "imagededup", n / t_peer)

    t_ours, t_peer = per_image(images)
    print(
        f"  per picture, one process, interleaved: ours {t_ours * 1000:.1f} ms, imagededup {t_peer * 1000:.1f} ms"
    )
    report(
        "dedup", "phash per picture, interleaved", "images/s", 1 / t_ours, "imagededup", 1 / t_peer
    )

    ours(images, "similar", "--threshold", str(THRESHOLD))  # fills the cache
    t_cached, g_cached = ours(images, "similar", "--threshold", str(THRESHOLD))
    assert g_cached == g_ours
    print(f"  ours again with the hash cache: {t_cached:.2f} s ({n / t_cached:.0f} img/s)")
    report("dedup", "similar mode, cached re-run", "images/s", n / t_cached)

    # exact runs take a fraction of a second: best of 5, alternating, on a shared machine
    exact_rows(images, truth_groups(truth, ("copy",)), f"{n:,} JPEGs", 5)
    many = build_many(root)
    exact_rows(root / "many", many, "20,000 files", 3)
    g_ours = ours(images, "exact")[1]

    from yandex_reverse.dedup import find

    t_core = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        workers = os.cpu_count() or 1  # what the script does in exact mode
        found = find.scan(images, recursive=True, exclude=[], shared_sizes=True, workers=workers)
        groups = find.exact_groups(found, workers)
        t_core = min(t_core, time.perf_counter() - start)
    assert {frozenset(e.rel for e in g) for g in groups} == g_ours
    print(f"  ours without interpreter start: {t_core:.3f} s ({n / t_core:.0f} img/s)")
    report("dedup", "exact mode (in-process, 2,000 JPEGs)", "images/s", n / t_core)

    bench_index()
    return 0


if __name__ == "__main__":
    sys.exit(main())
