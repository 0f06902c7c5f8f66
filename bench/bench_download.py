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

    .venv/bin/python bench/bench_download.py [N]
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import report, work_dir  # noqa: E402
from bench.plain_download import plain_loop  # noqa: E402
from tests.xhr_factory import entity, write_xhr  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
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


def main() -> int:
    work = work_dir("download")
    all_urls = urls(N)
    print(f"building a DB of {N:,} results with step 2 ...", flush=True)
    db_path = build_db(work, all_urls)
    (work / "urls.txt").write_text("\n".join(all_urls) + "\n", encoding="utf-8")

    server = subprocess.Popen(
        [PY, "-m", "yandex_reverse.fake_yandex.image_web", "--port", "0", "--cache-mb", "2048"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        proxy = server.stdout.readline().strip()
        web = psutil.Process(server.pid)
        print(f"image web at {proxy}; drawing the pictures once (untimed) ...", flush=True)
        assert asyncio.run(plain_loop(all_urls, proxy, None, CONCURRENCY)) == N

        plain_out = work / "plain"
        shutil.rmtree(plain_out, ignore_errors=True)
        print("plain aiohttp loop ...", flush=True)
        plain_cmd = [
            PY,
            str(REPO / "bench" / "plain_download.py"),
            proxy,
            str(work / "urls.txt"),
            str(plain_out),
            str(CONCURRENCY),
        ]
        plain = timed_run(plain_cmd, work, web)
        plain_n = count_images(plain_out)

        peer_out = work / "img2dataset"
        shutil.rmtree(peer_out, ignore_errors=True)
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

        ours_out = work / "ours"
        shutil.rmtree(ours_out, ignore_errors=True)
        with _fresh_ledger(db_path):
            print("5_Download_async.py ...", flush=True)
            ours_cmd = [
                PY,
                str(REPO / "5_Download_async.py"),
                "--db",
                str(db_path),
                "--out",
                str(ours_out),
                "--proxy",
                proxy,
                "--concurrency",
                str(CONCURRENCY),
            ]
            ours = timed_run(ours_cmd, work, web)
        ours_n = count_images(ours_out)

        small_out = work / "ours_small"
        shutil.rmtree(small_out, ignore_errors=True)
        with _fresh_ledger(db_path):
            small_cmd = [*ours_cmd[:5], str(small_out), *ours_cmd[6:], "--limit", str(N // 5)]
            small = timed_run(small_cmd, work, web)
    finally:
        server.terminate()
        server.wait(10)

    def line(name: str, n: int, t: Timed, note: str = "") -> str:
        return (
            f"  {name:<20}: {n:,} files in {t.seconds:6.2f} s = {n / t.seconds:7.1f} img/s,"
            f" peak RSS {t.rss / 2**20:6.1f} MiB{note}; CPU per image: its own"
            f" {1e3 * t.cpu / max(n, 1):.2f} ms, the image web's {1e3 * t.server_cpu / max(n, 1):.2f} ms"
        )

    ours_rate, peer_rate, plain_rate = (
        ours_n / ours.seconds,
        peer_n / peer.seconds,
        plain_n / plain.seconds,
    )
    print(
        f"\n{N:,} URLs, concurrency {CONCURRENCY}, ~100 KB JPEGs through the image web"
        " (each tool a whole command)\n"
        + line(
            "5_Download_async.py", ours_n, ours, f" ({N // 5:,} URLs: {small.rss / 2**20:.1f} MiB)"
        )
        + "\n"
        + line("img2dataset", peer_n, peer)
        + "\n"
        + line("plain aiohttp loop", plain_n, plain, " (no checks, no ledger)")
        + f"\n  ratio ours / img2dataset: {ours_rate / peer_rate:.2f}x,"
        f" ours / plain loop: {ours_rate / plain_rate:.2f}x",
        flush=True,
    )
    # #15: at least 0.7x a plain aiohttp loop (no checks, no ledger), staying >= 2x img2dataset.
    report("download", "images per second", "img/s", ours_rate, "img2dataset", peer_rate, aim=2.0)
    report(
        "download",
        "images per second",
        "img/s",
        ours_rate,
        "plain aiohttp loop",
        plain_rate,
        aim=0.7,
    )
    return 0 if ours_n == N and plain_n == N else 1


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
