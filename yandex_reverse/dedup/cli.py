"""Step 6's command line: find the groups, show the plan, quarantine or delete, report, undo.

Safety rules: the kept file of a group is never touched and must still be
there before another member goes; a file changed since the scan is skipped;
nothing is removed without ``--dry-run`` first being possible, a question on
a terminal, or ``--yes``; every move is written to the JSON report (also when
interrupted) and ``--undo REPORT`` puts the files back.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

from .. import i18n
from ..cli import HelpFormatter, Yes, add_common_flags
from ..console import (
    StepFailed,
    UsageError,
    ask_choice,
    ask_folder,
    confirm,
    console,
    human_bytes,
    is_interactive,
    log,
    one_line,
    print_summary,
    say,
    setup_logging,
)
from ..fsutil import (
    QUARANTINE_JOURNALS,
    SIDECAR_EXTENSIONS,
    atomic_write_text,
    is_within,
    place_file,
    same_content,
    sidecars_of,
)
from ..i18n import N_, _, ngettext
from . import find
from .hashing import METHODS

TYPE_CHECKING = False  # typing's, without importing typing (exact mode's start counts)
if TYPE_CHECKING:
    from typing import Any

MODES = ("exact", "similar", "both", "filename")
REPORT_VERSION = 1
KINDS = (N_("exact"), N_("similar"), N_("filename"))  # group kinds, as shown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="6_duplicate_finder.py",
        description=_(
            "Find duplicate images: byte-exact copies, visually similar pictures (perceptual "
            "hashes) or variants of one Yandex image id (file names), then move the extra "
            "copies to a quarantine folder (default) or delete them. A JSON report records "
            "every group and every move; --undo REPORT puts moved files back."
        ),
        epilog=_("examples:")
        + (
            "\n"
            "  6_duplicate_finder.py yandex_images --mode exact --dry-run\n"
            "  6_duplicate_finder.py yandex_images --mode similar --threshold 10 --yes\n"
            "  6_duplicate_finder.py yandex_images --mode filename --yes\n"
            "  6_duplicate_finder.py --undo yandex_images.dedup-20250101-120000.json"
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "folder", nargs="?", type=Path, help=_("image folder (asked on a terminal)")
    )
    parser.add_argument(
        "--mode",
        choices=(*MODES, "near"),
        help=_(
            "exact: identical bytes; similar (or near): perceptual hash within --threshold; "
            "both: exact and similar in one pass; filename: same image id before the first '_'. "
            "Asked on a terminal; default without one: exact"
        ),
    )
    parser.add_argument("--hash-method", choices=METHODS, default="phash", help=_("default: phash"))
    parser.add_argument(
        "--hash-size",
        type=int,
        default=8,
        help=_("hash side, 4..16 (hash bits = size²); default: 8"),
    )
    parser.add_argument(
        "--threshold",
        type=int,
        default=12,
        help=_(
            "largest Hamming distance still counted as similar (inclusive; lower = stricter); "
            "default: 12"
        ),
    )
    parser.add_argument(
        "--max-workers", type=int, default=os.cpu_count() or 1, help=_("default: all cores")
    )
    parser.add_argument(
        "--keep",
        choices=find.KEEP_RULES,
        default="best",
        help=_(
            "which file of a group stays. best (default): highest resolution, then largest "
            "file, then shortest path (filename mode: resolution, then variant preview/full > "
            "dups > thumb); largest: biggest file; oldest/newest: by modification time; first: "
            "first in path order"
        ),
    )
    parser.add_argument(
        "--action",
        choices=("move", "delete"),
        default="move",
        help=_("move (default): to the quarantine folder, keeping relative paths; delete: remove"),
    )
    parser.add_argument(
        "--quarantine", type=Path, help=_("where moved duplicates go (default: FOLDER/_duplicates)")
    )
    parser.add_argument(
        "--report",
        type=Path,
        help=_(
            "JSON report (default: next to FOLDER, FOLDER.dedup-TIME.json; "
            "a dry run writes one only when this is given)"
        ),
    )
    parser.add_argument(
        "--dry-run", action="store_true", help=_("show what would happen; change nothing")
    )
    parser.add_argument("--yes", "-y", action=Yes, help=_("do it without asking"))
    parser.add_argument(
        "--interactive", action="store_true", help=_("ask before each file (terminal)")
    )
    parser.add_argument(
        "--recursive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=_("scan subfolders (default: on)"),
    )
    parser.add_argument(
        "--full-decode",
        action="store_true",
        help=_(
            "decode JPEGs at full size (hashes bit-identical to imagehash on the full picture; "
            "about 3x slower)"
        ),
    )
    parser.add_argument(
        "--no-cache", action="store_true", help=_("do not read or write FOLDER/.dedup_cache.sqlite")
    )
    parser.add_argument(
        "--undo", type=Path, metavar="REPORT", help=_("put back the files a report moved")
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=Path("6_duplicate_finder.log"),
        help=_("details and tracebacks (default: 6_duplicate_finder.log)"),
    )
    add_common_flags(parser)
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
        else ask_folder(_("Image folder"), flag="FOLDER (positional)")
    )
    if not root.is_dir():
        raise UsageError(_("not a folder: {path}").format(path=root))
    mode = args.mode or ask_choice(
        _("Mode"),
        [
            ("exact", _("exact: identical files")),
            ("similar", _("similar: visually similar (perceptual hash)")),
            ("both", _("both: exact and similar")),
            ("filename", _("filename: variants of one image id")),
        ],
        flag="--mode",
        default="exact",
    )
    mode = "similar" if mode == "near" else mode
    # Exact mode's tens of thousands of entries, groups and lines hold no cycles:
    # the collector's passes over them were 2 % of its instructions (20,000 files).
    run = find.without_gc(_run) if mode == "exact" else _run
    return run(args, root, mode)


def _run(args: argparse.Namespace, root: Path, mode: str) -> int:
    """Find the groups, show the plan, act (unless a dry run), report."""
    quarantine = Path(
        os.path.normpath((args.quarantine or root / "_duplicates").expanduser().absolute())
    )
    if args.action == "move" and is_within(root, quarantine):
        raise UsageError(
            _(
                "the quarantine {quarantine} would hold the folder itself; "
                "choose one inside it or elsewhere (--quarantine)"
            ).format(quarantine=quarantine)
        )
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
    # A dry run writes no report unless asked (--report): it changed nothing.
    report_path = args.report or (
        None if args.dry_run else root.parent / f"{root.name}.dedup-{run_id[:15]}.json"
    )
    log.info("folder=%s mode=%s args=%s", root, mode, vars(args))

    started = time.time()
    workers = max(1, args.max_workers)
    # Exact mode needs entries only for files whose size another file has.
    found = find.scan(
        root,
        recursive=args.recursive,
        exclude=[quarantine],
        shared_sizes=mode == "exact",
        workers=workers,
    )
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
        say(note, style="yellow")
    _show_plan(groups, found)
    removals = [m for g in groups for m in g.removed]
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "run": run_id,
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
        "files": found.files,
        "hashing": {"hashed": found.hashed, "from_cache": found.cached},
        "groups": groups,  # written by _report_text, straight from the groups
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
                say(_("Dry run: nothing was moved or deleted."))
        elif args.interactive or confirm(
            _question(args.action, removals, quarantine), assume_yes=args.yes
        ):
            freed = _apply(groups, args, root, quarantine, report, counts)
        else:
            say(_("Nothing changed."))
    finally:
        report["finished"] = _iso(time.time())
        report["counts"] = counts
        if report_path is not None:
            # No indent (``python -m json.tool REPORT`` shows it indented).
            atomic_write_text(report_path, _utf8_safe(_report_text(report) + "\n"))
    would_free = sum(m.entry.size for m in removals)
    rows: list[tuple[str, Any]] = [
        (_("files scanned"), found.files),
        (_("hard links/symlinks (counted once)"), len(found.hard_links)),
        (_("unreadable"), len(found.unreadable)),
        (_("groups"), len(groups)),
        (_("duplicates"), len(removals)),
        (_("bytes in duplicates"), human_bytes(would_free)),
    ]
    if mode in ("similar", "both"):
        rows += [(_("pictures hashed"), found.hashed), (_("hashes from cache"), found.cached)]
    if not args.dry_run:
        rows += [
            (_("moved"), counts["moved"]),
            (_("deleted"), counts["deleted"]),
            (_("skipped"), counts["skipped"]),
            (_("failed"), counts["failed"]),
            (_("bytes freed"), human_bytes(freed)),
        ]
    print_summary(_("Duplicates (dry run)") if args.dry_run else _("Duplicates"), rows, plain=True)
    if report_path is not None:
        say(_("Report: {path}").format(path=report_path))
    if counts["moved"]:
        say(_("Undo with: {command}").format(command=f"6_duplicate_finder.py --undo {report_path}"))
    return 1 if counts["failed"] else 0


def _check(args: argparse.Namespace) -> None:
    """Refuse impossible settings before any work is done."""
    if not 4 <= args.hash_size <= 16:
        raise UsageError(_("--hash-size must be between 4 and 16"))
    if args.hash_method == "whash" and args.hash_size & (args.hash_size - 1):
        raise UsageError(_("--hash-method whash needs a power-of-two --hash-size (4, 8 or 16)"))
    if not 0 <= args.threshold < args.hash_size**2:
        raise UsageError(
            _("--threshold must be between 0 and {most}").format(most=args.hash_size**2 - 1)
        )
    if args.max_workers < 1:
        raise UsageError(_("--max-workers must be at least 1"))
    if not args.dry_run and not is_interactive():
        if args.interactive:
            raise UsageError(_("--interactive needs a terminal; use --dry-run or --yes"))
        if not args.yes:
            raise UsageError(
                _(
                    "duplicates would be moved or deleted: pass --yes to confirm without a "
                    "terminal (or --dry-run to preview)"
                )
            )


def _question(action: str, removals: list[find.Member], quarantine: Path) -> str:
    size = human_bytes(sum(m.entry.size for m in removals))
    n = len(removals)
    if action == "delete":
        text = ngettext(
            "Delete {n} duplicate file ({size}) permanently?",
            "Delete {n} duplicate files ({size}) permanently?",
            n,
        )
    else:
        text = ngettext(
            "Move {n} duplicate file ({size}) to {quarantine}?",
            "Move {n} duplicate files ({size}) to {quarantine}?",
            n,
        )
    return text.format(n=n, size=size, quarantine=quarantine)


def _show_plan(groups: list[find.Group], found: find.Scan, limit: int = 15) -> None:
    n_bad = len(found.unreadable)
    if found.unreadable:
        line = ngettext(
            "{n} unreadable file (left alone):", "{n} unreadable files (left alone):", n_bad
        ).format(n=n_bad)
        say(line, style="yellow")
        for path, reason in found.unreadable[:10]:
            say(f"  {path}: {reason}")
        if len(found.unreadable) > 10:
            more = _("  … and {n} more (see the report)").format(n=n_bad - 10)
            say(more)
    if not groups:
        say(_("No duplicates found."))
        return
    # Plain lines, not a table: a long path stays whole, and rendering a
    # table cost more than scanning 2,000 files (step 6 exact vs jdupes).
    title = _("Duplicate groups (first {shown} of {n}):").format(
        shown=min(limit, len(groups)), n=len(groups)
    )
    say(title, style="bold")
    lines = []
    for group in groups[:limit]:
        keep = _("{kind}: keep {path} ({size})").format(
            kind=i18n._(group.kind), path=group.kept.rel, size=_wh(group.kept)
        )
        lines.append("  " + keep)
        for member in group.removed:
            similar = member.match == "similar" and member.distance is not None
            dist = _("distance {n}, ").format(n=member.distance) if similar else ""
            lines.append(f"    {member.entry.rel} ({dist}{_wh(member.entry)})")
    say("\n".join(lines))


def _wh(entry: find.Entry) -> str:
    dims = f"{entry.width}x{entry.height}, " if entry.pixels else ""
    return dims + human_bytes(entry.size)


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stamp))


@find.without_gc
def _report_text(report: dict[str, Any]) -> str:
    """``json.dumps(report, ensure_ascii=False)``, its ``groups`` (the
    :class:`find.Group` objects themselves) written by :func:`_groups_text`.

    The groups are nearly all of a report; made into dicts and encoded by
    ``json`` they cost more than finding them (20,000 files, exact mode),
    and ``json``'s import is a few per cent of exact mode's start.
    """
    quote = _encode_string()
    fields = [
        f"{quote(key)}: " + (_groups_text(value) if key == "groups" else _json_text(value, quote))
        for key, value in report.items()
    ]
    return "{" + ", ".join(fields) + "}"


# Compiled at its first use (re keeps it): most reports never need it, and this
# character class takes longer to compile than a small report to write.
_SURROGATE = "[\ud800-\udfff]"


def _utf8_safe(text: str) -> str:
    """JSON ``text`` with each lone surrogate written as a ``\\uXXXX`` escape.

    A file name that is not UTF-8 comes from the OS with its odd bytes as
    lone surrogates, which UTF-8 cannot encode: the report (or journal) could
    not be written. Escaped, it is valid JSON, and ``json.loads`` gives back
    the same name, which the OS maps back to the same bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return re.sub(_SURROGATE, lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


def _json_text(value: Any, quote: Callable[[str], str]) -> str:
    """``json.dumps(value, ensure_ascii=False)`` for the plain values of a report
    (``json`` itself, for anything else): exact mode need not import ``json``."""
    if isinstance(value, str):
        return quote(value)
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float and value - value == 0:  # finite
        return float.__repr__(value)
    if type(value) is dict and all(type(key) is str for key in value):
        items = ", ".join(f"{quote(k)}: {_json_text(v, quote)}" for k, v in value.items())
        return "{" + items + "}"
    if type(value) in (list, tuple):
        return "[" + ", ".join(_json_text(v, quote) for v in value) + "]"
    import json

    return json.dumps(value, ensure_ascii=False)


def _groups_text(groups: list[find.Group]) -> str:
    """The JSON text of the groups, as ``json.dumps(..., ensure_ascii=False)``
    writes the dicts of :func:`_group_json` (the tests hold it to that)."""
    quote = _encode_string()
    parts = []
    for group in groups:
        members = [
            f"{{{_entry_text(m.entry, quote)}, "
            f'"match": {quote(m.match)}, "distance_to_kept": {_number(m.distance)}}}'
            for m in group.removed
        ]
        parts.append(
            f'{{"kind": {quote(group.kind)}, "kept": {{{_entry_text(group.kept, quote)}}}, '
            f'"duplicates": [{", ".join(members)}]}}'
        )
    return f"[{', '.join(parts)}]"


def _entry_text(entry: find.Entry, quote: Callable[[str], str]) -> str:
    text = f'"path": {quote(entry.rel)}, "bytes": {int(entry.size)}'
    if entry.pixels:
        text += f', "width": {int(entry.width)}, "height": {int(entry.height)}'
    if entry.hash is not None:
        text += f', "hash": "{entry.hash.hex()}"'
    return text


def _number(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def _encode_string() -> Callable[[str], str]:
    """A string as ``json.dumps(text, ensure_ascii=False)`` writes it."""
    return _json_string


# What json escapes with ensure_ascii=False: the quote, the backslash and the
# control characters below U+0020 (five of them by letter); nothing else.
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in range(0x20)}
_JSON_ESCAPES.update(
    {
        ord('"'): '\\"',
        ord("\\"): "\\\\",
        ord("\n"): "\\n",
        ord("\r"): "\\r",
        ord("\t"): "\\t",
        ord("\b"): "\\b",
        ord("\f"): "\\f",
    }
)


def _json_string(text: str) -> str:
    """``json.dumps(text, ensure_ascii=False)``, without ``json``'s C module (a
    shared library: 0.36 ms of exact mode's start to load). A printable
    text has no control character, so one without a quote or a backslash
    (nearly every path) is written as it is."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return f'"{text.translate(_JSON_ESCAPES)}"'


def _entry_json(entry: find.Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"path": entry.rel, "bytes": entry.size}
    if entry.pixels:
        out["width"], out["height"] = entry.width, entry.height
    if entry.hash is not None:
        out["hash"] = entry.hash.hex()
    return out


def _group_json(group: find.Group) -> dict[str, Any]:
    """One group as a dict: what :func:`_groups_text` writes (kept for the tests)."""
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
    """Move or delete every duplicate; returns the bytes freed.

    Every file is checked right before it goes (after the question, with
    ``--interactive``): it and the kept copy must be as scanned.
    """
    freed = 0
    total = sum(len(g.removed) for g in groups)
    label = _("Deleting") if args.action == "delete" else _("Moving")
    journal = Journal(report["run"], root, quarantine) if args.action == "move" else None
    try:
        with find.ticking(label, total) as advance:
            for group in groups:
                kept = group.kept
                for member in group.removed:
                    entry = member.entry
                    reason = None
                    if args.interactive:
                        if args.action == "delete":
                            question = _("Delete {path} (kept: {kept})?")
                        else:
                            question = _("Move {path} (kept: {kept})?")
                        question = question.format(path=entry.rel, kept=kept.rel)
                        if not confirm(question):
                            reason = _("declined")
                    reason = reason or _refuse(entry, kept, group, args.action)
                    if reason:
                        counts["skipped"] += 1
                        report["skipped"].append({"path": entry.rel, "reason": reason})
                        advance()
                        continue
                    try:
                        if journal is None:
                            for side in sidecars_of(entry.path):
                                side.unlink()
                            entry.path.unlink()
                            report["deleted"].append(entry.rel)
                            counts["deleted"] += 1
                        else:
                            report["moves"].append(journal.move(entry))
                            counts["moved"] += 1
                        freed += entry.size
                    except OSError as exc:
                        counts["failed"] += 1
                        report["skipped"].append({"path": entry.rel, "reason": one_line(exc)})
                        log.warning("cannot remove %s: %s", entry.path, exc)
                    advance()
    finally:
        if journal is not None:
            journal.close()
    return freed


def _refuse(entry: find.Entry, kept: find.Entry, group: find.Group, action: str) -> str | None:
    """Why this file must stay, or None. The kept copy must still be there,
    unchanged, and a real file (a symlink never counts as the kept copy)."""
    try:
        st = entry.path.lstat()
    except FileNotFoundError:
        return _("vanished since the scan")
    try:
        kst = kept.path.lstat()
    except FileNotFoundError:
        return _("the kept file vanished since the scan (this may be the last copy)")
    if not stat.S_ISREG(kst.st_mode):
        return _("the kept file is no longer a regular file (a symlink is not a copy)")
    if not stat.S_ISREG(st.st_mode):
        return _("no longer a regular file")
    if (st.st_dev, st.st_ino) == (kst.st_dev, kst.st_ino):
        return _("same file as the kept one (hard link)")
    if st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
        return _("changed since the scan")
    if kst.st_size != kept.size or kst.st_mtime_ns != kept.mtime_ns:
        return _("kept file changed since the scan")
    member_is_exact = group.kind == "exact" or entry.content == kept.content >= 0
    if action == "delete" and member_is_exact and not same_content(entry.path, kept.path):
        return _("bytes differ from the kept file (hash collision)")
    return None


# ------------------------------------------------------------------- undo


def undo(report_path: Path, *, dry_run: bool = False) -> int:
    """Put back what the report's run moved, as that run's journal recorded it.

    The report names the run, its folder and its quarantine; the moves come
    from the journal the run kept in its quarantine, and each must go from a
    file still as the run left it in the quarantine back to the same relative
    place in the folder, never overwriting. Anything else is refused with a
    reason and left alone. Only folders the run created are removed (when
    empty).
    """
    import json

    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        run_id = report.get("run")
        settings = report.get("settings") or {}
        root, quarantine = (
            _clean_path(report.get("folder")),
            _clean_path(settings.get("quarantine")),
        )
        listed = report.get("moves") or []
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise StepFailed(
            _("cannot read report {path}: {reason}").format(path=report_path, reason=one_line(exc))
        ) from exc
    if not isinstance(run_id, str) or not re.fullmatch(RUN_ID, run_id):
        raise StepFailed(
            _("{path} names no run this step made: nothing undone").format(path=report_path)
        )
    if root is None or quarantine is None:
        raise StepFailed(
            _("{path}: folder or quarantine is not a clean absolute path").format(path=report_path)
        )
    if is_within(root, quarantine):
        raise StepFailed(
            _("{path}: its quarantine {quarantine} holds its folder: refused").format(
                path=report_path, quarantine=quarantine
            )
        )
    moves, dirs = _read_journal(journal_path(quarantine, run_id), run_id, root, quarantine)
    if moves is None:
        line = _(
            "Nothing to undo: the run's journal {journal} is not there "
            "(already undone, or the files were never moved)."
        ).format(journal=journal_path(quarantine, run_id))
        console.print(line, markup=False, soft_wrap=True)
        return 0
    refused: list[tuple[str, str]] = []
    recorded = {(m.get("source"), m.get("target")) for m in moves}
    for move in listed if isinstance(listed, list) else []:
        pair = (move.get("source"), move.get("target")) if isinstance(move, dict) else (move, None)
        if pair not in recorded:
            refused.append((str(pair[0]), i18n._(_NOT_IN_JOURNAL)))
    counts = {"restored": 0, "already back": 0, "missing": 0, "conflict": 0, "refused": 0}
    with find.ticking(_("Restoring"), len(moves)) as advance:
        for move in reversed(moves):
            source, target = move.get("source"), move.get("target")
            reason = _check_move(root, quarantine, source, target, move)
            if reason:
                refused.append((str(source), reason))
                advance()
                continue
            status = _restore(Path(target), Path(source), dry_run)
            counts[status] += 1
            if status == "conflict":
                console.print(
                    _("Not restored (a different file is there): {path}").format(path=source),
                    markup=False,
                    soft_wrap=True,
                )
            for side in move.get("sidecars") or []:
                fields = side if isinstance(side, list) else []
                side_source, side_target, ident = [*fields, None, None, None][:3]
                reason = _check_sidecar(source, target, side_source, side_target, ident)
                if reason:
                    refused.append((str(side_source), reason))
                else:
                    _restore(Path(side_target), Path(side_source), dry_run)
            advance()
    for path, reason in refused:
        line = _("Refused: {path}: {reason}").format(path=path, reason=reason)
        console.print(line, style="yellow", markup=False, soft_wrap=True)
    counts["refused"] = len(refused)
    finished = not counts["conflict"] and not any(r[1] != i18n._(_NOT_IN_JOURNAL) for r in refused)
    made = [d for d in map(_clean_path, dirs) if d is not None and is_within(d, quarantine)]
    if dry_run:
        for folder in sorted(made, key=lambda d: -len(d.parts)):
            console.print(
                _("would remove, if empty after the undo: {path}").format(path=folder),
                markup=False,
                soft_wrap=True,
            )
    elif finished:
        journal_path(quarantine, run_id).unlink(missing_ok=True)
        for folder in sorted(made, key=lambda d: -len(d.parts)):
            try:
                if not folder.is_symlink():
                    folder.rmdir()  # only when empty
            except OSError:
                pass
    rows = [(i18n._(status), n) for status, n in counts.items()]
    print_summary(_("Undo (dry run)") if dry_run else _("Undo"), rows)
    return 1 if counts["conflict"] or counts["refused"] else 0


_NOT_IN_JOURNAL = N_("the run's journal records no such move")
UNDO_STATUSES = (N_("restored"), N_("already back"), N_("missing"), N_("conflict"), N_("refused"))
RUN_ID = r"\d{8}-\d{6}-[0-9a-f]{6}"  # compiled at its first use (re keeps it): undo only
JOURNAL_DIR = QUARANTINE_JOURNALS


def journal_path(quarantine: Path, run_id: str) -> Path:
    return quarantine / JOURNAL_DIR / f"{run_id}.jsonl"


def _clean_path(value: object) -> Path | None:
    """``value`` as a path when it is absolute and already normalised (no ``..``)."""
    if not isinstance(value, str) or not os.path.isabs(value) or os.path.normpath(value) != value:
        return None
    return Path(value)


def _identity(path: Path) -> dict[str, int]:
    st = path.lstat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _same_identity(path: Path, ident: object) -> str | None:
    """None when ``path`` is still the regular file the run recorded, else why not."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None  # restored already, or gone: _restore says which
    if not stat.S_ISREG(st.st_mode):
        return _("not a regular file in the quarantine")
    if not isinstance(ident, dict) or (st.st_size, st.st_mtime_ns, st.st_ino) != (
        ident.get("bytes"),
        ident.get("mtime_ns"),
        ident.get("ino"),
    ):
        return _("changed in the quarantine since the run moved it")
    return None


def _check_move(root: Path, quarantine: Path, source: object, target: object, ident) -> str | None:
    """Why a journal entry must not be acted on, or None."""
    s, t = _clean_path(source), _clean_path(target)
    if s is None or t is None:
        return _("not a clean absolute path")
    if not is_within(s, root) or is_within(s, quarantine):
        return _("its original place is outside the run's folder")
    if not is_within(t, quarantine) or is_within(t, quarantine / JOURNAL_DIR):
        return _("not in the run's quarantine")
    if os.path.relpath(s.parent, root) != os.path.relpath(t.parent, quarantine):
        return _("not the place the run moved it from")
    stem, suffix = os.path.splitext(s.name)
    if t.name != s.name and not re.fullmatch(re.escape(stem) + r"_\d+" + re.escape(suffix), t.name):
        return _("not the name the run gave it")
    inside = Path(os.path.realpath(quarantine)) / os.path.relpath(t.parent, quarantine)
    if t.parent.exists() and Path(os.path.realpath(t.parent)) != inside:
        return _("a folder on the way in the quarantine is a symlink")
    existing = s.parent
    while not existing.exists() and is_within(existing.parent, root):
        existing = existing.parent
    if not is_within(Path(os.path.realpath(existing)), Path(os.path.realpath(root))):
        return _("a folder on the way back is a symlink out of the folder")
    return _same_identity(t, ident)


def _check_sidecar(source, target, side_source, side_target, ident) -> str | None:
    s, t = _clean_path(side_source), _clean_path(side_target)
    if s is None or t is None:
        return _("not a clean absolute path")
    if s.suffix not in SIDECAR_EXTENSIONS or s != Path(source).with_suffix(s.suffix):
        return _("not a sidecar of the moved file")
    if t != Path(target).with_suffix(s.suffix):
        return _("not the sidecar's place in the quarantine")
    return _same_identity(t, ident)


def _read_journal(
    path: Path, run_id: str, root: Path, quarantine: Path
) -> tuple[list[dict] | None, list[object]]:
    """The run's moves and created folders, or ``(None, [])`` without a journal."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            raise StepFailed(
                _("the run's journal {path} is not a regular file: nothing undone").format(
                    path=path
                )
            )
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None, []
    except (OSError, UnicodeDecodeError) as exc:
        raise StepFailed(
            _("cannot read the run's journal {path}: {reason}").format(
                path=path, reason=one_line(exc)
            )
        ) from exc
    import json

    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the last line of a run killed while writing it
        if isinstance(record, dict):
            records.append(record)
    header = records[0] if records else {}
    if header != {"run": run_id, "folder": str(root), "quarantine": str(quarantine)}:
        raise StepFailed(
            _("the journal {path} is not the report's run: nothing undone").format(path=path)
        )
    moves = [r["move"] for r in records if isinstance(r.get("move"), dict)]
    return moves, [r["dir"] for r in records if "dir" in r]


class Journal:
    """A run's own record of its moves, kept in its quarantine.

    One JSON line per folder the run created and per file it moved (with the
    identity of the file it left in the quarantine), flushed as it happens,
    so an interrupted run's moves are known too. ``--undo`` acts on this
    record only, never on what a report file says by itself.
    """

    def __init__(self, run_id: str, root: Path, quarantine: Path) -> None:
        self.root, self.quarantine = root, quarantine
        path = journal_path(quarantine, run_id)
        created = _make_dirs(path.parent)
        self.handle = path.open("a", encoding="utf-8")
        self._write({"run": run_id, "folder": str(root), "quarantine": str(quarantine)})
        for folder in created:
            self._write({"dir": str(folder)})

    def _write(self, record: dict[str, Any]) -> None:
        import json

        self.handle.write(_utf8_safe(json.dumps(record, ensure_ascii=False)) + "\n")
        self.handle.flush()

    def move(self, entry: find.Entry) -> dict[str, Any]:
        target_dir = self.quarantine / Path(entry.rel).parent
        for folder in _make_dirs(target_dir):
            self._write({"dir": str(folder)})
        placed = place_file(entry.path, target_dir, mode="move")
        record = {
            "source": str(entry.path),
            "target": str(placed.target),
            **_identity(placed.target),
            "sidecars": [
                [str(entry.path.with_suffix(s.suffix)), str(s), _identity(s)]
                for s in placed.sidecars
            ],
        }
        self._write({"move": record})
        return record

    def close(self) -> None:
        self.handle.close()


def _make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; the ones this call created, top first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
            created.append(path)
        except FileExistsError:
            pass
    return created


def _restore(target: Path, source: Path, dry_run: bool) -> str:
    if not target.exists():
        return "already back" if source.exists() else "missing"
    if os.path.lexists(source):
        try:
            sst, tst = source.lstat(), target.lstat()
        except OSError:
            return "conflict"
        same_file = (sst.st_dev, sst.st_ino) == (tst.st_dev, tst.st_ino)
        if stat.S_ISREG(sst.st_mode) and not same_file and same_content(source, target):
            if dry_run:
                console.print(
                    _("would delete: {path} (an identical file is back at {original})").format(
                        path=target, original=source
                    ),
                    markup=False,
                    soft_wrap=True,
                )
            else:
                target.unlink()
            return "already back"
        return "conflict"
    if dry_run:
        line = _("would restore: {path} -> {original}").format(path=target, original=source)
        console.print(line, markup=False, soft_wrap=True)
        return "restored"
    source.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(target, source)  # fails rather than overwrite
        target.unlink()
    except FileExistsError:
        return "conflict"
    except OSError:  # another file system: copy, then remove
        import shutil

        shutil.move(target, source)
    return "restored"
