"""The placement engine of steps 7.1, 7.2 and 7.3: read every header, let the
step name a folder for each image, then move or copy them there in parallel
without ever overwriting (see :func:`yandex_reverse.fsutil.place_file`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .fsutil import Placed, free_targets, place_file, same_content
from .imageinfo import ImageInfo, read_infos


def _plan_group(
    group: list[Path], dest_dir: Path, mode: str, taken: dict[Path, Path]
) -> list[Placed]:
    """What :func:`place_file` would do, for a dry run: nothing is written,
    so names planned earlier in this run are remembered in ``taken``."""
    planned: list[Placed] = []
    for source in group:
        for candidate in free_targets(dest_dir, source.name):
            if candidate in taken:
                if same_content(source, taken[candidate]):
                    planned.append(Placed(source, candidate, "already"))
                    break
                continue
            if candidate.exists():
                if same_content(source, candidate):
                    planned.append(Placed(source, candidate, "already"))
                    break
                continue
            taken[candidate] = source
            planned.append(Placed(source, candidate, "moved" if mode == "move" else "copied"))
            break
    return planned


def sort_into_folders(
    assignments: Iterable[tuple[Path, Path]],
    *,
    mode: str,
    dry_run: bool = False,
    workers: int | None = None,
    advance: Callable[[int], None] | None = None,
) -> tuple[list[Placed], list[tuple[Path, str]]]:
    """Put each ``(file, folder)`` there with :func:`place_file`; return (placed, failed).

    Threads, since copying and renaming release the GIL. Files of the same
    name bound for the same folder are placed one after the other in the
    given order, so which one gets ``_1`` never depends on thread timing. A
    file that cannot be placed is a ``(path, reason)``, and the others go on.
    """
    groups: dict[tuple[Path, str], list[Path]] = {}
    for source, dest_dir in assignments:
        groups.setdefault((Path(dest_dir), source.name), []).append(source)
    step = advance or (lambda _n: None)
    placed: list[Placed] = []
    failed: list[tuple[Path, str]] = []
    if dry_run:
        taken: dict[Path, Path] = {}
        for (dest_dir, _name), group in groups.items():
            placed.extend(_plan_group(group, dest_dir, mode, taken))
            step(len(group))
        return placed, failed

    def run_group(dest_dir: Path, group: list[Path]) -> tuple[list[Placed], list[tuple[Path, str]]]:
        ok: list[Placed] = []
        bad: list[tuple[Path, str]] = []
        for source in group:
            try:
                ok.append(place_file(source, dest_dir, mode=mode))
            except Exception as exc:
                bad.append((source, f"{type(exc).__name__}: {exc}"))
        return ok, bad

    workers = workers or min(16, 2 * (os.cpu_count() or 4))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(run_group, dest_dir, group): len(group)
            for (dest_dir, _name), group in groups.items()
        }
        try:
            for future in as_completed(futures):
                ok, bad = future.result()
                placed.extend(ok)
                failed.extend(bad)
                step(futures[future])
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return placed, failed


@dataclass
class SortResult:
    """What :func:`sort_images` did (or, in a dry run, would do)."""

    found: int
    placed: list[Placed]
    unreadable: list[tuple[Path, str]]
    failed: list[tuple[Path, str]]

    def counts(self) -> dict[str, int]:
        """Files per output folder name (placed now or found already there)."""
        out: dict[str, int] = {}
        for item in self.placed:
            out[item.target.parent.name] = out.get(item.target.parent.name, 0) + 1
        return out


def sort_images(
    paths: Sequence[Path],
    dest: Path,
    assign: Callable[[Sequence[tuple[Path, ImageInfo]]], Sequence[str]],
    *,
    mode: str,
    dry_run: bool = False,
    workers: int | None = None,
) -> SortResult:
    """Read every header in parallel, let ``assign`` name a folder under ``dest``
    for each readable image (it sees them all at once, so it may adapt to the
    whole set), then move or copy them there. Unreadable files stay in place.
    """
    from yandex_reverse import console  # the terminal side; sorting.py stays usable without it
    from yandex_reverse.i18n import _

    paths = list(paths)
    with console.progress(_("Reading sizes"), len(paths)) as advance:
        infos = read_infos(paths, workers=workers, advance=advance)
    readable = [(p, i) for p, i in zip(paths, infos, strict=True) if isinstance(i, ImageInfo)]
    unreadable = [(p, i) for p, i in zip(paths, infos, strict=True) if isinstance(i, str)]
    names = list(assign(readable))
    plan = [(path, Path(dest) / name) for (path, _info), name in zip(readable, names, strict=True)]
    label = "Planning" if dry_run else ("Moving" if mode == "move" else "Copying")
    with console.progress(label, len(plan)) as advance:
        placed, failed = sort_into_folders(plan, mode=mode, dry_run=dry_run, advance=advance)
    return SortResult(len(paths), placed, unreadable, failed)


def print_sort_report(
    result: SortResult,
    *,
    dest: Path,
    mode: str,
    dry_run: bool,
    order: Callable[[str], object] = str,
    limit: int = 100,
) -> None:
    """The distribution (folders in ``order``), the totals, and every file left behind."""
    from yandex_reverse import console
    from yandex_reverse.i18n import _

    counts = result.counts()
    total = sum(counts.values())
    rows = [
        (name, count, f"{100 * count / total:.1f}%")
        for name, count in sorted(counts.items(), key=lambda kv: order(kv[0]))
    ]
    rows.append((_("total"), total, "100.0%" if total else "-"))
    heading = _("Distribution by folder")
    if dry_run:
        heading = _("Distribution by folder (dry run: nothing was moved or copied)")
    headers = (_("folder"), _("files"), _("share"))
    console.console.print(console.table(heading, headers, rows))
    new = sum(1 for item in result.placed if item.status != "already")
    moved = mode == "move"
    if dry_run:
        verb = _("would be moved") if moved else _("would be copied")
    else:
        verb = _("moved") if moved else _("copied")
    console.print_summary(
        _("Summary"),
        [
            (_("images found"), result.found),
            (verb, new),
            (_("already in place (identical file there)"), total - new),
            (_("unreadable, left in place"), len(result.unreadable)),
            (
                _("failed to move, left in place") if moved else _("failed to copy, left in place"),
                len(result.failed),
            ),
        ],
    )
    for title, items in (
        (_("Unreadable files (left in place)"), result.unreadable),
        (_("Files that could not be moved") if moved else _("Files that could not be copied"),
         result.failed),
    ):  # fmt: skip
        if not items:
            continue
        console.console.print(f"[bold]{console.esc(title)}:[/bold]")
        for path, reason in items[:limit]:
            console.console.print(f"  {path}: {reason}", markup=False)
        for path, reason in items:
            console.log.warning("%s: %s: %s", title, path, reason)
        if len(items) > limit:
            more = _("  ... and {n} more (all in the log file)").format(n=len(items) - limit)
            console.console.print(more, markup=False)
    if dry_run:
        line = _("Sorted images would go in {dest} (nothing was changed).")
    elif mode == "copy":
        line = _("Sorted images are in {dest} (the originals stay in the source).")
    else:
        line = _("Sorted images are in {dest} (the originals were moved).")
    console.console.print(line.format(dest=dest), markup=False)
