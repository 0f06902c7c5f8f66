"""Steps 5 and 7.3 with ``--executor ray`` against ``--executor local``, on an embedded
local Ray (2 CPUs, as this machine has), driven as a user runs them.

The scripts run as subprocesses: each starts (and stops) its own Ray, and the
tests kill Ray worker processes, which are the step's descendants. Few and
small, because a Ray start costs seconds: one comparison per step, one killed
worker per step, and the exit-2 line without Ray.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, count_of, run_script
from tests.test_downloader import (  # noqa: F401  (small_disk: a fixture)
    build_db,
    images_on_disk,
    ledger,
    result,
    small_disk,
    uid,
)
from tests.test_quality import _photo, db_rows, make_images
from tests.xhr_factory import entity, write_xhr
from yandex_reverse.fake_yandex.image_web import ImageWebServer

pytestmark = [pytest.mark.ray, pytest.mark.slow]
WAIT = 180.0  # seconds a poll waits for a condition before the test fails
# What a ledger row must equal between the executors (attempts and times may differ).
LEDGER_KEYS = (
    "image_id", "variant_type", "status", "path", "bytes", "content_type", "sha256",
    "http_status", "width", "height", "retryable",
)  # fmt: skip


def sidecars(folder: Path) -> dict[str, str]:
    """name -> text of every sidecar (the Ray workers write them, the driver renames them)."""
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def poll(what: str, check: Callable[[], object], proc: subprocess.Popen | None = None) -> object:
    """Wait for ``check()`` to be truthy; fail (never fall through) when it does not come."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the step ended before {what}:\n{out}\n{err}")
        time.sleep(0.05)
    pytest.fail(f"no {what} within {WAIT:g} s")


def ray_workers(proc: subprocess.Popen, title: str) -> list[psutil.Process]:
    """The step's Ray worker processes running ``title`` (Ray names them ``ray::<title>``)."""
    found = []
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            if " ".join(child.cmdline()).startswith(f"ray::{title}"):
                found.append(child)
        except psutil.Error:
            continue
    return found


def start(script: str, *args: str | os.PathLike[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    return subprocess.Popen(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "COLUMNS": "200"},
    )


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the step did not end within {WAIT:g} s:\n{out}\n{err}")
    assert proc.returncode == 0, f"{out}\n{err}"
    assert "Traceback" not in out + err
    return out, err


# ------------------------------------------------------------------ without Ray


@pytest.mark.parametrize(
    "script, args",
    [
        ("5_Download_async.py", ("--db", "yandex_images.db")),
        ("7_3_separate_images_by_quality.py", ("--source", ".", "--model", "piqe", "--yes")),
    ],
)
def test_executor_ray_without_ray_exits_2_with_how_to_install(workdir, script, args):
    blocker = workdir / "no_ray"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    done = run_script(script, *args, "--executor", "ray", cwd=workdir,
                      env={"PYTHONPATH": str(blocker)})  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        'Error: --executor ray needs Ray, which is not installed: pip install ".[ray]" '
        '(or: pip install "ray[data]>=2.60")'
    ], done.stderr
    russian = run_script(script, *args, "--executor", "ray", cwd=workdir,
                         env={"PYTHONPATH": str(blocker), "LC_ALL": "ru_RU.UTF-8"})  # fmt: skip
    assert russian.returncode == 2
    assert "для --executor ray нужен Ray, а он не установлен: pip install" in russian.stderr
    flag_only = run_script(script, *args, "--ray-address", "auto", cwd=workdir)
    assert flag_only.returncode == 2
    assert "--ray-address needs --executor ray" in flag_only.stderr


# ------------------------------------------------------------------ step 5


def test_download_on_ray_equals_local_and_holds_per_host_limits(tmp_path):
    """Same ledger and files as the local executor; no host ever sees more than
    --per-host requests at once, though several workers run side by side."""
    tag = uid()
    slow = "&yr_delay=0.3"  # answers take a while, so requests to one host overlap
    entities = [
        result(f"{tag}h{i}", host=f"sun9-{i % 4}.userapi.com", query=slow) for i in range(24)
    ]
    entities += [
        result(f"{tag}nf", host="sun9-7.userapi.com", query="&yr_fault=404"),  # -> its dup
        result(f"{tag}html", host="sun9-7.userapi.com", query="&yr_fault=html200"),
        result(f"{tag}once", host="sun9-8.userapi.com", query="&yr_fault=500once"),
        result(f"{tag}gone", host="sun9-8.userapi.com", query="&yr_fault=410"),
    ]
    runs = {}
    for executor in ("local", "ray"):
        workdir = tmp_path / executor
        workdir.mkdir()
        db_path = build_db(workdir, entities)
        with ImageWebServer() as web:  # a fresh web each: "500 once" answers alike
            done = run_script(
                "5_Download_async.py", "--proxy", web.proxy_url, "--per-host", "2",
                "--timeout", "10", "--retries", "1", "--executor", executor, cwd=workdir,
            )  # fmt: skip
            peak = dict(web.peak_per_host)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        rows = {url: (*(r[k] for k in LEDGER_KEYS), (r["error"] or "")[:12])
                for url, r in ledger(db_path).items()}  # fmt: skip
        out = workdir / "yandex_images"
        runs[executor] = (rows, images_on_disk(out), done.stdout, peak, sidecars(out))

    local_rows, local_files, local_out, _, local_sides = runs["local"]
    ray_rows, ray_files, ray_out, peak, ray_sides = runs["ray"]
    assert "Executor: Ray, embedded Ray on this machine" in ray_out
    assert ray_rows == local_rows
    assert ray_files == local_files
    assert ray_sides == local_sides  # the same sidecar, word for word, next to each image
    assert sorted(Path(n).stem for n in ray_sides) == sorted(Path(n).stem for n in ray_files)
    assert len(ray_files) == len(set(ray_files.values())) >= 24  # each picture once
    for label in ("downloaded (new files)", "failed", "ended without a file"):
        assert count_of(ray_out, label) == count_of(local_out, label)
    assert not [p for p in (tmp_path / "ray" / "yandex_images").iterdir() if p.suffix == ".part"]
    # The limit held at the server, and the run did use it (two at once on a host).
    slow_hosts = {f"sun9-{i}.userapi.com": peak.get(f"sun9-{i}.userapi.com") for i in range(4)}
    assert all(n is not None and n <= 2 for n in peak.values()), peak
    assert max(slow_hosts.values()) == 2, peak


def test_download_worker_killed_mid_run_then_rerun_loses_nothing_stores_nothing_twice(workdir):
    tag = uid()
    entities = [
        result(f"{tag}k{i}", host=f"sun9-{i % 2}.userapi.com", query="&yr_delay=0.4")
        for i in range(30)
    ]
    db_path = build_db(workdir, entities)
    out = workdir / "yandex_images"
    with ImageWebServer() as web:
        args = ("--proxy", web.proxy_url, "--per-host", "2", "--executor", "ray")
        proc = start("5_Download_async.py", *args, cwd=workdir)
        try:
            poll("first request at the image web", lambda: sum(web.hits.values()), proc)
            victims = poll("a Ray worker fetching", lambda: ray_workers(proc, "FetchWorker"), proc)
            for victim in victims:  # type: ignore[attr-defined]
                victim.kill()  # every shard that has started is cut off
            finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        rows = ledger(db_path)
        originals = {url: r for url, r in rows.items() if r["variant_type"] == "original"}
        assert len(originals) == 30
        assert all(r["status"] == "done" for r in originals.values()), originals
        files = images_on_disk(out)
        assert sorted(files) == sorted(Path(r["path"]).name for r in originals.values())
        assert len(set(files.values())) == 30  # every picture once
        assert not [p for p in out.iterdir() if p.name.endswith(".part")]
        assert sorted(Path(n).stem for n in sidecars(out)) == sorted(Path(n).stem for n in files)
        assert max(web.hits.values()) >= 2  # the dead worker's shard was fetched again
        hits_before = sum(web.hits.values())
        again = run_script("5_Download_async.py", *args, cwd=workdir, timeout=WAIT)
        assert again.returncode == 0, again.stdout + again.stderr
        assert count_of(again.stdout, "had a file from an earlier run") == 30
        assert sum(web.hits.values()) == hits_before  # nothing fetched again
    assert images_on_disk(out) == files
    assert ledger(db_path) == rows


def done_rows(db_path: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM downloads WHERE status = 'done'").fetchone()[
                0
            ]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def test_download_driver_killed_9_then_rerun_on_ray_loses_nothing_stores_nothing_twice(workdir):
    """kill -9 of the step (the Ray driver) mid-run; the Ray it started goes with it
    (what is left is killed here); the same command again finishes the work once."""
    tag = uid()
    entities = [
        result(f"{tag}d{i}", host=f"sun9-{i % 2}.userapi.com", query="&yr_delay=0.5")
        for i in range(30)
    ]
    db_path = build_db(workdir, entities)
    out = workdir / "yandex_images"
    with ImageWebServer() as web:
        args = ("--proxy", web.proxy_url, "--per-host", "1", "--executor", "ray")
        proc = start("5_Download_async.py", *args, cwd=workdir)
        family: list[psutil.Process] = []
        try:
            poll("a first file in the ledger", lambda: done_rows(db_path), proc)
            family = psutil.Process(proc.pid).children(recursive=True)
            proc.kill()  # SIGKILL: no cleanup of any kind in the driver
            proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for child in family:  # Ray's own processes, had they outlived the driver
                with contextlib.suppress(psutil.Error):
                    child.kill()
        assert done_rows(db_path) < 30, "the kill came too late to cut the run"
        again = run_script("5_Download_async.py", *args, cwd=workdir, timeout=WAIT)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "Traceback" not in again.stdout + again.stderr
    rows = ledger(db_path)
    originals = {url: r for url, r in rows.items() if r["variant_type"] == "original"}
    assert len(originals) == 30
    assert all(r["status"] == "done" for r in originals.values()), originals
    files = images_on_disk(out)
    assert sorted(files) == sorted(Path(r["path"]).name for r in originals.values())
    assert len(set(files.values())) == 30  # every picture once
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_download_disk_full_on_ray_stops_with_the_local_line_and_a_rerun_finishes(
    workdir,
    small_disk,  # noqa: F811  (the fixture imported above)
):
    """The shared folder fills up under the workers: the step stops with the local
    path's one line, keeps what it stored; with space again, a re-run on Ray finishes."""
    tag = uid()
    n = 30  # ~65 KB each: about twice what the disk holds
    build_db(workdir, [result(f"{tag}{i:02d}", host=f"sun9-{60 + i % 3}.userapi.com")
                       for i in range(n)])  # fmt: skip
    out = small_disk / "images"
    with ImageWebServer() as web:
        args = ("--proxy", web.proxy_url, "--out", str(out), "--executor", "ray")
        full = run_script("5_Download_async.py", *args, cwd=workdir, timeout=WAIT)
        assert full.returncode == 1, full.stdout + full.stderr
        said = " ".join(full.stderr.split())
        assert said.count("Error:") == 1 and said.startswith("Error: stopped: disk full"), said
        assert "Traceback" not in full.stdout + full.stderr
        assert not [p for p in out.iterdir() if p.name.endswith(".part")]
        kept = images_on_disk(out)
        assert kept and len(kept) < n
        subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
        again = run_script("5_Download_async.py", *args, cwd=workdir, timeout=WAIT)
        assert again.returncode == 0, again.stdout + again.stderr
    files = images_on_disk(out)
    assert len(files) == n and len(set(files.values())) == n  # each picture once
    assert all(kept[name] == files[name] for name in kept)  # earlier files untouched
    rows = ledger(workdir / "yandex_images.db")
    done = sorted(Path(r["path"]).name for r in rows.values() if r["status"] == "done")
    assert done == sorted(files)


HEAD = """
import logging, sys
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes it
ray.shutdown()
"""


def test_download_joins_a_running_cluster_with_ray_address(workdir):
    """--ray-address: the step joins a cluster it did not start (the package is
    shipped with the job) and leaves it running."""
    entities = [result(f"{uid()}j{i}", host=f"sun9-{i % 3}.userapi.com") for i in range(6)]
    db_path = build_db(workdir, entities)
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert head.stdout is not None
        address = head.stdout.readline().strip()
        assert address, "the test's Ray head did not start"
        with ImageWebServer() as web:
            done = run_script("5_Download_async.py", "--proxy", web.proxy_url, "--executor", "ray",
                              "--ray-address", address, cwd=workdir, timeout=WAIT)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"Executor: Ray, cluster {address}: 1 node, 2 CPUs" in done.stdout
        assert "Traceback" not in done.stdout + done.stderr
        assert [r["status"] for r in ledger(db_path).values()] == ["done"] * 6
        assert head.poll() is None  # the cluster is still up: the step only left it
    finally:
        assert head.stdin is not None
        head.stdin.close()
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()


# ------------------------------------------------------------------ step 7.3


def test_quality_on_ray_equals_local_even_with_an_actor_killed(workdir):
    """Same scores, categories and sorted files as local; an actor killed after the
    first rows are in, the run still scores every image once."""
    source = workdir / "photos"
    make_images(source)
    for i in range(16):  # enough batches that the kill lands mid-run
        _photo(640, 480, 100 + i).save(source / f"extra{i:02d}.jpg", quality=90)
    copy = workdir / "photos_local"
    shutil.copytree(source, copy)
    local = run_script("7_3_separate_images_by_quality.py", "--source", copy, "--model", "piqe",
                       "--dest", copy / "quality_sorted", "--yes", cwd=workdir)  # fmt: skip
    assert local.returncode == 0, local.stdout + local.stderr

    report = source / "quality_sorted" / "quality_report.db"

    def rows_in() -> int:
        if not report.exists():
            return 0
        try:
            conn = sqlite3.connect(report)
            try:
                return conn.execute("SELECT COUNT(*) FROM image_quality").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error:
            return 0

    proc = start("7_3_separate_images_by_quality.py", "--source", source, "--model", "piqe",
                 "--dest", source / "quality_sorted", "--yes", "--executor", "ray", cwd=workdir)  # fmt: skip
    try:
        poll("rows in quality_report.db", rows_in, proc)
        actors = poll("a scoring actor", lambda: ray_workers(proc, "MapWorker"), proc)
        actors[0].kill()  # type: ignore[index]
        out, _err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Executor: Ray, embedded Ray on this machine" in out

    keys = ("width", "height", "format", "file_size", "max_score", "category", "error_message",
            "error_stage", "scores_json", "models", "max_side")  # fmt: skip
    ray_rows = {
        name: tuple(r[k] for k in keys) for name, r in db_rows(source / "quality_sorted").items()
    }
    local_rows = {
        name: tuple(r[k] for k in keys) for name, r in db_rows(copy / "quality_sorted").items()
    }
    assert len(ray_rows) == 9 + 16
    assert ray_rows == local_rows
    for category in ("high", "medium", "low"):
        ray_dir, local_dir = (
            source / "quality_sorted" / category,
            copy / "quality_sorted" / category,
        )
        ray_names = sorted(p.name for p in ray_dir.iterdir()) if ray_dir.exists() else []
        local_names = sorted(p.name for p in local_dir.iterdir()) if local_dir.exists() else []
        assert ray_names == local_names


def test_quality_on_ray_missing_weights_end_with_the_local_one_line(workdir):
    source = workdir / "w"
    source.mkdir()
    _photo(64, 48, 1).save(source / "a.jpg")
    hub = workdir / "empty_hub"
    hub.mkdir()
    lines = {}
    for executor in ("local", "ray"):
        done = run_script("7_3_separate_images_by_quality.py", "--source", source, "--model",
                          "musiq", "--weights-dir", hub, "--yes", "--executor", executor,
                          cwd=workdir, timeout=WAIT)  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        lines[executor] = " ".join(done.stderr.split())
    assert "weights for musiq are missing" in lines["ray"]
    assert lines["ray"] == lines["local"]


# ------------------------------------------------------------------ yandex-reverse run


def test_run_passes_the_ray_flags_to_step_5(tmp_path):
    """``yandex-reverse run --executor ray`` runs step 5 on Ray (step 7.3 takes the same
    flags); a Ray flag without ``--executor ray`` is a usage error there too."""
    tag = uid()
    write_xhr(tmp_path / "XHR", "cat.jpg", 0, [
        entity(f"{tag}r{i}", pos=i, previews=[], dups=[],
               orig_url=f"http://sun9-{i % 2}.userapi.com/impg/{tag}r{i}.jpg?size=900x600")
        for i in range(4)
    ])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "COLUMNS": "200"}
    command = [sys.executable, "-m", "yandex_reverse", "run", "--from", "import"]
    wrong = subprocess.run([*command, "--gpus-per-worker", "1"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=WAIT)  # fmt: skip
    assert wrong.returncode == 2
    assert "--gpus-per-worker needs --executor ray" in wrong.stderr
    with ImageWebServer() as web:
        done = subprocess.run(
            [*command, "--to", "download", "--executor", "ray"], cwd=tmp_path,
            env={**env, "HTTP_PROXY": web.proxy_url}, capture_output=True, text=True,
            timeout=WAIT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "yandex-reverse download --db yandex_images.db --out yandex_images --executor ray" in (
        done.stdout
    )
    assert "Executor: Ray, embedded Ray on this machine" in done.stdout
    db = sqlite3.connect(tmp_path / "yandex_images.db")
    try:
        assert db.execute("SELECT count(*) FROM downloads WHERE status = 'done'").fetchone() == (4,)
    finally:
        db.close()
