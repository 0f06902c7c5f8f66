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

from yandex_reverse.console import (
    add_sort_flags,
    ask_choice,
    clean_path_answer,
    confirm,
    console,
    folder_option,
    setup_logging,
)
from yandex_reverse.imageinfo import ImageInfo, iter_images
from yandex_reverse.sorting import print_sort_report, sort_images

FOLDERS = ("landscape", "portrait", "square")
MODES = (
    ("move", "Move: the originals leave the source folder"),
    ("copy", "Copy: the originals stay where they are"),
)
SQUARE_POLICIES = (
    ("separate", "Separate 'square' folder (recommended)"),
    ("landscape", "Treat as landscape"),
    ("portrait", "Treat as portrait"),
)
SQUARE_WORDS = dict(SQUARE_POLICIES)


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
        description="Sort images into landscape/, portrait/ and square/ by their displayed "
        "size (EXIF rotation applied). Asks for what is missing on a terminal.",
    )
    parser.add_argument("--source", metavar="DIR", help="folder with the images (asked if missing)")
    parser.add_argument(
        "--dest",
        metavar="DIR",
        help="where landscape/, portrait/, square/ go (default: inside the source, as the original)",
    )
    parser.add_argument(
        "--mode",
        choices=("move", "copy"),
        help="move or copy the images (asked: 1 = move, 2 = copy; required without a terminal)",
    )
    parser.add_argument(
        "--square",
        choices=("separate", "landscape", "portrait"),
        help="where 1:1 images go (asked; default without a terminal: separate)",
    )
    parser.add_argument(
        "--square-tolerance",
        type=_tolerance,
        default=0.0,
        metavar="T",
        help="count an image as square when its long side is at most (1+T) times the short "
        "one, e.g. 0.02 for 2%% (default 0: equal sides only)",
    )
    add_sort_flags(parser)
    return parser


def _tolerance(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError("must be at least 0 and below 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file)
    source = folder_option(
        args.source, "Folder with images (drag and drop it here or type a path)", flag="--source"
    )
    mode = args.mode or ask_choice("Mode:", MODES, flag="--mode")
    square = args.square or ask_choice(
        "Square (1:1) images:", SQUARE_POLICIES, flag="--square", default="separate"
    )
    dest = clean_path_answer(args.dest) if args.dest else source

    console.print(f"Source:      {source}", markup=False)
    console.print(f"Destination: {dest}", markup=False)
    console.print(f"Mode:        {mode} ({dict(MODES)[mode]})", markup=False)
    console.print(f"Squares:     {square} ({SQUARE_WORDS[square]})", markup=False)
    if args.square_tolerance:
        console.print(f"Square tolerance: {args.square_tolerance:g}")
    if args.recursive:
        console.print("Subfolders:  included")
    if args.dry_run:
        console.print("Dry run: nothing will be moved or copied.")
    elif not confirm("Start processing?", assume_yes=args.yes):
        console.print("Cancelled by user.")
        return 0

    # Our own output folders are never input, whatever --dest is.
    exclude = [dest / name for name in FOLDERS]
    if dest != source:
        exclude.append(dest)
    paths = list(iter_images(source, recursive=args.recursive, exclude=exclude))
    console.print(f"Images found: {len(paths):,}")

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
