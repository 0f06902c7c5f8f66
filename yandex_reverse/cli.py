"""The command line every step shares, and the ``yandex-reverse`` command.

Common flags are declared once, here (:func:`add_common_flags`): ``--dry-run``,
``--yes/-y``, ``--workers``, ``--recursive``, ``--log-file`` where a step has
them, and on every step ``--lang ru|en``, ``-v/--verbose``, ``-q/--quiet``,
``--version``.

The prompt contract (the questions themselves are in ``console``):

* Enter takes the default shown in brackets, in every question.
* ``-y/--yes`` answers every remaining question with its default (and the
  final "start?" with yes); a question with no default then stops with
  exit code 2 naming the flag to pass.
* Without a terminal nothing is asked: the default is taken, or the run
  stops with exit code 2 naming the flag.
* Every input is checked as soon as it is given (:func:`require_input`),
  and the message names the step that makes a missing file.

``yandex-reverse <command> ...`` runs one step (the same ``main`` as the
numbered script) or ``run`` (steps 1 → 7.3), ``report`` or ``demo``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import namedtuple
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, console
from .console import StepFailed, UsageError, positive_int, run_main
from .i18n import LANGUAGES, N_, _

__all__ = [
    "HelpFormatter",
    "Yes",
    "add_common_flags",
    "main",
    "positive_int",
    "require_input",
    "run_main",
]


# --- common flags ------------------------------------------------------------------------


class Yes(argparse.Action):
    """``-y/--yes``: stored as True, and every question asked from now on takes its default.

    ``parser.add_argument("-y", "--yes", action=Yes, help=...)`` in a step that
    declares its own help text; :func:`add_common_flags` uses it too.
    """

    def __init__(self, option_strings, dest, default=False, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(option_strings, dest, nargs=0, default=default, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        setattr(namespace, self.dest, True)
        console.answer_with_defaults(True)


class _Quiet(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        setattr(namespace, self.dest, getattr(namespace, self.dest, 0) - 1)
        console.set_verbosity(-1)


class _Verbose(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        level = (getattr(namespace, self.dest, 0) or 0) + 1
        setattr(namespace, self.dest, level)
        console.set_verbosity(level)


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing ``shutil``
    (and, through it, bz2, lzma and fnmatch): ``COLUMNS``, else the terminal
    of standard output, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's ``RawDescriptionHelpFormatter``, the same width found without
    ``shutil``: argparse makes a formatter for every ``add_argument``, and its
    first one imports ``shutil`` (a few per cent of step 6's exact mode)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = terminal_columns() - 2  # what argparse does with shutil's answer
        super().__init__(prog, indent_increment, max_help_position, width)


def add_common_flags(
    parser: argparse.ArgumentParser,
    *,
    dry_run: str | None = None,
    yes: str | bool | None = None,
    workers: str | None = None,
    recursive: str | None = None,
    log_file: Path | bool | None = False,
) -> None:
    """Add the flags every step spells the same way.

    A flag whose help text is given is added (``log_file``: its default path,
    or ``None`` for "no log unless asked"; ``False`` leaves it out). ``--lang``,
    ``-v``, ``-q`` and ``--version`` are always added. ``yes=True``: a step that asks
    nothing still takes ``-y``, so that ``-y`` works on every step.
    """
    if dry_run is not None:
        parser.add_argument("--dry-run", action="store_true", help=dry_run)
    if yes is True:
        yes = _("accepted on every step; this one asks nothing")
    if isinstance(yes, str):
        parser.add_argument("-y", "--yes", action=Yes, help=yes)
    if workers is not None:
        parser.add_argument("--workers", type=positive_int, default=None, metavar="N", help=workers)
    if recursive is not None:
        parser.add_argument("--recursive", action="store_true", help=recursive)
    if log_file is not False:
        default = log_file if isinstance(log_file, Path) else None
        parser.add_argument(
            "--log-file",
            type=Path,
            default=default,
            metavar="FILE",
            help=_("details and tracebacks go here (default: {file})").format(
                file=default or _("none")
            ),
        )
    parser.add_argument(
        "--lang",
        choices=LANGUAGES,
        help=_("language of the messages (default: from the locale, LANG)"),
    )
    parser.add_argument(
        "-v", "--verbose", action=_Verbose, nargs=0, dest="verbosity", default=0,
        help=_("show the details of the log on the terminal too"),
    )  # fmt: skip
    parser.add_argument(
        "-q", "--quiet", action=_Quiet, nargs=0, dest="verbosity",
        help=_("print only warnings and errors"),
    )  # fmt: skip
    parser.add_argument(
        "--version",
        action="version",
        version=f"yandex-reverse {__version__}",
        help=_("show the version and exit"),
    )


# --- inputs checked as soon as they are given ------------------------------------------

# Which step makes each input another step reads, so a missing one names its maker.
MADE_BY: dict[str, str] = {
    "XHR": N_("step 1 (1_Parse_XHR_Async.py, `yandex-reverse crawl`) saves it"),
    "yandex_images.db": N_("step 2 (2_XHRtoDB.py, `yandex-reverse import`) makes it from XHR/"),
    "vk_images.db": N_(
        "step 3 (3_VK_Domain_Analyzer.py, `yandex-reverse domains`) makes it from yandex_images.db"
    ),
    "yandex_images": N_(
        "step 5 (5_Download_async.py, `yandex-reverse download`) downloads the images into it"
    ),
}


def hint_for(path: Path) -> str:
    """ "(step N makes it)" for a pipeline file, or "" for any other path."""
    made_by = MADE_BY.get(path.name)
    return f" ({_(made_by)})" if made_by else ""


def require_input(path: Path, *, flag: str, folder: bool = False) -> Path:
    """``path`` if it exists (a folder when ``folder``), else :class:`StepFailed` with a hint."""
    exists = path.is_dir() if folder else path.is_file()
    if exists:
        return path
    what = _("folder not found: {path}") if folder else _("file not found: {path}")
    raise StepFailed(what.format(path=path) + f" [{flag}]" + hint_for(path))


def images_in(*, recursive: bool) -> Callable[[Path], str | None]:
    """A folder check for ``ask_folder``/``folder_option``: it must hold at least one image."""

    def check(folder: Path) -> str | None:
        from .imageinfo import iter_images

        if next(iter(iter_images(folder, recursive=recursive)), None) is None:
            hint = "" if recursive else " " + _("(add --recursive to look in subfolders)")
            return _("no images in {path}").format(path=folder) + hint + hint_for(folder)
        return None

    return check


SORTED = "sorted"


def sorted_dest(kind: str) -> Path:
    """Where step 7.x writes by default: ``sorted/<kind>/`` in the working folder.

    Never inside the source, so a later step 6 (or 7.x) over the downloads
    does not find the sorted copies.
    """
    return Path.cwd() / SORTED / kind


def creatable(path: Path) -> str | None:
    """Why ``path`` cannot be an output folder, or None. Nothing is created here."""
    if path.exists():
        return None if path.is_dir() else _("not a folder: {path}").format(path=path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return _("cannot create a folder in {path}").format(path=parent)
    return None


# --- the yandex-reverse command --------------------------------------------------------


# Not a dataclass (``dataclasses`` costs every step its import), nor a
# typing.NamedTuple (``typing`` costs step 6's exact mode a few per cent).
class Command(namedtuple("Command", ("name", "aliases", "target", "help"))):
    __slots__ = ()
    name: str
    aliases: tuple[str, ...]
    target: str  # "module:function", imported only when the command runs
    help: str  # an N_() msgid


COMMANDS = (
    Command("crawl", ("1",), "yandex_reverse.crawl.cli:main", N_("step 1: reverse search, save XHR/")),
    Command("import", ("2",), "yandex_reverse.xhr_import:main", N_("step 2: XHR/ → yandex_images.db")),
    Command("domains", ("3",), "yandex_reverse.domains:main", N_("step 3: domains, VK share, vk_images.db")),
    Command("cleanup", ("4",), "yandex_reverse.cleanup:main", N_("step 4: clean the database")),
    Command("download", ("5",), "yandex_reverse.download.cli:main", N_("step 5: download the originals")),
    Command("dedup", ("6",), "yandex_reverse.dedup.cli:main", N_("step 6: duplicates → quarantine")),
    Command("orientation", ("7.1",), "yandex_reverse.orientation:main", N_("step 7.1: sort by orientation")),
    Command("megapixels", ("7.2",), "yandex_reverse.megapixels:main", N_("step 7.2: sort by megapixels")),
    Command("quality", ("7.3",), "yandex_reverse.quality.cli:main", N_("step 7.3: sort by quality")),
    Command("run", (), "yandex_reverse.run:main", N_("steps 1 → 7.3 in this folder, with their defaults")),
    Command("report", (), "yandex_reverse.report:main", N_("the HTML report: where each photo was found")),
    Command("demo", (), "yandex_reverse.demo:main", N_("the whole pipeline against an offline imitation")),
)  # fmt: skip


def find_command(name: str) -> Command | None:
    return next((c for c in COMMANDS if name == c.name or name in c.aliases), None)


def load(command: Command) -> Callable[[list[str] | None], int]:
    import importlib

    module, _sep, function = command.target.partition(":")
    return getattr(importlib.import_module(module), function)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yandex-reverse",
        description=_("Yandex Images reverse search: the pipeline's steps as subcommands."),
        epilog=_("`yandex-reverse COMMAND --help` shows the flags of one command."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lines = [
        f"  {c.name:<12} {('(' + ', '.join(c.aliases) + ')') if c.aliases else '':<7} {_(c.help)}"
        for c in COMMANDS
    ]
    parser.description = f"{parser.description}\n\n{_('commands:')}\n" + "\n".join(lines)
    parser.add_argument("command", metavar="COMMAND", help=_("one of the commands above"))
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    add_common_flags(parser)
    return parser


def dispatch(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    index, skip = None, False
    for position, arg in enumerate(argv):
        if skip or arg.startswith("-"):
            skip = arg == "--lang"  # its value is not the command
            continue
        index = position
        break
    if index is not None and (command := find_command(argv[index])):
        # Flags before the command (--lang ru) go to the step, like the ones after it.
        rest = argv[:index] + argv[index + 1 :]
        return load(command)(rest)
    args = build_parser().parse_args(argv)
    raise UsageError(
        _("unknown command: {name} (see yandex-reverse --help)").format(name=args.command)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The ``yandex-reverse`` entry point."""
    return run_main(dispatch, None if argv is None else list(argv))


if __name__ == "__main__":
    raise SystemExit(main())
