"""``yandex-reverse run``: steps 1 → 7.3 in the working folder, with their defaults, then the report.

The pipeline is written once, here; ``make demo`` runs the same steps against
the offline imitation (adding its flags). Each step runs as its own process
(``python -m yandex_reverse <command>``), exactly as a user would run it;
the first step that fails stops the run, and since every step resumes, the
same command again continues where it stopped.

The working folder holds the query photos; everything the steps make goes
next to them: ``XHR/``, ``yandex_images.db``, ``vk_images.db``,
``yandex_images/`` (the downloads), ``sorted/<kind>/`` and ``report.html``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import i18n, raycluster
from .console import StepFailed, UsageError, console, esc
from .i18n import N_, _

DOWNLOADS = "yandex_images"
SORTED = "sorted"
REPORT = "report.html"


@dataclass(frozen=True)
class Step:
    command: str  # a `yandex-reverse` command
    title: str  # an N_() msgid
    args: tuple[str, ...]


def pipeline(photos: str = ".") -> list[Step]:
    """Steps 1 → 7.3 with the arguments that make them run unattended in one folder."""
    return [
        Step("crawl", N_("Step 1: reverse search in Yandex Images"),
             ("--images", photos, "--xhr-dir", "XHR")),
        Step("import", N_("Step 2: XHR → SQLite"), ()),
        Step("domains", N_("Step 3: domains and the VK share"), ()),
        Step("cleanup", N_("Step 4: DB cleanup"), ("--db", "yandex_images.db", "--yes")),
        Step("download", N_("Step 5: downloading the originals"),
             ("--db", "yandex_images.db", "--out", DOWNLOADS)),
        Step("dedup", N_("Step 6: duplicates → quarantine"),
             (DOWNLOADS, "--mode", "both", "--yes", "--report", "dedup_report.json")),
        Step("orientation", N_("Step 7.1: by orientation"),
             ("--source", DOWNLOADS, "--dest", f"{SORTED}/orientation", "--mode", "copy",
              "--square", "separate", "--yes")),
        Step("megapixels", N_("Step 7.2: by megapixels"),
             ("--source", DOWNLOADS, "--dest", f"{SORTED}/megapixels", "--mode", "copy",
              "--strategy", "3", "--yes")),
        Step("quality", N_("Step 7.3: by quality"),
             ("--source", DOWNLOADS, "--dest", f"{SORTED}/quality", "--mode", "copy",
              "--percentiles", "30,70", "--yes")),
        Step("report", N_("Report: where each photo was found"), ("--out", REPORT)),
    ]  # fmt: skip


def child_env() -> dict[str, str]:
    """The environment of a step: this package importable, this language, unbuffered output."""
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": package_root + (os.pathsep + path if path else ""),
        "PYTHONUNBUFFERED": "1",
        i18n.CHILD_ENV: i18n.language(),
        "COLUMNS": os.environ.get("COLUMNS", str(max(console.width, 120))),
    }


def run_step(step: Step, cwd: Path, extra: Sequence[str] = ()) -> None:
    """Run one step in ``cwd``; its own output is shown as it comes. A failure raises StepFailed."""
    console.rule(f"[bold]{esc(_(step.title))}")
    args = [*step.args, *extra]
    console.print(esc("$ " + " ".join(["yandex-reverse", step.command, *args])), style="dim")
    command = [sys.executable, "-m", "yandex_reverse", step.command, *args]
    started = time.perf_counter()
    code = subprocess.run(command, cwd=cwd, stdin=subprocess.DEVNULL, env=child_env()).returncode
    seconds = time.perf_counter() - started
    console.print(
        esc(_("{command}: exit {code} in {seconds:.1f} s").format(
            command=step.command, code=code, seconds=seconds
        )),
        style="dim",
    )  # fmt: skip
    if code != 0:
        raise StepFailed(
            _("{title} failed (exit {code}); fix what it says and run the same command again: "
              "every step resumes").format(title=_(step.title), code=code)
        )  # fmt: skip


def run_pipeline(
    cwd: Path,
    steps: Sequence[Step],
    extra: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Run ``steps`` in order in ``cwd``, stopping at the first that fails."""
    for step in steps:
        run_step(step, cwd, (extra or {}).get(step.command, ()))


def build_parser() -> argparse.ArgumentParser:
    from .cli import add_common_flags

    parser = argparse.ArgumentParser(
        prog="yandex-reverse run",
        description=_(
            "Steps 1 → 7.3 in the working folder with their defaults, then the report. "
            "Stops at the first step that fails; run it again to continue."
        ),
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("."),
        help=_("working folder with the query photos (default: the current folder)"),
    )  # fmt: skip
    parser.add_argument(
        "--from", dest="start", metavar="COMMAND",
        choices=[s.command for s in pipeline()],
        help=_("start at this step (crawl, import, ...); the earlier ones are done"),
    )  # fmt: skip
    parser.add_argument(
        "--to", dest="stop", metavar="COMMAND",
        choices=[s.command for s in pipeline()],
        help=_("stop after this step (default: the report, the last one)"),
    )  # fmt: skip
    add_common_flags(parser, yes=True)
    raycluster.add_flags(parser, gpus=True)  # for steps 5 and 7.3
    return parser


def ray_args(args: argparse.Namespace) -> dict[str, list[str]]:
    """The Ray flags of ``run``, handed to the steps that take them (5 and 7.3)."""
    if args.executor != "ray":
        return {}
    common = ["--executor", "ray"]
    if args.ray_address:
        common += ["--ray-address", args.ray_address]
    quality = list(common)
    if args.gpus_per_worker is not None:
        quality += ["--gpus-per-worker", f"{args.gpus_per_worker:g}"]
    return {"download": common, "quality": quality}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raycluster.check_flags(args)
    folder = args.dir.absolute()
    if not folder.is_dir():
        raise StepFailed(_("not a folder: {path}").format(path=folder))
    steps = pipeline()
    names = [s.command for s in steps]
    first = names.index(args.start) if args.start else 0
    last = names.index(args.stop) if args.stop else len(names) - 1
    if last < first:
        raise UsageError(_("--to {stop} comes before --from {start}").format(
            stop=args.stop, start=args.start))  # fmt: skip
    run_pipeline(folder, steps[first : last + 1], ray_args(args))
    if (folder / REPORT).is_file() and last == len(names) - 1:
        console.print(_("Report: {path}").format(path=esc(folder / REPORT)))
    return 0
