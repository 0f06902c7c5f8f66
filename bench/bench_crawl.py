"""Step 1 crawl speed against the Yandex imitation, with a fixed latency per request.

For ``--max-tabs`` 1, 4 and 8: photos per minute of the real script (a real
headless Chromium, the imitation on 127.0.0.1) versus the ideal, which is the
sum of the latencies the imitation served divided by the tabs: what perfectly
parallel tabs with zero browser overhead would reach. Ratio = ours / ideal.

    .venv/bin/python bench/bench_crawl.py [--latency 0.25] [--pages 3] [--tabs 1,4,8]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import report, work_dir  # noqa: E402
from yandex_reverse.fake_yandex.site import FakeYandex, ServerThread  # noqa: E402


def make_photos(folder: Path, count: int) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (64 + i, 48), (i * 7 % 255, 90, 160)).save(folder / f"q{i:03d}.jpg")


def run(
    server: ServerThread, tabs: int, photos: int, args: argparse.Namespace
) -> tuple[float, float]:
    """(measured photos/min, ideal photos/min) for one --max-tabs setting."""
    root = work_dir(f"crawl_tabs{tabs}")
    make_photos(root / "photos", photos)
    shutil.rmtree(root / "XHR", ignore_errors=True)
    fake = server.fake
    fake.reset(settings=True)
    fake.configure(latency=args.latency, pages=args.pages, first_page=30, per_page=30)
    start = time.perf_counter()
    script = str(REPO / "1_Parse_XHR_Async.py")
    cmd = [sys.executable, script, "--images", "photos", "--xhr-dir", "XHR"]
    cmd += ["--base-url", server.base_url, "--max-tabs", str(tabs)]
    done = subprocess.run(
        cmd,
        cwd=root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"crawl failed:\n{done.stdout}\n{done.stderr}")
    finished = sum(1 for s in fake.served.values() if s.end)
    assert finished == photos, (finished, photos)
    return elapsed, fake.latency_total / tabs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.25, help="seconds per request")
    parser.add_argument("--pages", type=int, default=3, help="XHR pages per photo")
    parser.add_argument("--tabs", default="1,4,8")
    args = parser.parse_args()
    with ServerThread(FakeYandex()) as server:
        for tabs in (int(t) for t in args.tabs.split(",")):
            # N and 2N photos: the difference is the steady rate, without the
            # browser's start (about 2 s, paid once per run)
            photos = max(6, 3 * tabs)
            t1, ideal1 = run(server, tabs, photos, args)
            t2, ideal2 = run(server, tabs, 2 * photos, args)
            whole = 2 * photos / t2 * 60
            ours = photos / (t2 - t1) * 60
            ideal = photos / (ideal2 - ideal1) * 60
            print(
                f"--max-tabs {tabs}: {photos}+{photos} photos; whole run of {2 * photos} "
                f"{whole:.1f}/min (startup included); steady {ours:.1f}/min; ideal {ideal:.1f}/min"
            )
            report(
                "crawl",
                f"photos/min, --max-tabs {tabs}, {args.latency:g} s/request",
                "photos/min",
                ours,
                "ideal (sum of latencies / tabs)",
                ideal,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
