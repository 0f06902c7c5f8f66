"""Terminal I/O shared by every step: progress, tables, prompts, logging, exit codes.

The rule for questions: a step asks only when the flag is missing *and*
standard input is a terminal. Otherwise it takes the documented default, or
stops with exit code 2 and a message naming the flag. Tracebacks never reach
the terminal: they go to the step's log file.

Outside text (file names, URLs, ids, hosts, JSON values, exception messages)
is data, never rich markup: a name like ``x[/]y`` would otherwise raise a
``MarkupError`` or restyle the line. Put it through :func:`esc` before it goes
into any string rich will render::

    console.print(_("Not a folder: {path}").format(path=esc(path)))

The functions here (tables, prompts, summaries, ``run_main``'s error lines)
escape their arguments themselves: pass them plain text.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from .i18n import _
from .i18n import setup as setup_language

TYPE_CHECKING = False  # typing's, without importing typing (a step's start counts)
if TYPE_CHECKING:
    import logging
    from contextlib import AbstractContextManager
    from typing import Any, NoReturn, TypeVar

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    T = TypeVar("T")


class _LazyConsole:
    """A rich ``Console`` made on first use. Rich costs tens of milliseconds
    to import (its progress bars more), which a quick step such as step 6's
    exact mode need not pay before it has something to show."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._real: Console | None = None

    @property
    def real(self) -> Console:
        if self._real is None:
            from rich.console import Console

            self._real = Console(**self._options)
        return self._real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # ``console.quiet = True`` before the first print must reach the real one.
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        elif self._real is None:
            self._options[name] = value
        else:
            setattr(self._real, name, value)


def progress_shown() -> bool:
    """Will progress bars be drawn? (Without importing rich when they will not.)"""
    forced = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS")
    if console._real is None and not any(os.environ.get(k) for k in forced):
        try:
            return sys.stdout.isatty()
        except (AttributeError, ValueError):
            return False
    return console.is_terminal


def plain_output() -> bool:
    """True when standard output is no terminal (a pipe, a file, a benchmark)
    and rich has not been started: :func:`say` and ``print_summary(plain=True)``
    then write plain lines without importing rich at all."""
    return not progress_shown()


def say(text: str, style: str | None = None) -> None:
    """Print ``text`` as it is (never markup: outside text needs no :func:`esc`).

    ``style`` (rich's, e.g. "yellow") colours it on a terminal only. ``-q``
    silences it as it silences the console.
    """
    if _state["verbosity"] < 0:
        return
    if plain_output():
        _write_plain(text + "\n")
    else:
        console.print(text, style=style, markup=False, soft_wrap=True)


def _write_plain(text: str) -> None:
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:  # a file name that is not valid text: shown escaped
        encoding = sys.stdout.encoding or "utf-8"
        sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding))


console: Any = _LazyConsole(highlight=False)
err_console: Any = _LazyConsole(stderr=True, highlight=False)


class _LazyLogger:
    """``logging.getLogger("yandex_reverse")``, with ``logging`` imported on first
    real use: a quick step (step 6's exact mode) never needs it.

    Every attribute is the real logger's. ``info``/``debug`` lines for the log
    file alone (no ``-v``) before ``logging`` is imported are written here, in
    the log file's own format, so that a run whose only log line is its
    settings imports nothing for it; anything else goes to the real logger.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(_logger(), name)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not _quick_log("INFO", msg, args, kwargs):
            _logger().info(msg, *args, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not _quick_log("DEBUG", msg, args, kwargs):
            _logger().debug(msg, *args, **kwargs)


log: Any = _LazyLogger()
# setup_logging's settings, until logging is imported and they are applied
_pending_log: dict[str, Any] = {}

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def esc(value: object) -> str:
    """``value`` as text that rich prints literally: THE escaping helper for outside text."""
    from rich.markup import escape

    return escape(str(value))


class UsageError(Exception):
    """A missing or wrong answer or flag: exit code 2, with a one-line message."""


class StepFailed(Exception):
    """The step cannot go on (missing input file, unusable DB ...): exit code 1."""


_state = {"defaults": False, "verbosity": 0}


def answer_with_defaults(on: bool) -> None:
    """``--yes``: every question from now on takes its default without asking."""
    _state["defaults"] = on


def answering_with_defaults() -> bool:
    """Whether ``--yes`` answers the questions (see :func:`answer_with_defaults`)."""
    return bool(_state["defaults"])


def set_verbosity(level: int) -> None:
    """``-q`` (below 0): only warnings and errors; ``-v`` (above 0): the log on the terminal too."""
    _state["verbosity"] = level
    console.quiet = level < 0


def _auto_answer(question: str, answer: str | None, flag: str) -> str:
    """The answer ``--yes`` gives: the default, shown; no default is a usage error."""
    if answer is None:
        raise UsageError(
            _("{question}: --yes has no default to take here; pass {flag}").format(
                question=question.rstrip(":?"), flag=flag
            )
        )
    console.print(f"[dim]{esc(question.rstrip(':?'))}: {esc(answer)} (--yes)[/dim]")
    return answer


def is_interactive() -> bool:
    """Questions are asked only on a terminal (never in CI, pipes or cron)."""
    if os.environ.get("YR_NONINTERACTIVE"):
        return False
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def clean_path_answer(answer: str) -> Path:
    """A dragged-and-dropped or typed path: whitespace and quotes removed, absolute."""
    text = answer.strip().strip('"').strip("'").strip()
    return Path(text).expanduser().absolute()


def _read(prompt: str) -> str:
    """Print ``prompt`` (markup of ours, arguments already escaped) and read one line."""
    console.print(prompt, end="")
    line = sys.stdin.readline()
    if not line:  # EOF: the user closed the input
        raise KeyboardInterrupt
    return line.rstrip("\n")


def ask_choice(
    question: str,
    options: Sequence[tuple[str, str]],
    *,
    flag: str,
    default: str | None = None,
) -> str:
    """Ask for one of ``options`` (value, label); return the value.

    The menu is numbered 1..N; the user may type the number or the value.
    Without a terminal the ``default`` is used, or :class:`UsageError` names
    the flag. Enter takes the default; ``--yes`` takes it without asking. A
    wrong answer asks again.
    """
    if _state["defaults"]:
        label = dict(options).get(default, default) if default is not None else None
        _auto_answer(question, label, flag)
        return default  # type: ignore[return-value]
    if not is_interactive():
        if default is not None:
            return default
        raise UsageError(_no_terminal(question, flag))
    console.print(f"[bold]{esc(question)}[/bold]")
    for number, (value, label) in enumerate(options, 1):
        mark = " " + _("(default)") if value == default else ""
        console.print(f"  {number}) {esc(label)}{mark}")
    while True:
        answer = _read("> ").strip()
        if not answer and default is not None:
            return default
        for number, (value, _label) in enumerate(options, 1):
            if answer == str(number) or answer.lower() == value.lower():
                return value
        console.print(f"[yellow]{esc(_('Invalid choice, try again.'))}[/yellow]")


def ask_text(question: str, *, flag: str, default: str | None = None) -> str:
    """Ask for free text (a path, a list of numbers ...); Enter takes the default."""
    if _state["defaults"]:
        return _auto_answer(question, default, flag)
    if not is_interactive():
        if default is not None:
            return default
        raise UsageError(_no_terminal(question, flag))
    suffix = f" \\[{esc(default)}]" if default is not None else ""
    while True:
        answer = _read(f"[bold]{esc(question)}[/bold]{suffix}: ").strip()
        if answer:
            return answer
        if default is not None:
            return default


def ask_folder(
    question: str,
    *,
    flag: str,
    default: Path | None = None,
    check: Callable[[Path], str | None] | None = None,
) -> Path:
    """Ask for an existing folder until one is given (drag and drop works).

    ``check(path)`` returns why a folder will not do ("no images in ..."), or
    ``None``: the answer is checked as soon as it is given, and asked again.
    """
    while True:
        answer = ask_text(question, flag=flag, default=str(default) if default else None)
        path = clean_path_answer(answer)
        problem = None
        if not path.is_dir():
            problem = _("not a folder: {path}").format(path=path)
        elif check is not None:
            problem = check(path)
        if problem is None:
            return path
        if not is_interactive() or _state["defaults"]:
            raise UsageError(f"{problem} ({flag})")
        message = _("{problem}. Try again.").format(problem=problem[:1].upper() + problem[1:])
        console.print(f"[yellow]{esc(message)}[/yellow]")


def confirm(question: str, *, assume_yes: bool = False, flag: str = "--yes") -> bool:
    """``[y/N]``. ``assume_yes`` (the ``--yes`` flag) answers for the user.

    Without a terminal and without ``--yes`` this is a usage error: nothing
    destructive ever happens unattended unless asked for explicitly.
    """
    if assume_yes or _state["defaults"]:
        return True
    if not is_interactive():
        raise UsageError(
            _("{question}: pass {flag} to confirm without a terminal").format(
                question=question.rstrip("?"), flag=flag
            )
        )
    # "\\[" keeps rich from taking "[y/N]" for a style tag and hiding it.
    answer = _read(f"[bold]{esc(question)}[/bold] \\[{esc(_('y/N'))}]: ").strip().lower()
    return answer in YES_ANSWERS


# Accepted as "yes" in every language (a Russian user may answer in either layout).
YES_ANSWERS = ("y", "yes", "д", "да")


def _no_terminal(question: str, flag: str) -> str:
    return _("{question}: pass {flag} (no terminal to ask on)").format(
        question=question.rstrip(":?"), flag=flag
    )


def progress(
    description: str, total: int | None = None
) -> AbstractContextManager[Callable[..., None]]:
    """A progress bar with count, rate and time left; yields ``advance(n=1, **fields)``.

    On a non-terminal output rich prints nothing per item, so logs stay short.
    (``contextlib`` is imported here, at the first bar: a quick step need not.)
    """
    from contextlib import contextmanager

    return contextmanager(_progress)(description, total)


def _progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    if not progress_shown():  # nothing to draw: counting per item would only cost time
        yield lambda n=1, **fields: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.fields[title]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn(esc(_("elapsed"))),
        TimeElapsedColumn(),
        TextColumn(esc(_("left"))),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    bar = Progress(*columns, console=console.real, transient=False)
    with bar:
        task = bar.add_task(description, total=total, rate="", info="", title=esc(description))
        pending = 0
        latest: dict[str, Any] = {}
        last = 0.0

        def push() -> None:
            nonlocal pending, last
            bar.update(task, advance=pending, **latest)
            speed = bar.tasks[0].speed
            if speed:
                bar.update(task, rate=f"{speed:,.1f}/s")
            pending, last = 0, time.monotonic()

        def advance(n: int = 1, **fields: Any) -> None:
            # Rich recomputes the speed on every update: push ten times a second at most.
            nonlocal pending
            pending += n
            latest.update(fields)
            if time.monotonic() - last >= 0.1:
                push()

        try:
            yield advance
        finally:
            push()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    with progress(description, total) as advance:
        for item in items:
            yield item
            advance()


def table(
    title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric_from: int = 1
) -> Table:
    """A summary table; columns from ``numeric_from`` on are right-aligned.

    Title, headers and cells are plain text (escaped here); a cell may also be
    a rich ``Text`` for a styled value.
    """
    from rich.table import Table

    out = Table(title=esc(title), title_justify="left", show_lines=False)
    for index, header in enumerate(headers):
        out.add_column(esc(header), justify="right" if index >= numeric_from else "left")
    for row in rows:
        out.add_row(*(_fmt(cell) for cell in row))
    return out


def _fmt(cell: Any) -> str | Text:
    from rich.text import Text

    if isinstance(cell, Text):
        return cell
    if isinstance(cell, bool) or cell is None:
        return "" if cell is None else str(cell)
    if isinstance(cell, int):
        return f"{cell:,}"
    if isinstance(cell, float):
        return f"{cell:,.2f}"
    return esc(cell)


def print_summary(title: str, counts: Sequence[tuple[str, Any]], *, plain: bool = False) -> None:
    """The end-of-step summary: a two-column table of what happened.

    ``plain``: without a terminal (:func:`plain_output`), aligned plain lines
    instead of the table, so that a quick step need not import rich.
    """
    if plain and plain_output():
        if _state["verbosity"] < 0:
            return
        cells = [(str(label), _cell(value)) for label, value in counts]
        width = max((len(label) for label, _value in cells), default=0)
        lines = [title] + [f"  {label:<{width}}  {value:>12}" for label, value in cells]
        _write_plain("\n".join(lines) + "\n")
        return
    console.print(table(title, ("", _("count")), counts))


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def setup_logging(log_file: Path | None) -> None:
    """Details and tracebacks go to ``log_file``; the terminal gets one-liners.

    Applied at once when ``logging`` is already imported, else when the log
    is first used (see :class:`_LazyLogger`); the file is made at the first
    line either way.
    """
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    _pending_log.clear()
    _pending_log.update(
        file=None if log_file is None else os.path.abspath(log_file),
        verbosity=_state["verbosity"],
    )
    if "logging" in sys.modules:
        _logger()


def _logger() -> logging.Logger:
    """The real logger, set up as :func:`setup_logging` last asked."""
    import logging

    logger = logging.getLogger("yandex_reverse")
    if not _pending_log:
        return logger
    log_file, verbosity = _pending_log.pop("file"), _pending_log.pop("verbosity")
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    if log_file is not None:
        handler = logging.FileHandler(log_file, encoding="utf-8", delay=True)  # no empty logs
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
    else:
        logger.addHandler(logging.NullHandler())
    if verbosity > 0:  # -v: the log's lines on the terminal too, never tracebacks
        terminal = logging.StreamHandler(sys.stderr)
        terminal.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)
        terminal.setFormatter(_one_line_formatter())
        logger.addHandler(terminal)
    logger.propagate = False
    return logger


LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def _quick_log(level: str, msg: object, args: tuple, kwargs: dict[str, Any]) -> bool:
    """Write one line as the log file's handler would, without ``logging``;
    False when the real logger must do it (imported already, a terminal
    handler, keyword arguments, no log file)."""
    log_file = _pending_log.get("file")
    if kwargs or log_file is None or _pending_log["verbosity"] > 0 or "logging" in sys.modules:
        return False
    created = time.time()
    try:
        message = str(msg)
        if args:  # logging's rule: one non-empty mapping is the mapping to format with
            one = len(args) == 1 and isinstance(args[0], Mapping) and args[0]
            message = message % (args[0] if one else args)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        line = f"{stamp},{int((created - int(created)) * 1000):03d} {level} {message}\n"
        with open(log_file, "a", encoding="utf-8") as handle:
            handle.write(line)
    except Exception:  # logging's own error report, for the same line
        return False
    return True


def _one_line_formatter() -> logging.Formatter:
    import logging

    class OneLine(logging.Formatter):
        """A log record without its traceback (that stays in the log file)."""

        def format(self, record: logging.LogRecord) -> str:
            return f"{record.levelname} {' '.join(record.getMessage().split())}"

    return OneLine()


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a step's ``main``, turning exceptions into exit codes and one-line messages.

    The language is chosen first (``--lang`` in ``argv``, else the locale), so
    that the parser and its ``--help`` speak it. Ctrl-C: 130 and
    "interrupted"; :class:`UsageError`: 2; :class:`StepFailed`: 1; anything
    else: 1 and "critical error", the traceback in the log.
    """
    setup_language(sys.argv[1:] if argv is None else argv)
    answer_with_defaults(False)  # a previous in-process run must not answer for this one
    set_verbosity(0)
    try:
        return main(argv)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]{esc(_('Interrupted by user; re-run to continue.'))}[/yellow]")
        return EXIT_INTERRUPTED
    except UsageError as exc:
        err_console.print(f"[red]{esc(_('Error:'))}[/red] {esc(exc)}")
        return EXIT_USAGE
    except StepFailed as exc:
        err_console.print(f"[red]{esc(_('Error:'))}[/red] {esc(exc)}")
        return EXIT_FAILURE
    except Exception as exc:
        log.exception("critical error")
        where = next((h.baseFilename for h in log.handlers if hasattr(h, "baseFilename")), None)
        hint = " " + _("(traceback in {where})").format(where=where) if where else ""
        err_console.print(
            f"[red]{esc(_('Critical error:'))}[/red] {esc(type(exc).__name__)}: {esc(exc)}{esc(hint)}"
        )
        return EXIT_FAILURE


def exit_now(code: int) -> NoReturn:
    """``sys.exit(code)`` without the interpreter's teardown, where nothing would notice.

    Step 6's script ends with it. The teardown frees every object one by one
    and runs the cyclic collector over them all again: some 4 ms of CPU (~8 %)
    of step 6's exact run on 2,000 files, more with more files. It is skipped
    (as mypy's ``hard_exit`` skips it) only when nothing needs it: no other
    thread can be running (``threading`` never imported), no ``atexit``
    callback is registered (logging's flush, a pool's shutdown, a temporary
    folder's removal, coverage), no ``-i``, and both standard streams flush.
    Otherwise it is plain ``sys.exit(code)``. Files the steps write are closed
    where they are written, never left to the teardown.
    """
    atexit = sys.modules.get("atexit")  # never imported: nothing was registered with it
    callbacks = getattr(atexit, "_ncallbacks", None) if atexit is not None else lambda: 0
    if (
        "threading" not in sys.modules
        and callbacks is not None  # (not CPython: no way to know)
        and callbacks() == 0
        and not sys.flags.inspect
    ):
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
        except Exception:  # a closed pipe and the like: the usual way reports it
            pass
        else:
            os._exit(code)
    sys.exit(code)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as a one-line reason for a summary or ledger."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    reason = f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
    return reason[:limit]


def folder_option(
    value: str | None,
    question: str,
    *,
    flag: str,
    default: Path | None = None,
    check: Callable[[Path], str | None] | None = None,
) -> Path:
    """The folder given by ``flag`` (it must exist and pass ``check``), else asked for."""
    if value is None:
        return ask_folder(question, flag=flag, default=default, check=check)
    path = clean_path_answer(value)
    if not path.is_dir():
        raise UsageError(_("not a folder: {path} ({flag})").format(path=path, flag=flag))
    problem = check(path) if check is not None else None
    if problem is not None:
        raise UsageError(f"{problem} ({flag})")
    return path


def positive_int(text: str) -> int:
    """An ``argparse`` type for counts such as ``--workers``: 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            _("not a whole number: {text!r}").format(text=text)
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(_("must be 1 or more, not {value}").format(value=value))
    return value


def add_sort_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every folder-sorting step shares (7.1, 7.2)."""
    parser.add_argument(
        "--recursive", action="store_true", help=_("also sort images in subfolders")
    )
    parser.add_argument(
        "--dry-run", action="store_true", help=_("show where every image would go; change nothing")
    )
    parser.add_argument(
        "--yes",
        action="store_true",
        help=_("start without the final [y/N] (needed without a terminal)"),
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help=_("processes reading headers (default: all cores)"),
    )
    parser.add_argument("--log-file", type=Path, default=None, help=_("write details here"))
