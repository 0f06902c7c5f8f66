"""Step 6's command line: find the groups, show the plan, quarantine or delete, report, undo.

Safety rules: the kept file of a group is never touched and must still be
there before another member goes; a file changed since the scan is skipped;
nothing is removed without ``--dry-run`` first being possible, a question on
a terminal, or ``--yes``; every move is written to the JSON report (also when
interrupted) and ``--undo REPORT`` puts the files back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..console import (
    StepFailed,
    UsageError,
    ask_choice,
    ask_folder,
    confirm,
    console,
    esc,
    human_bytes,
    is_interactive,
    log,
    one_line,
    print_summary,
    setup_logging,
    table,
)
from ..fsutil import atomic_write_text, place_file, same_content, sidecars_of
from . import find
from .hashing import METHODS

MODES = ("exact", "similar", "both", "filename")
REPORT_VERSION = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="6_duplicate_finder.py",
        description=(
            "Find duplicate images: byte-exact copies, visually similar pictures (perceptual "
            "hashes) or variants of one Yandex image id (file names), then move the extra "
            "copies to a quarantine folder (default) or delete them. A JSON report records "
            "every group and every move; --undo REPORT puts moved files back."
        ),
        epilog=(
            "examples:\n"
            "  6_duplicate_finder.py yandex_images --mode exact --dry-run\n"
            "  6_duplicate_finder.py yandex_images --mode similar --threshold 10 --yes\n"
            "  6_duplicate_finder.py yandex_images --mode filename --yes\n"
            "  6_duplicate_finder.py --undo yandex_images.dedup-20250101-120000.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", nargs="?", type=Path, help="image folder (asked on a terminal)")
    parser.add_argument(
        "--mode",
        choices=(*MODES, "near"),
        help="exact: identical bytes; similar (or near): perceptual hash within --threshold; "
        "both: exact and similar in one pass; filename: same image id before the first '_'. "
        "Asked on a terminal; default without one: exact",
    )
    parser.add_argument("--hash-method", choices=METHODS, default="phash", help="default: phash")
    parser.add_argument(
        "--hash-size", type=int, default=8, help="hash side, 4..16 (hash bits = size²); default: 8"
    )
    parser.add_argument(
        "--threshold",
        type=int,
        default=12,
        help="largest Hamming distance still counted as similar (inclusive; lower = stricter); "
        "default: 12",
    )
    parser.add_argument(
        "--max-workers", type=int, default=os.cpu_count() or 1, help="default: all cores"
    )
    parser.add_argument(
        "--keep",
        choices=find.KEEP_RULES,
        default="best",
        help="which file of a group stays. best (default): highest resolution, then largest "
        "file, then shortest path (filename mode: resolution, then variant preview/full > "
        "dups > thumb); largest: biggest file; oldest/newest: by modification time; first: "
        "first in path order",
    )
    parser.add_argument(
        "--action",
        choices=("move", "delete"),
        default="move",
        help="move (default): to the quarantine folder, keeping relative paths; delete: remove",
    )
    parser.add_argument(
        "--quarantine", type=Path, help="where moved duplicates go (default: FOLDER/_duplicates)"
    )
    parser.add_argument(
        "--report", type=Path, help="JSON report (default: next to FOLDER, FOLDER.dedup-TIME.json)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would happen; change nothing"
    )
    parser.add_argument("--yes", "-y", action="store_true", help="do it without asking")
    parser.add_argument(
        "--interactive", action="store_true", help="ask before each file (terminal)"
    )
    parser.add_argument(
        "--recursive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scan subfolders (default: on)",
    )
    parser.add_argument(
        "--full-decode",
        action="store_true",
        help="decode JPEGs at full size (hashes bit-identical to imagehash on the full picture; "
        "about 3x slower)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="do not read or write FOLDER/.dedup_cache.sqlite"
    )
    parser.add_argument(
        "--undo", type=Path, metavar="REPORT", help="put back the files a report moved"
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=Path("6_duplicate_finder.log"),
        help="details and tracebacks (default: 6_duplicate_finder.log)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file)
    if args.undo:
        return undo(args.undo, dry_run=args.dry_run)
    _check(args)
    root = (
        args.folder.expanduser().absolute()
        if args.folder
        else ask_folder("Image folder", flag="FOLDER (positional)")
    )
    if not root.is_dir():
        raise UsageError(f"not a folder: {root}")
    mode = args.mode or ask_choice(
        "Mode",
        [
            ("exact", "exact: identical files"),
            ("similar", "similar: visually similar (perceptual hash)"),
            ("both", "both: exact and similar"),
            ("filename", "filename: variants of one image id"),
        ],
        flag="--mode",
        default="exact",
    )
    mode = "similar" if mode == "near" else mode
    quarantine = (args.quarantine or root / "_duplicates").expanduser().absolute()
    report_path = (
        args.report or root.parent / f"{root.name}.dedup-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    log.info("folder=%s mode=%s args=%s", root, mode, vars(args))

    started = time.time()
    found = find.scan(root, recursive=args.recursive, exclude=[quarantine])
    workers = max(1, args.max_workers)
    exact: list[list[find.Entry]] = []
    if mode in ("exact", "both"):
        exact = find.exact_groups(found, workers)
    if mode == "exact":
        groups = find.exact_to_groups(exact, args.keep)
    elif mode == "filename":
        groups = find.filename_groups(found, keep=args.keep, workers=workers)
    else:
        groups = find.similar_groups(
            found,
            exact,
            method=args.hash_method,
            hash_size=args.hash_size,
            threshold=args.threshold,
            keep=args.keep,
            draft=not args.full_decode,
            workers=workers,
            use_cache=not args.no_cache,
        )
    for note in found.notes:
        console.print(f"[yellow]{esc(note)}[/yellow]")
    _show_plan(groups, found)
    removals = [m for g in groups for m in g.removed]
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "folder": str(root),
        "mode": mode,
        "settings": {
            "hash_method": args.hash_method,
            "hash_size": args.hash_size,
            "threshold": args.threshold,
            "keep": args.keep,
            "action": args.action,
            "quarantine": str(quarantine),
            "recursive": args.recursive,
            "decode": "full" if args.full_decode else "draft",
        },
        "dry_run": args.dry_run,
        "started": _iso(started),
        "files": len(found.entries),
        "hashing": {"hashed": found.hashed, "from_cache": found.cached},
        "groups": [_group_json(g) for g in groups],
        "unreadable": [{"path": p, "reason": r} for p, r in found.unreadable],
        "hard_links": [{"path": p, "same_file_as": q} for p, q in found.hard_links],
        "moves": [],
        "deleted": [],
        "skipped": [],
    }
    counts = {"moved": 0, "deleted": 0, "skipped": 0, "failed": 0}
    freed = 0
    try:
        if args.dry_run or not removals:
            if args.dry_run:
                console.print("[bold]Dry run:[/bold] nothing was moved or deleted.")
        elif args.interactive or confirm(
            _question(args.action, removals, quarantine), assume_yes=args.yes
        ):
            freed = _apply(groups, args, root, quarantine, report, counts)
        else:
            console.print("Nothing changed.")
    finally:
        report["finished"] = _iso(time.time())
        report["counts"] = counts
        atomic_write_text(report_path, json.dumps(report, ensure_ascii=False, indent=2))
    would_free = sum(m.entry.size for m in removals)
    rows: list[tuple[str, Any]] = [
        ("files scanned", len(found.entries)),
        ("hard links/symlinks (counted once)", len(found.hard_links)),
        ("unreadable", len(found.unreadable)),
        ("groups", len(groups)),
        ("duplicates", len(removals)),
        ("bytes in duplicates", human_bytes(would_free)),
    ]
    if mode in ("similar", "both"):
        rows += [("pictures hashed", found.hashed), ("hashes from cache", found.cached)]
    if not args.dry_run:
        rows += [
            ("moved", counts["moved"]),
            ("deleted", counts["deleted"]),
            ("skipped", counts["skipped"]),
            ("failed", counts["failed"]),
            ("bytes freed", human_bytes(freed)),
        ]
    print_summary("Duplicates" + (" (dry run)" if args.dry_run else ""), rows)
    console.print(f"Report: {esc(report_path)}")
    if counts["moved"]:
        console.print(f"Undo with: 6_duplicate_finder.py --undo {esc(report_path)}")
    return 1 if counts["failed"] else 0


def _check(args: argparse.Namespace) -> None:
    """Refuse impossible settings before any work is done."""
    if not 4 <= args.hash_size <= 16:
        raise UsageError("--hash-size must be between 4 and 16")
    if args.hash_method == "whash" and args.hash_size & (args.hash_size - 1):
        raise UsageError("--hash-method whash needs a power-of-two --hash-size (4, 8 or 16)")
    if not 0 <= args.threshold < args.hash_size**2:
        raise UsageError(f"--threshold must be between 0 and {args.hash_size**2 - 1}")
    if args.max_workers < 1:
        raise UsageError("--max-workers must be at least 1")
    if not args.dry_run and not is_interactive():
        if args.interactive:
            raise UsageError("--interactive needs a terminal; use --dry-run or --yes")
        if not args.yes:
            raise UsageError(
                "duplicates would be moved or deleted: pass --yes to confirm without a terminal "
                "(or --dry-run to preview)"
            )


def _question(action: str, removals: list[find.Member], quarantine: Path) -> str:
    size = human_bytes(sum(m.entry.size for m in removals))
    if action == "delete":
        return f"Delete {len(removals)} duplicate files ({size}) permanently?"
    return f"Move {len(removals)} duplicate files ({size}) to {quarantine}?"


def _show_plan(groups: list[find.Group], found: find.Scan, limit: int = 15) -> None:
    if found.unreadable:
        console.print(f"[yellow]{len(found.unreadable)} unreadable files (left alone):[/yellow]")
        for path, reason in found.unreadable[:10]:
            console.print(f"  {esc(path)}: {esc(reason)}")
        if len(found.unreadable) > 10:
            console.print(f"  … and {len(found.unreadable) - 10} more (see the report)")
    if not groups:
        console.print("No duplicates found.")
        return
    rows = []
    for group in groups[:limit]:
        rows.append((group.kind, f"keep {group.kept.rel}", "", _wh(group.kept)))
        for member in group.removed:
            dist = "" if member.distance is None else str(member.distance)
            rows.append(("", f"  {member.entry.rel}", dist, _wh(member.entry)))
    title = f"Duplicate groups (first {min(limit, len(groups))} of {len(groups)})"
    console.print(table(title, ("kind", "file", "distance", "size"), rows, numeric_from=2))


def _wh(entry: find.Entry) -> str:
    dims = f"{entry.width}x{entry.height}, " if entry.pixels else ""
    return dims + human_bytes(entry.size)


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stamp))


def _entry_json(entry: find.Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"path": entry.rel, "bytes": entry.size}
    if entry.pixels:
        out["width"], out["height"] = entry.width, entry.height
    if entry.hash is not None:
        out["hash"] = entry.hash.hex()
    return out


def _group_json(group: find.Group) -> dict[str, Any]:
    return {
        "kind": group.kind,
        "kept": _entry_json(group.kept),
        "duplicates": [
            {**_entry_json(m.entry), "match": m.match, "distance_to_kept": m.distance}
            for m in group.removed
        ],
    }


def _apply(
    groups: list[find.Group],
    args: argparse.Namespace,
    root: Path,
    quarantine: Path,
    report: dict[str, Any],
    counts: dict[str, int],
) -> int:
    """Move or delete every duplicate; returns the bytes freed."""
    freed = 0
    total = sum(len(g.removed) for g in groups)
    label = "Deleting" if args.action == "delete" else "Moving"
    with find.ticking(label, total) as advance:
        for group in groups:
            kept = group.kept
            for member in group.removed:
                entry = member.entry
                reason = _refuse(entry, kept, group, args.action)
                if reason is None and args.interactive:
                    verb = "Delete" if args.action == "delete" else "Move"
                    if not confirm(f"{verb} {entry.rel} (kept: {kept.rel})?"):
                        reason = "declined"
                if reason:
                    counts["skipped"] += 1
                    report["skipped"].append({"path": entry.rel, "reason": reason})
                    advance()
                    continue
                try:
                    if args.action == "delete":
                        for side in sidecars_of(entry.path):
                            side.unlink()
                        entry.path.unlink()
                        report["deleted"].append(entry.rel)
                        counts["deleted"] += 1
                    else:
                        target_dir = quarantine / Path(entry.rel).parent
                        placed = place_file(entry.path, target_dir, mode="move")
                        report["moves"].append(
                            {
                                "source": str(entry.path),
                                "target": str(placed.target),
                                "sidecars": [
                                    [str(entry.path.with_suffix(s.suffix)), str(s)]
                                    for s in placed.sidecars
                                ],
                            }
                        )
                        counts["moved"] += 1
                    freed += entry.size
                except OSError as exc:
                    counts["failed"] += 1
                    report["skipped"].append({"path": entry.rel, "reason": one_line(exc)})
                    log.warning("cannot remove %s: %s", entry.path, exc)
                advance()
    return freed


def _refuse(entry: find.Entry, kept: find.Entry, group: find.Group, action: str) -> str | None:
    """Why this file must stay, or None. The kept copy must still be there, unchanged."""
    try:
        st = entry.path.stat()
        kst = kept.path.stat()
    except FileNotFoundError:
        return "kept file or duplicate vanished since the scan"
    if (st.st_dev, st.st_ino) == (kst.st_dev, kst.st_ino):
        return "same file as the kept one (hard link)"
    if st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
        return "changed since the scan"
    if kst.st_size != kept.size or kst.st_mtime_ns != kept.mtime_ns:
        return "kept file changed since the scan"
    member_is_exact = group.kind == "exact" or entry.content == kept.content >= 0
    if action == "delete" and member_is_exact and not same_content(entry.path, kept.path):
        return "bytes differ from the kept file (hash collision)"
    return None


# ------------------------------------------------------------------- undo


def undo(report_path: Path, *, dry_run: bool = False) -> int:
    """Move every file a report moved back to where it was, never overwriting."""
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        moves = report["moves"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepFailed(f"cannot read report {report_path}: {one_line(exc)}") from exc
    counts = {"restored": 0, "already back": 0, "missing": 0, "conflict": 0}
    with find.ticking("Restoring", len(moves)) as advance:
        for move in reversed(moves):
            pairs = [
                (move["target"], move["source"]),
                *[(t, s) for s, t in move.get("sidecars", [])],
            ]
            for number, (target, source) in enumerate(pairs):
                status = _restore(Path(target), Path(source), dry_run)
                if number == 0:
                    counts[status] += 1
                    if status == "conflict":
                        console.print(
                            f"[yellow]Not restored (a different file is there): {source}[/yellow]"
                        )
            advance()
    if not dry_run:
        quarantine = Path(report.get("settings", {}).get("quarantine", ""))
        if quarantine.is_dir():
            _remove_empty_dirs(quarantine)
    print_summary("Undo" + (" (dry run)" if dry_run else ""), list(counts.items()))
    return 1 if counts["conflict"] else 0


def _restore(target: Path, source: Path, dry_run: bool) -> str:
    if not target.exists():
        return "already back" if source.exists() else "missing"
    if source.exists():
        if same_content(source, target):
            if not dry_run:
                target.unlink()
            return "already back"
        return "conflict"
    if dry_run:
        return "restored"
    source.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(target, source)  # fails rather than overwrite
        target.unlink()
    except FileExistsError:
        return "conflict"
    except OSError:
        shutil.move(target, source)
    return "restored"


def _remove_empty_dirs(top: Path) -> None:
    for folder, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
        try:
            os.rmdir(folder)
        except OSError:
            pass
