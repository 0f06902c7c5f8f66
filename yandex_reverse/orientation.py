"""Step 7.1: sort images into ``landscape/``, ``portrait/`` and ``square/``.

The prompts and their numbering are the original's (1 = move, 2 = copy; the
reverse of 7.2 and 7.3, kept because users know it). What changed: sizes come
from headers with the EXIF orientation applied, read in parallel; webp and
every other format Pillow reads are sorted; folders are made only when a file
goes there; a re-run finds identical files already in place instead of making
``_1`` copies; sidecars follow their image; unreadable files stay in place,
each with its reason.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from yandex_reverse.cli import add_common_flags, images_in, sorted_dest
from yandex_reverse.console import (
    ask_choice,
    clean_path_answer,
    confirm,
    console,
    folder_option,
    setup_logging,
)
from yandex_reverse.i18n import N_, _
from yandex_reverse.imageinfo import ImageInfo, iter_images
from yandex_reverse.sorting import print_sort_report, sort_images

FOLDERS = ("landscape", "portrait", "square")
MODES = (
    ("move", N_("Move: the originals leave the source folder")),
    ("copy", N_("Copy: the originals stay where they are")),
)
DEFAULT_MODE = "copy"  # Enter, --yes and no terminal: the originals stay
SQUARE_POLICIES = (
    ("separate", N_("Separate 'square' folder (recommended)")),
    ("landscape", N_("Treat as landscape")),
    ("portrait", N_("Treat as portrait")),
)


def orientation_of(width: int, height: int, *, square: str, tolerance: float = 0.0) -> str:
    """``landscape``, ``portrait`` or (per ``square``) where a near-square image goes.

    With ``tolerance`` t an image is square when its long side is at most
    (1 + t) times its short side; 0 means exactly equal sides.
    """
    if max(width, height) <= min(width, height) * (1 + tolerance):
        return "square" if square == "separate" else square
    return "landscape" if width > height else "portrait"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="7_1_separate_images_by_orientation.py",
        description=_(
            "Sort images into landscape/, portrait/ and square/ by their displayed "
            "size (EXIF rotation applied). Asks for what is missing on a terminal."
        ),
    )
    parser.add_argument(
        "--source", metavar="DIR", help=_("folder with the images (asked if missing)")
    )
    parser.add_argument(
        "--dest",
        metavar="DIR",
        help=_("where landscape/, portrait/, square/ go (default: sorted/orientation/ here)"),
    )
    parser.add_argument(
        "--mode",
        choices=("move", "copy"),
        help=_("move or copy the images (asked: 1 = move, 2 = copy; default: copy)"),
    )
    parser.add_argument(
        "--square",
        choices=("separate", "landscape", "portrait"),
        help=_("where 1:1 images go (asked; default: separate)"),
    )
    parser.add_argument(
        "--square-tolerance",
        type=_tolerance,
        default=0.0,
        metavar="T",
        help=_(
            "count an image as square when its long side is at most (1+T) times the short "
            "one, e.g. 0.02 for 2%% (default 0: equal sides only)"
        ),
    )
    add_common_flags(
        parser,
        dry_run=_("show where every image would go; change nothing"),
        yes=_("answer every question with its default and start (needed without a terminal)"),
        workers=_("processes reading headers (default: all cores)"),
        recursive=_("also sort images in subfolders"),
        log_file=None,
    )
    return parser


def _tolerance(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(_("must be at least 0 and below 1"))
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file)
    source = folder_option(
        args.source,
        _("Folder with images (drag and drop it here or type a path)"),
        flag="--source",
        check=images_in(recursive=args.recursive),  # an empty folder: refused before any question
    )
    modes = [(value, _(label)) for value, label in MODES]
    mode = args.mode or ask_choice(_("Mode:"), modes, flag="--mode", default=DEFAULT_MODE)
    squares = [(value, _(label)) for value, label in SQUARE_POLICIES]
    square = args.square or ask_choice(
        _("Square (1:1) images:"), squares, flag="--square", default="separate"
    )
    dest = clean_path_answer(args.dest) if args.dest else sorted_dest("orientation")

    for line in (
        _("Source: {path}").format(path=source),
        _("Destination: {path}").format(path=dest),
        _("Mode: {mode} ({label})").format(mode=mode, label=dict(modes)[mode]),
        _("Squares: {square} ({label})").format(square=square, label=dict(squares)[square]),
    ):
        console.print(line, markup=False)
    if args.square_tolerance:
        console.print(_("Square tolerance: {value:g}").format(value=args.square_tolerance))
    if args.recursive:
        console.print(_("Subfolders: included"))
    if args.dry_run:
        console.print(_("Dry run: nothing will be moved or copied."))
    elif not confirm(_("Start processing?"), assume_yes=args.yes):
        console.print(_("Cancelled by user."))
        return 0

    # Our own output folders are never input, whatever --dest is.
    exclude = [dest / name for name in FOLDERS]
    if dest != source:
        exclude.append(dest)
    paths = list(iter_images(source, recursive=args.recursive, exclude=exclude))
    console.print(_("Images found: {n:,}").format(n=len(paths)))

    def assign(images: Sequence[tuple[Path, ImageInfo]]) -> list[str]:
        return [
            orientation_of(info.width, info.height, square=square, tolerance=args.square_tolerance)
            for _path, info in images
        ]

    result = sort_images(paths, dest, assign, mode=mode, dry_run=args.dry_run, workers=args.workers)
    print_sort_report(result, dest=dest, mode=mode, dry_run=args.dry_run, order=FOLDERS.index)
    # Unreadable files are expected input (listed above); a file that could
    # not be placed is an I/O problem the caller should notice.
    return 1 if result.failed else 0
