"""Benchmark of ``--executor ray`` against ``--executor local`` on this machine, same input.

What one machine pays for Ray (the overhead a user sees before a second node
helps): an embedded Ray starts, workers fetch and check in other processes,
every body crosses to the driver as a temporary file name. Three figures per
step, each executor on the same input:

- the whole run: files / the process's wall time (Ray's start and stop in);
- the rate after start: step 5's summary rate (from the first URL on, Ray
  already up), step 7.3's rows per second over the whole seconds between the
  first and the last row scored (models loaded);
- the fixed cost: whole time - files / rate after start (for Ray also the
  ``ray: started in`` and ``shut down in`` figures of the step's log).

The fixed cost is paid once per run, so the whole-run ratio at the sizes Ray
is for (millions) tends to the after-start ratio; the fixed cost is printed as
its own figure. The bench sizes fit a few minutes of ``make bench``: 1,500
photos for 7.3 (at 300 the scoring itself took 7 s, less than one Ray start
plus its actors' model loads, so the whole-run figure measured only the start).

- Step 5: N image URLs (~100 KB JPEGs, 50 hosts) from the image web, run by
  ``5_Download_async.py`` with each executor from an empty ledger.
- Step 7.3: M JPEGs (640x480) scored with piqe by each executor (default 1,500).

    .venv/bin/python bench/bench_ray.py [N] [M]     (0 skips that step)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_download import CONCURRENCY, _fresh_ledger, build_db, plain_loop, urls  # noqa: E402
from bench.common import report, work_dir  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
M = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
PY = sys.executable
AIM = 0.8
RATE = re.compile(r"rate\s*│\s*([\d,.]+) files/s")
RAY_LOG = re.compile(r"ray: (started|shut down) in ([\d.]+) s")


def ray_seconds(log_file: Path) -> dict[str, float]:
    """``{"started": X, "shut down": Y}`` from a step's log (empty for the local executor)."""
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    return {what: float(seconds) for what, seconds in RAY_LOG.findall(text)}


def ray_times(log_file: Path) -> str:
    """``; Ray start X s, stop Y s`` from a step's log (empty for the local executor)."""
    found = ray_seconds(log_file)
    if not found:
        return ""
    return f"; Ray start {found.get('started', '?')} s, stop {found.get('shut down', '?')} s"


def report_fixed(step: str, seconds: float, peer: float, log_file: Path) -> None:
    """The fixed cost of each executor (whole time - files / rate after start), its own
    figure: paid once per run, so the whole-run ratio at N files depends on N."""
    found = ray_seconds(log_file)
    report("ray", f"{step} fixed cost per run (start, stop, first files)", "s", seconds,
           "--executor local", peer, ray_start_s=found.get("started"),
           ray_stop_s=found.get("shut down"))  # fmt: skip


def adopt_orphans() -> None:
    """Become the subreaper of what the steps start (Linux): Ray's processes that
    outlive their parent stay in this process's tree, where :class:`CpuMeter` sees them."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


KEEP: set[int] = set()  # children that stay between runs (the image web): not counted
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class CpuMeter(threading.Thread):
    """CPU-s (user + system) of every process below this one but :data:`KEEP`, read
    from /proc every 0.1 s: the step and all Ray's daemons and workers. Not from
    RUSAGE_CHILDREN: the raylet reaps the workers it kills without accounting them.
    A process's last < 0.1 s before it exits is missed."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        # (pid, start time) -> (name, user CPU-s, system CPU-s)
        self.seen: dict[tuple[int, str], tuple[str, float, float]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.sample()

    def sample(self) -> None:
        me, stats = os.getpid(), {}
        for entry in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                name, rest = entry.joinpath("stat").read_text().split(" (", 1)[1].rsplit(")", 1)
                fields = rest.split()  # state ppid ... utime(11) stime(12) ... starttime(19)
                stats[int(entry.name)] = (int(fields[1]), fields[19], int(fields[11]),
                                          int(fields[12]), name)  # fmt: skip
        for pid, (ppid, started, user, system, name) in stats.items():
            up, hops = ppid, 0
            while up not in (me, 0, 1) and up in stats and up not in KEEP and hops < 64:
                up, hops = stats[up][0], hops + 1
            if up == me and pid not in KEEP and ppid not in KEEP:
                self.seen[(pid, started)] = (name, user / TICK, system / TICK)

    def breakdown(self) -> str:
        """``name xCOUNT user+system`` CPU-s per process name, the largest first."""
        by: dict[str, tuple[int, float, float]] = {}
        for name, user, system in self.seen.values():
            count, u, s = by.get(name, (0, 0.0, 0.0))
            by[name] = (count + 1, u + user, s + system)
        ranked = sorted(by.items(), key=lambda item: -(item[1][1] + item[1][2]))
        return ", ".join(f"{n} x{c} {u:.2f}+{s:.2f}" for n, (c, u, s) in ranked)

    def stop(self) -> float:
        """The CPU-s counted; then the exited orphans are reaped (a zombie keeps its
        figures in /proc: left, it would be counted again by the next run's meter)."""
        self.done.set()
        self.join()
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        return sum(user + system for _, user, system in self.seen.values())


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Run one step; print its wall time and the CPU-s of it and every process it
    started (:class:`CpuMeter`)."""
    meter = CpuMeter()
    meter.start()
    start = time.perf_counter()
    done = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"},
    )
    elapsed = time.perf_counter() - start
    time.sleep(0.5)  # Ray's last processes exit after the driver
    print(f"  wall {elapsed:.2f} s, CPU {meter.stop():.2f} s; load {load()}", flush=True)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:])
        raise SystemExit(f"{cmd[1]} exited {done.returncode}")
    return elapsed, done.stdout


def bench_download(work: Path) -> None:
    all_urls = urls(N)
    print(f"building a DB of {N:,} results with step 2 ...", flush=True)
    db_path = build_db(work, all_urls)
    server = subprocess.Popen(
        [PY, "-m", "yandex_reverse.fake_yandex.image_web", "--port", "0", "--cache-mb", "2048"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    KEEP.add(server.pid)
    results: dict[str, tuple[float, float, int, str]] = {}
    ray_log_file = work / "out_ray" / "download.log"
    try:
        assert server.stdout is not None
        proxy = server.stdout.readline().strip()
        print("drawing the pictures once (untimed) ...", flush=True)
        assert asyncio.run(plain_loop(all_urls, proxy, None, CONCURRENCY)) == N
        for executor in ("local", "ray"):
            out = work / f"out_{executor}"
            shutil.rmtree(out, ignore_errors=True)
            with _fresh_ledger(db_path):
                print(f"5_Download_async.py --executor {executor} ...", flush=True)
                log_file = out / "download.log"  # the step's own log
                cmd = [PY, str(REPO / "5_Download_async.py"), "--db", str(db_path), "--out",
                       str(out), "--proxy", proxy, "--executor", executor]  # fmt: skip
                elapsed, stdout = run(cmd, work)
            files = sum(1 for _ in out.glob("*.jpg"))
            match = RATE.search(stdout)
            rate = float(match.group(1).replace(",", "")) if match else 0.0
            results[executor] = (elapsed, rate, files, ray_times(log_file))
            if executor == "ray":  # the next run removes the folder
                shutil.copy(log_file, work / "download_ray.log")
                ray_log_file = work / "download_ray.log"
    finally:
        server.terminate()
        server.wait(10)
    (local_s, local_rate, local_n, _), (ray_s, ray_rate, ray_n, ray_log) = (
        results["local"],
        results["ray"],
    )
    print(
        f"\nstep 5, {N:,} URLs (~100 KB, 50 hosts), this machine:\n"
        f"  local : {local_n:,} files in {local_s:6.2f} s = {local_n / local_s:7.1f} img/s whole run;"
        f" after start {local_rate:,.1f}/s; fixed {fixed(local_s, local_n, local_rate):.1f} s\n"
        f"  ray   : {ray_n:,} files in {ray_s:6.2f} s = {ray_n / ray_s:7.1f} img/s whole run;"
        f" after start {ray_rate:,.1f}/s; fixed {fixed(ray_s, ray_n, ray_rate):.1f} s{ray_log}\n"
        f"  ratio ray / local: whole run {(ray_n / ray_s) / (local_n / local_s):.2f}x,"
        f" after start {ray_rate / local_rate if local_rate else 0:.2f}x",
        flush=True,
    )
    for metric, ours, peer in (
        ("step 5 images per second, whole run", ray_n / ray_s, local_n / local_s),
        ("step 5 images per second, after start", ray_rate, local_rate),
    ):
        report("ray", metric, "img/s", ours, "--executor local", peer, aim=AIM)
    report_fixed("step 5", fixed(ray_s, ray_n, ray_rate), fixed(local_s, local_n, local_rate),
                 ray_log_file)  # fmt: skip
    if ray_n != N or local_n != N:
        raise SystemExit(f"files: local {local_n}, ray {ray_n}, expected {N}")


def load() -> str:
    return (
        Path("/proc/loadavg").read_text().split(" ", 1)[0]
        if Path("/proc/loadavg").exists()
        else "?"
    )


def fixed(seconds: float, files: int, rate: float) -> float:
    """The part of a run that is not moving files: its wall time less files / rate."""
    return seconds - files / rate if rate else float("nan")


def bench_quality(work: Path) -> None:
    from tests.test_quality import _photo

    source = work / "photos"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    for i in range(M):
        _photo(640, 480, i).save(source / f"p{i:04d}.jpg", quality=90)
    times: dict[str, float] = {}
    steady: dict[str, float] = {}
    logs: dict[str, str] = {}
    for executor in ("local", "ray"):
        dest = work / f"sorted_{executor}"
        shutil.rmtree(dest, ignore_errors=True)
        print(f"7_3_separate_images_by_quality.py --executor {executor} ...", flush=True)
        log_file = work / f"quality_{executor}.log"
        log_file.unlink(missing_ok=True)
        cmd = [PY, str(REPO / "7_3_separate_images_by_quality.py"), "--source", str(source),
               "--dest", str(dest), "--model", "piqe", "--yes", "--executor", executor,
               "--log-file", str(log_file)]  # fmt: skip
        times[executor], _out = run(cmd, work)
        steady[executor] = scoring_rate(dest / "quality_report.db")
        logs[executor] = ray_times(log_file)
    lines = [f"\nstep 7.3, {M:,} JPEGs 640x480, piqe (after start: first to last row written):"]
    for executor in ("local", "ray"):
        t, rate = times[executor], steady[executor]
        lines.append(
            f"  {executor:6}: {t:6.2f} s = {M / t:6.1f} img/s whole run; after start"
            f" {rate:.2f} img/s; fixed {fixed(t, M, rate):.1f} s{logs[executor]}"
        )
    lines.append(
        f"  ratio ray / local: whole run {times['local'] / times['ray']:.2f}x,"
        f" after start {steady['ray'] / steady['local']:.2f}x"
    )
    print("\n".join(lines), flush=True)
    report("ray", "step 7.3 piqe images per second, whole run", "img/s",
           M / times["ray"], "--executor local", M / times["local"], aim=AIM)  # fmt: skip
    report("ray", "step 7.3 piqe images per second, after start", "img/s",
           steady["ray"], "--executor local", steady["local"], aim=AIM)  # fmt: skip
    report_fixed("step 7.3", fixed(times["ray"], M, steady["ray"]),
                 fixed(times["local"], M, steady["local"]), work / "quality_ray.log")  # fmt: skip


def scoring_rate(report_db: Path) -> float:
    """Rows per second while scoring, from the rows' ``processed_at`` stamps.

    The stamps are whole seconds (the report's format), so first-to-last over a
    6-12 s span is off by up to a second (the fixed cost with it); the rows of
    the whole seconds strictly between the first and the last one are exact.
    """
    import sqlite3
    from collections import Counter
    from datetime import datetime

    conn = sqlite3.connect(report_db)
    try:
        seconds = Counter(datetime.fromisoformat(r[0]) for r in conn.execute(
            "SELECT processed_at FROM image_quality WHERE error_message IS NULL"))  # fmt: skip
    finally:
        conn.close()
    if not seconds:
        return 0.0
    first, last = min(seconds), max(seconds)
    span = (last - first).total_seconds()
    if span >= 3:  # whole seconds inside: their rows over their count
        inside = sum(n for stamp, n in seconds.items() if first < stamp < last)
        return inside / (span - 1)
    rows = sum(seconds.values())
    return (rows - 1) / span if span > 0 else 0.0


def main() -> int:
    work = work_dir("ray")
    adopt_orphans()
    if N:
        bench_download(work)
    if M:
        bench_quality(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
