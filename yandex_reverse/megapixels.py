"""Step 7.2: sort images into one folder per megapixel bucket.

The prompts, their numbering (1 = copy, 2 = move) and the five strategies are
the original's; two adaptive strategies are added (``quantiles:N``,
``custom:1,3,8``). What changed: folder names can never mean two things
(``2.5MP`` is a 0.1/0.5 MP step, ``2.0-5.0MP`` a range, ``8.0MP+`` and
``under-1.0MP`` the open ends) and the report lists them in numeric order;
sizes come from headers (EXIF orientation applied) in parallel, once per file;
buckets are decided in whole pixels, so a boundary never wobbles with float
rounding; re-runs find identical files already in place; sidecars follow.
"""

from __future__ import annotations

import argparse
import bisect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from yandex_reverse.cli import add_common_flags, creatable, images_in, sorted_dest
from yandex_reverse.console import (
    UsageError,
    ask_choice,
    ask_text,
    clean_path_answer,
    confirm,
    console,
    esc,
    folder_option,
    setup_logging,
)
from yandex_reverse.i18n import N_, _
from yandex_reverse.imageinfo import ImageInfo, iter_images
from yandex_reverse.sorting import print_sort_report, sort_images

KIND = "megapixels"  # the default output: sorted/megapixels/ in the working folder
DEFAULT_STRATEGY = "ranges"
DEFAULT_MODE = "copy"
MODES = (
    ("copy", N_("Copy: the originals stay where they are")),
    ("move", N_("Move: the originals leave the source folder")),
)
STRATEGIES = (
    ("exact", N_("Exact: 0.1 MP steps (folders 2.3MP, 2.4MP, ...)")),
    ("medium", N_("Medium: 0.5 MP steps (folders 2.0MP, 2.5MP, ...)")),
    ("ranges", N_("Ranges: 0-2, 2-5, 5-10, 10-20, 20+ MP")),
    ("coarse", N_("Coarse: 0-5, 5-10, 10+ MP")),
    ("very-coarse", N_("Very coarse: under 1, 1-3, 3-8, 8+ MP")),
    ("quantiles", N_("Quantiles: N folders with about equal counts")),
    ("custom", N_("Custom boundaries, e.g. 1,3,8")),
)
# name -> (boundaries in MP, first bucket written as "under-X" rather than "0.0-X")
FIXED = {
    "ranges": ((2, 5, 10, 20), False),
    "coarse": ((5, 10), False),
    "very-coarse": ((1, 3, 8), True),
}
STEPS = {"exact": 1, "medium": 5}  # in tenths of a megapixel
_FOLDER = re.compile(
    r"^(?:under-(?P<under>[\d.]+)|(?P<lo>[\d.]+)-(?P<hi>[\d.]+)|(?P<top>[\d.]+)\+?"
    r"|(?P<step>[\d.]+))MP(?P<plus>\+)?$"
)


def mp_text(value: float) -> str:
    """A megapixel value with at least one decimal: 2 -> '2.0', 0.25 -> '0.25'."""
    text = f"{value:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def step_folder(width: int, height: int, tenths: int) -> str:
    """Nearest multiple of ``tenths``/10 MP, halves rounded up, in whole pixels."""
    unit = tenths * 100_000
    count = (width * height + unit // 2) // unit
    return f"{mp_text(count * tenths / 10)}MP"


@dataclass(frozen=True)
class Boundaries:
    """Buckets [0, b1), [b1, b2), ..., [bn, inf) in megapixels."""

    values: tuple[float, ...]
    under: bool = True  # name the first bucket "under-b1MP" (else "0.0-b1MP")

    def folder(self, width: int, height: int) -> str:
        limits = [round(b * 1_000_000) for b in self.values]
        index = bisect.bisect_right(limits, width * height)
        if not self.values:
            return "0.0MP+"
        if index == 0:
            first = mp_text(self.values[0])
            return f"under-{first}MP" if self.under else f"0.0-{first}MP"
        if index == len(self.values):
            return f"{mp_text(self.values[-1])}MP+"
        return f"{mp_text(self.values[index - 1])}-{mp_text(self.values[index])}MP"


def nice(value: float) -> float:
    """Two significant digits: 2.372 -> 2.4, 0.4812 -> 0.48, 12.37 -> 12."""
    return float(f"{value:.2g}")


def quantile_boundaries(pixels: Sequence[int], count: int) -> tuple[float, ...]:
    """Boundaries that split ``pixels`` into ``count`` groups of about equal size."""
    ordered = sorted(pixels)
    out: list[float] = []
    for i in range(1, count):
        if not ordered:
            break
        value = nice(ordered[i * len(ordered) // count] / 1_000_000)
        if value > 0 and (not out or value > out[-1]):
            out.append(value)
    return tuple(out)


def parse_custom(text: str) -> tuple[float, ...]:
    try:
        values = sorted({float(part) for part in text.replace(";", ",").split(",") if part.strip()})
    except ValueError as exc:
        raise ValueError(f"boundaries must be numbers like 1,3,8: {text!r}") from exc
    if not values or values[0] <= 0 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"boundaries must be positive numbers like 1,3,8: {text!r}")
    return tuple(values)


def parse_quantiles(text: str) -> int:
    try:
        count = int(text)
    except ValueError as exc:
        raise ValueError(f"number of folders must be a whole number: {text!r}") from exc
    if not 2 <= count <= 100:
        raise ValueError("number of folders must be between 2 and 100")
    return count


@dataclass(frozen=True)
class Strategy:
    name: str
    argument: str = ""

    @classmethod
    def parse(cls, text: str) -> Strategy:
        """``exact``, ``medium``, ``ranges``, ``coarse``, ``very-coarse``,
        ``quantiles:N``, ``custom:B1,B2,...`` (``=`` works as well as ``:``);
        1-5 are the original's menu numbers."""
        name, _sep, argument = text.strip().partition(":")
        if not _sep:
            name, _sep, argument = text.strip().partition("=")
        name = name.strip().lower().replace("_", "-")
        if name.isdigit() and 1 <= int(name) <= len(FIXED) + len(STEPS):
            name = STRATEGIES[int(name) - 1][0]  # the menu numbers of the original
        if name in STEPS or name in FIXED:
            if argument:
                raise ValueError(f"strategy {name} takes no argument")
            return cls(name)
        if name == "quantiles":
            parse_quantiles(argument)
            return cls(name, argument.strip())
        if name == "custom":
            parse_custom(argument)
            return cls(name, argument.strip())
        raise ValueError(
            f"unknown strategy {text!r}: use exact, medium, ranges, coarse, very-coarse, "
            "quantiles:N or custom:1,3,8"
        )

    def describe(self) -> str:
        label = _(dict(STRATEGIES)[self.name])
        return (
            f"{self.name}:{self.argument} ({label})" if self.argument else f"{self.name} ({label})"
        )

    def assigner(self) -> Callable[[Sequence[tuple[Path, ImageInfo]]], list[str]]:
        """Folder names for a whole set of images (quantiles need them all)."""

        def assign(images: Sequence[tuple[Path, ImageInfo]]) -> list[str]:
            if self.name in STEPS:
                return [step_folder(i.width, i.height, STEPS[self.name]) for _p, i in images]
            if self.name in FIXED:
                values, under = FIXED[self.name]
                bounds = Boundaries(tuple(float(v) for v in values), under)
            elif self.name == "custom":
                bounds = Boundaries(parse_custom(self.argument))
            else:
                pixels = [i.width * i.height for _p, i in images]
                bounds = Boundaries(quantile_boundaries(pixels, parse_quantiles(self.argument)))
            return [bounds.folder(i.width, i.height) for _p, i in images]

        return assign


def folder_order(name: str) -> tuple[float, float, str]:
    """Numeric order of our folder names: under-1.0MP < 1.0-3.0MP < 3.0MP < 8.0MP+."""
    match = _FOLDER.match(name)
    if not match:
        return (math.inf, math.inf, name)
    if match["under"]:
        return (0.0, float(match["under"]), name)
    if match["lo"]:
        return (float(match["lo"]), float(match["hi"]), name)
    value = float(match["top"] or match["step"])
    return (value, math.inf if match["plus"] else value, name)


def is_bucket_folder(name: str) -> bool:
    return _FOLDER.match(name) is not None


def _strategy_arg(text: str) -> Strategy:
    try:
        return Strategy.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="7_2_separate_images_by_MegaPixels.py",
        description=_(
            "Sort images into one folder per megapixel bucket (size from the header, "
            "EXIF rotation applied). Asks for what is missing on a terminal."
        ),
    )
    parser.add_argument(
        "--source", metavar="DIR", help=_("folder with the images (asked if missing)")
    )
    parser.add_argument(
        "--dest",
        metavar="DIR",
        help=_(
            "output folder (asked: 1 = sorted/megapixels/ in the working folder, 2 = another "
            "path; default: the first)"
        ),
    )
    parser.add_argument(
        "--mode",
        choices=("copy", "move"),
        help=_("copy or move the images (asked: 1 = copy, 2 = move; default: copy)"),
    )
    parser.add_argument(
        "--strategy",
        type=_strategy_arg,
        metavar="NAME",
        help=_(
            "exact (0.1 MP steps), medium (0.5 MP steps), ranges (0-2/2-5/5-10/10-20/20+), "
            "coarse (0-5/5-10/10+), very-coarse (<1/1-3/3-8/8+), quantiles:N (N folders of about "
            "equal counts), custom:1,3,8 (your boundaries in MP); 1-5 = the first five. Asked "
            "1-7; default: {default}"
        ).format(default=DEFAULT_STRATEGY),
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


def _ask_dest() -> Path:
    """The output folder; checked at once, created only when the first image goes there."""
    default = sorted_dest(KIND)
    choice = ask_choice(
        _("Output folder:"),
        (("default", str(default)), ("other", _("Another path"))),
        flag="--dest",
        default="default",
    )
    if choice == "default":
        return default
    while True:
        path = clean_path_answer(ask_text(_("Output folder path"), flag="--dest"))
        problem = creatable(path)
        if problem is None:
            return path
        console.print(f"[yellow]{esc(_('{problem}. Try again.').format(problem=problem))}[/yellow]")


def _ask_strategy() -> Strategy:
    strategies = [(value, _(label)) for value, label in STRATEGIES]
    name = ask_choice(
        _("Sorting strategy:"), strategies, flag="--strategy", default=DEFAULT_STRATEGY
    )
    if name in ("quantiles", "custom"):
        question = (
            _("Number of folders (about equal counts)")
            if name == "quantiles"
            else _("Boundaries in MP, comma-separated (e.g. 1,3,8)")
        )
        while True:
            answer = ask_text(
                question, flag="--strategy", default="4" if name == "quantiles" else None
            )
            try:
                return Strategy.parse(f"{name}:{answer}")
            except ValueError as exc:
                message = _("{problem}. Try again.").format(problem=exc)
                console.print(f"[yellow]{esc(message)}[/yellow]")
    return Strategy(name)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file)
    source = folder_option(
        args.source,
        _("Folder with images (drag and drop it here or type a path)"),
        flag="--source",
        check=images_in(recursive=args.recursive),
    )
    dest = clean_path_answer(args.dest) if args.dest else _ask_dest()
    if (problem := creatable(dest)) is not None:
        raise UsageError(f"{problem} (--dest)")
    modes = [(value, _(label)) for value, label in MODES]
    mode = args.mode or ask_choice(_("Mode:"), modes, flag="--mode", default=DEFAULT_MODE)
    strategy: Strategy = args.strategy or _ask_strategy()

    for line in (
        _("Source: {path}").format(path=source),
        _("Destination: {path}").format(path=dest),
        _("Mode: {mode} ({label})").format(mode=mode, label=dict(modes)[mode]),
        _("Strategy: {strategy}").format(strategy=strategy.describe()),
    ):
        console.print(line, markup=False)
    if args.recursive:
        console.print(_("Subfolders: included"))
    if args.dry_run:
        console.print(_("Dry run: nothing will be moved or copied."))
    elif not confirm(_("Start sorting?"), assume_yes=args.yes):
        console.print(_("Cancelled by user."))
        return 0

    # Our own output is never input: the whole destination, or, when it is
    # the source itself, the bucket folders already in it.
    if dest.resolve() == source.resolve():
        exclude = [p for p in source.iterdir() if p.is_dir() and is_bucket_folder(p.name)]
    else:
        exclude = [dest]
    paths = list(iter_images(source, recursive=args.recursive, exclude=exclude))
    console.print(_("Images found: {n:,}").format(n=len(paths)))
    result = sort_images(
        paths, dest, strategy.assigner(), mode=mode, dry_run=args.dry_run, workers=args.workers
    )
    print_sort_report(result, dest=dest, mode=mode, dry_run=args.dry_run, order=folder_order)
    return 1 if result.failed else 0
