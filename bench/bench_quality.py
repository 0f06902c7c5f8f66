"""Step 7.3 against pyiqa's own way: ``create_metric(name)`` then ``metric(path)`` per image.

Same images (1024x768 JPEGs), same metric, same device (CPU here). The images are
written and synced to disk first; then the two sides alternate (ours, peer, peer,
ours: ``--rounds 2``) and each side's best run counts, so that neither is always
the one that runs first or after the other's page cache writeback; each run's CPU
seconds (its whole process tree) are printed beside its rate.
Ours is the whole step run as a command (imports, scan, workers, batches, DB,
reports; --dry-run so no files are copied), timed end to end; the peer is the
plain loop in its own process with torch's default settings, also timed end
to end (the peer pays the ~3 s import of torch and pyiqa; ours, with piqe, only torch's, as it
never imports pyiqa on the CPU). Each side runs in a fresh process so neither inherits the
other's thread settings. Metrics: piqe (no weights) and
MUSIQ's architecture with random weights (``pretrained=False``: the real
compute). MUSIQ takes ~1 s per image on 2 CPU threads (pyiqa's loop), so it uses fewer images
(``--musiq-images``, 48: ~25 s for the peer). With MUSIQ both sides pay the same fixed start
(~2.5 s of torch and pyiqa imports, ~1 s of it torch._dynamo, which torchvision.ops
imports), so fewer images pull the ratio towards 1: the figures are a floor. At
24 images that start was a fifth of ours, more than a run of real size ever sees.

    .venv/bin/python bench/bench_quality.py [--images 300] [--musiq-images 48] [--only piqe] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import report, work_dir


def make_images(folder: Path, count: int) -> list[Path]:
    """Photo-like 1024x768 JPEGs: smooth gradients, shapes and grain, all different."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(7)
    for i in range(count):
        path = folder / f"img_{i:04d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        y, x = np.mgrid[0:768, 0:1024]
        base = np.stack(
            [(x * (i % 7 + 1) / 40) % 255, (y * (i % 5 + 1) / 30) % 255, (x + y) / 7 % 255], -1
        )
        noise = rng.normal(0, 4 + i % 20, base.shape)
        image = Image.fromarray(np.clip(base + noise, 0, 255).astype("uint8"))
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            x0, y0 = rng.integers(0, 900), rng.integers(0, 650)
            draw.ellipse(
                (x0, y0, x0 + 120, y0 + 100), fill=tuple(int(v) for v in rng.integers(0, 255, 3))
            )
        if i % 3 == 0:
            image = image.filter(ImageFilter.GaussianBlur(1 + i % 4))
        image.save(path, quality=90)
    return paths


PEER = """
import sys, time, pyiqa, torch
name, pretrained, paths = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
start = time.perf_counter()
metric = pyiqa.create_metric(name, device=torch.device("cpu"), **({} if pretrained else {"pretrained": False}))
for path in paths:
    float(metric(path))
print(len(paths) / (time.perf_counter() - start))
"""


def children_cpu() -> float:
    """User + system CPU seconds of every child process waited for so far (a child's
    own workers included once it has waited for them)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peer(name: str, paths: list[Path], pretrained: bool) -> tuple[float, float]:
    """pyiqa's own way in a fresh process with torch's defaults, timed like ours:
    from the command line to its exit (imports included on both sides).
    Returns (images/s, CPU seconds)."""
    cpu, start = children_cpu(), time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", PEER, name, "1" if pretrained else "0", *map(str, paths)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return len(paths) / (time.perf_counter() - start), children_cpu() - cpu


def ours(name: str, folder: Path, count: int, pretrained: bool) -> tuple[float, float]:
    """The whole step as a user runs it, timed from the command line to its exit
    (python, torch and pyiqa imports, scan, scoring, DB, reports all counted).
    Returns (images/s, CPU seconds)."""
    dest = folder.parent / f"{folder.name}_sorted_{name}"
    shutil.rmtree(dest, ignore_errors=True)
    env = {**os.environ, "YR_PYIQA_PRETRAINED": "1" if pretrained else "0"}
    script = Path(__file__).resolve().parents[1] / "7_3_separate_images_by_quality.py"
    cpu, start = children_cpu(), time.perf_counter()
    subprocess.run(
        [sys.executable, str(script), "--source", str(folder), "--dest", str(dest),
         "--model", name, "--device", "cpu", "--dry-run", "--log-file", str(dest / "bench.log")],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return count / (time.perf_counter() - start), children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--musiq-images", type=int, default=48)
    parser.add_argument("--only", choices=("piqe", "musiq"))
    parser.add_argument(
        "--rounds", type=int, default=2,
        help="runs of each side, alternated ours, peer, peer, ours...; each side's best counts",
    )  # fmt: skip
    args = parser.parse_args()
    root = work_dir("quality")
    all_paths = make_images(root / "images", max(args.images, args.musiq_images))
    for name, count, pretrained in (
        ("piqe", args.images, True),
        ("musiq", args.musiq_images, False),
    ):
        if args.only and name != args.only:
            continue
        folder = root / f"set_{name}_{count}"
        if not folder.exists():
            folder.mkdir()
            for path in all_paths[:count]:
                os.link(path, folder / path.name)
        paths = sorted(folder.glob("*.jpg"))
        # the JPEGs just written (and their links) go to disk before any timing, so
        # neither side pays the writeback of the other's input
        os.sync()
        runs: dict[str, list[tuple[float, float]]] = {"ours": [], "peer": []}
        skipped = None
        for round_ in range(args.rounds):  # ours, peer, peer, ours, ours, peer...
            for who in ("ours", "peer") if round_ % 2 == 0 else ("peer", "ours"):
                if who == "ours":
                    runs["ours"].append(ours(name, folder, count, pretrained))
                elif skipped is None:
                    try:
                        runs["peer"].append(peer(name, paths, pretrained))
                    except subprocess.CalledProcessError as exc:  # one line, not a crash
                        lines = (exc.stderr or "").strip().splitlines()
                        skipped = f"exit {exc.returncode}: {lines[-1] if lines else 'no output'}"
        ours_rate, ours_cpu = max(runs["ours"])
        peer_rate, peer_cpu = max(runs["peer"]) if skipped is None else (None, None)
        print(
            f"{name}: {count} images, ours {ours_rate:.2f} img/s, "
            + (
                f"pyiqa loop {peer_rate:.2f} img/s, ratio {ours_rate / peer_rate:.2f}x"
                if peer_rate
                else f"pyiqa loop failed: {skipped}"
            )
        )
        for who, done in runs.items():
            print(
                f"  {who}: "
                + ", ".join(f"{rate:.2f} img/s ({cpu:.1f} CPU-s)" for rate, cpu in done)
                + f"; load {os.getloadavg()[0]:.1f}"
            )
        report(
            "quality",
            f"{name} images/s ({count} x 1024x768, CPU)",
            "img/s",
            ours_rate,
            f"pyiqa create_metric('{name}')(path) loop",
            peer_rate,
            aim=2.0,
            skipped=skipped,
            ours_cpu_s=round(ours_cpu, 2),
            peer_cpu_s=None if peer_cpu is None else round(peer_cpu, 2),
            rounds=args.rounds,
        )


if __name__ == "__main__":
    main()
