"""Benchmark of step 5: the same 5,000 image URLs from the image web, downloaded by
``5_Download_async.py`` and by img2dataset (the peer), in one run.

No faults, ~100 KB JPEGs (800x600), no resizing, the same concurrency (40).
Both go through the image web as an HTTP proxy (img2dataset via HTTP_PROXY,
which urllib honours), after one untimed pass that fills the server's cache
so neither tool pays for drawing the pictures. A plain aiohttp loop (no
checks, no ledger, ``plain_download.py``) is timed too as the floor of what
the network side costs. All three run the same way: a whole command (start,
imports and all) against the same server, timed from start to exit. Prints
images/s, the ratios, the peak RSS of each tool's process tree, and the CPU
each one used (its own and the image web's, per image: the two share the
machine's cores).

Every tool writes into a folder of its own that nothing was ever deleted from,
on tmpfs (``/dev/shm``) where it has room, else on the work folder's disk.
On ext4 the time to create a file depends on what was deleted just before (a
new inode is looked for among recently deleted ones: 0.035-0.3 ms of kernel
time per file, depending on the previous run's ``rm -r`` of 5,000 files), and
this step creates two files per image (image and sidecar) where the plain loop
creates one: on that disk the comparison measured the disk's history, not the
code. A tmpfs folder is removed right after its files are counted (which costs
the next run nothing); folders on a disk are removed at the end.

The plain loop and ours run ``--rounds`` times each, alternating (plain, ours,
ours, plain, ...), and each side's best run counts, so neither always runs
right after the other's writes; img2dataset runs once (it is far behind).

    .venv/bin/python bench/bench_download.py [N] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import report, work_dir  # noqa: E402
from bench.plain_download import plain_loop  # noqa: E402
from tests.xhr_factory import entity, write_xhr  # noqa: E402

CONCURRENCY = 40
PY = sys.executable


def urls(n: int) -> list[str]:
    return [
        f"http://sun9-{i % 50}.userapi.com/impg/b{i:05d}/bench{i:05d}.jpg"
        "?size=800x600&quality=95&type=album"
        for i in range(n)
    ]


def build_db(work: Path, all_urls: list[str]) -> Path:
    xhr = work / "XHR"
    shutil.rmtree(xhr, ignore_errors=True)
    for page, start in enumerate(range(0, len(all_urls), 500), 1):
        entities = [
            entity(f"b{i:05d}", pos=i, orig_url=u, orig_size=(800, 600), previews=[], dups=[])
            for i, u in enumerate(all_urls[start : start + 500], start)
        ]
        write_xhr(xhr, "bench.jpg", page, entities)
    db_path = work / "bench.db"
    db_path.unlink(missing_ok=True)
    subprocess.run(
        [PY, str(REPO / "2_XHRtoDB.py"), "--xhr-dir", str(xhr), "--db", str(db_path)],
        cwd=work,
        check=True,
        capture_output=True,
    )
    return db_path


class PeakRss:
    """Peak resident memory of a process and its children, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                total = 0
                for proc in procs:
                    with _quiet():
                        total += proc.memory_info().rss
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        return kind is not None and issubclass(kind, psutil.Error)


class Timed:
    """A whole command's wall time, peak RSS, its CPU and the image web's CPU meanwhile."""

    def __init__(self, seconds: float, rss: int, cpu: float, server_cpu: float) -> None:
        self.seconds, self.rss, self.cpu, self.server_cpu = seconds, rss, cpu, server_cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def timed_run(
    cmd: list[str], cwd: Path, server: psutil.Process, env: dict[str, str] | None = None
) -> Timed:
    cpu0, server0 = _children_cpu(), _cpu_of(server)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    rss = PeakRss(proc.pid)
    output, _ = proc.communicate()
    elapsed = time.perf_counter() - start
    peak = rss.stop()
    server_cpu = _cpu_of(server) - server0
    if proc.returncode != 0:
        print(output[-3000:])
        raise SystemExit(f"{cmd[1]} exited {proc.returncode}")
    return Timed(elapsed, peak, _children_cpu() - cpu0, server_cpu)


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.jpg"))


TMPFS = Path("/dev/shm")


class Outputs:
    """Fresh output folders (never used, nothing deleted from them), on tmpfs when it
    has room for ``need`` bytes at once, else under ``work``."""

    def __init__(self, work: Path, need: int) -> None:
        self.on_tmpfs = False
        try:
            self.on_tmpfs = TMPFS.is_dir() and shutil.disk_usage(TMPFS).free > need
        except OSError:
            pass
        base = TMPFS if self.on_tmpfs else work
        self.root = Path(tempfile.mkdtemp(prefix="yr-bench-download-", dir=base))
        self.made = 0

    def fresh(self, name: str) -> Path:
        self.made += 1
        return self.root / f"{self.made:02d}-{name}"

    def done_with(self, folder: Path) -> None:
        """A tmpfs folder goes now (its memory back; no later run pays for it)."""
        if self.on_tmpfs:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("n", nargs="?", type=int, default=5000, help="URLs")
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs of the plain loop and of ours (best counts)"
    )
    args = parser.parse_args(argv)
    n = args.n
    work = work_dir("download")
    all_urls = urls(n)
    print(f"building a DB of {n:,} results with step 2 ...", flush=True)
    db_path = build_db(work, all_urls)
    (work / "urls.txt").write_text("\n".join(all_urls) + "\n", encoding="utf-8")
    # one run's files at a time on tmpfs (~110 KB an image with its sidecar), twice over
    outputs = Outputs(work, 2 * n * 110_000 + 2**28)
    print(
        f"output folders under {outputs.root}"
        f" ({'tmpfs' if outputs.on_tmpfs else 'disk: /dev/shm lacks room'})",
        flush=True,
    )

    server = subprocess.Popen(
        [PY, "-m", "yandex_reverse.fake_yandex.image_web", "--port", "0", "--cache-mb", "2048"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    plains: list[tuple[int, Timed]] = []
    ourses: list[tuple[int, Timed]] = []
    try:
        assert server.stdout is not None
        proxy = server.stdout.readline().strip()
        web = psutil.Process(server.pid)
        print(f"image web at {proxy}; drawing the pictures once (untimed) ...", flush=True)
        assert asyncio.run(plain_loop(all_urls, proxy, None, CONCURRENCY)) == n

        def run_plain() -> None:
            out = outputs.fresh("plain")
            cmd = [
                PY,
                str(REPO / "bench" / "plain_download.py"),
                proxy,
                str(work / "urls.txt"),
                str(out),
                str(CONCURRENCY),
            ]
            timed = timed_run(cmd, work, web)
            plains.append((count_images(out), timed))
            outputs.done_with(out)
            print(_run_line("plain aiohttp loop", *plains[-1]), flush=True)

        def ours_cmd(out: Path) -> list[str]:
            return [
                PY,
                str(REPO / "5_Download_async.py"),
                "--db",
                str(db_path),
                "--out",
                str(out),
                "--proxy",
                proxy,
                "--concurrency",
                str(CONCURRENCY),
            ]

        def run_ours() -> None:
            out = outputs.fresh("ours")
            with _fresh_ledger(db_path):
                timed = timed_run(ours_cmd(out), work, web)
            ourses.append((count_images(out), timed))
            outputs.done_with(out)
            print(_run_line("5_Download_async.py", *ourses[-1]), flush=True)

        for round_ in range(max(1, args.rounds)):  # plain, ours, ours, plain, plain, ours...
            sides = (run_plain, run_ours) if round_ % 2 == 0 else (run_ours, run_plain)
            for side in sides:
                side()
            if round_ == 0:
                peer_out = outputs.fresh("img2dataset")
                peer_cmd = [
                    PY,
                    "-c",
                    "import sys; from img2dataset import main; sys.exit(main())",
                    "--url_list",
                    str(work / "urls.txt"),
                    "--input_format",
                    "txt",
                    "--output_folder",
                    str(peer_out),
                    "--output_format",
                    "files",
                    "--resize_mode",
                    "no",
                    "--disable_all_reencoding",
                    "True",
                    "--processes_count",
                    "1",
                    "--thread_count",
                    str(CONCURRENCY),
                    "--timeout",
                    "40",
                    "--retries",
                    "0",
                    "--enable_wandb",
                    "False",
                ]
                peer_env = {
                    "HTTP_PROXY": proxy,
                    "http_proxy": proxy,
                    "NO_PROXY": "",
                    "no_proxy": "",
                    "NO_ALBUMENTATIONS_UPDATE": "1",
                }
                print("img2dataset ...", flush=True)
                peer = timed_run(peer_cmd, work, web, peer_env)
                peer_n = count_images(peer_out)
                outputs.done_with(peer_out)
                print(_run_line("img2dataset", peer_n, peer), flush=True)

        small_out = outputs.fresh("ours_small")
        with _fresh_ledger(db_path):
            small = timed_run([*ours_cmd(small_out), "--limit", str(n // 5)], work, web)
    finally:
        server.terminate()
        server.wait(10)
        outputs.close()

    ours_n, ours = max(ourses, key=lambda r: r[0] / r[1].seconds)
    plain_n, plain = max(plains, key=lambda r: r[0] / r[1].seconds)
    ours_rate, peer_rate, plain_rate = (
        ours_n / ours.seconds,
        peer_n / peer.seconds,
        plain_n / plain.seconds,
    )
    print(
        f"\n{n:,} URLs, concurrency {CONCURRENCY}, ~100 KB JPEGs through the image web"
        f" (each tool a whole command; best of {len(ourses)} runs of ours and the plain loop)\n"
        + _run_line(
            "5_Download_async.py", ours_n, ours, f" ({n // 5:,} URLs: {small.rss / 2**20:.1f} MiB)"
        )
        + "\n"
        + _run_line("img2dataset", peer_n, peer)
        + "\n"
        + _run_line("plain aiohttp loop", plain_n, plain, " (no checks, no ledger)")
        + f"\n  ratio ours / img2dataset: {ours_rate / peer_rate:.2f}x,"
        f" ours / plain loop: {ours_rate / plain_rate:.2f}x",
        flush=True,
    )
    extra = {
        "rounds": len(ourses),
        "tmpfs": outputs.on_tmpfs,
        "ours_cpu_ms": round(1e3 * ours.cpu / max(ours_n, 1), 3),
    }
    # #15: at least 0.7x a plain aiohttp loop (no checks, no ledger), staying >= 2x img2dataset.
    for peer_name, rate, timed, n_done, aim in (
        ("img2dataset", peer_rate, peer, peer_n, 2.0),
        ("plain aiohttp loop", plain_rate, plain, plain_n, 0.7),
    ):
        report(
            "download",
            "images per second",
            "img/s",
            ours_rate,
            peer_name,
            rate,
            aim=aim,
            **extra,
            peer_cpu_ms=round(1e3 * timed.cpu / max(n_done, 1), 3),
        )
    complete = all(got == n for got, _ in ourses + plains)
    return 0 if complete else 1


def _run_line(name: str, n: int, t: Timed, note: str = "") -> str:
    return (
        f"  {name:<20}: {n:,} files in {t.seconds:6.2f} s = {n / t.seconds:7.1f} img/s,"
        f" peak RSS {t.rss / 2**20:6.1f} MiB{note}; CPU per image: its own"
        f" {1e3 * t.cpu / max(n, 1):.2f} ms, the image web's {1e3 * t.server_cpu / max(n, 1):.2f} ms"
    )


class _fresh_ledger:
    """Each timed run starts from an empty ledger (the DB's downloads table)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    def __enter__(self) -> None:
        import sqlite3

        conn = sqlite3.connect(self.db_path)
        with conn:
            conn.execute("DELETE FROM downloads")
        conn.close()

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
