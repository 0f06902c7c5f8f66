"""The user's language: every text a person reads, in English and Russian, via gettext.

How to write a message (every module, every engineer):

    from yandex_reverse.i18n import N_, _, ngettext

    console.print(_("Saved {n} pages to {folder}").format(n=n, folder=esc(folder)))
    console.print(ngettext("{n} file", "{n} files", n).format(n=n))
    HEADERS = (N_("domain"), N_("count"))    # module level: mark only ...
    table(..., [_(h) for h in HEADERS])       # ... translate where it is shown

Rules:

* msgids are English, the text an English-speaking user sees.
* Never an f-string (or any expression) inside ``_()``: the msgid must be a
  literal so that it can be found and translated. Use named ``{fields}`` and
  ``.format()`` after the call; the translation keeps the same field names
  (the test checks it).
* Call ``_()`` at run time, never at import time: the language is chosen when
  a step starts (``--lang`` or the locale). Module-level constants keep the
  English msgid marked with ``N_()`` and are translated where printed.
* argparse help: ``help=_("...")`` inside ``build_parser()`` is fine, it runs
  after the language is chosen. argparse's own words ("usage:", "show this
  help message and exit", its errors) are translated here too.

Where translations live: ``yandex_reverse/locale/ru/LC_MESSAGES/<area>.po``,
one file per area, each owned by one engineer, so merges never conflict:
``crawl`` (step 1, fake_yandex), ``import`` (steps 2, 3), ``download``
(step 5), ``dedup`` (steps 4, 6), ``quality`` (7.3, bench), ``common`` (cli,
console, report, run, 7.1/7.2, demo, argparse) and ``ray``. All of them are
loaded and chained, so a message may live in any one of them (in the area of
the module that shows it).

No ``.mo`` files in the tree: the ``.po`` files are the only copy, compiled
with Babel (``read_po``/``write_mo``, then the standard library's
``GNUTranslations``) the first time Russian is needed. A fresh clone, an
installed wheel and a merge of seven people's catalogues therefore never hold
a stale or conflicting binary. The compiled catalogue is kept in a cache
folder (``YR_CACHE_DIR``, else ``$XDG_CACHE_HOME/yandex_reverse``, else
``~/.cache/yandex_reverse``; ``i18n/`` in it) under a name made from a hash of
the ``.po``'s bytes, so the next start reads the ``.mo`` instead of importing
Babel and parsing (tens of milliseconds): an edited ``.po`` has another hash,
so a cached copy can never be stale. Without a writable cache folder the
catalogue is compiled in memory each time. English needs no catalogue at all.

Which language: ``--lang ru|en`` anywhere in the command line (read from
``argv`` before any parser is built, so ``--help`` is translated too), else
the first of ``LC_ALL``, ``LC_MESSAGES``, ``LANG`` that is set (``ru_RU.UTF-8``
gives Russian, ``C`` or anything else English), else the system locale (how
Windows says it). :func:`setup` does this; ``run_main`` calls it. A command
that starts steps as child processes (``run``, ``demo``) hands its language
down in ``YR_LANG``, which comes before the locale.

Adding or checking translations::

    .venv/bin/python -m yandex_reverse.i18n missing    # .po stubs for untranslated msgids
    .venv/bin/python -m pytest tests/test_i18n.py      # fails on any missing translation

Paste the stubs printed for your files into your area's ``.po`` and fill in
``msgstr``. For plurals Russian has three forms (1 файл, 2 файла, 5 файлов):
``msgstr[0]``, ``msgstr[1]``, ``msgstr[2]``.
"""

from __future__ import annotations

import argparse
import gettext as _gettext
import io
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at every start
if TYPE_CHECKING:
    import logging

LANGUAGES = ("en", "ru")
DEFAULT_LANGUAGE = "en"
AREAS = ("common", "crawl", "import", "download", "dedup", "quality", "ray")
LOCALE_DIR = Path(__file__).with_name("locale")
CHILD_ENV = "YR_LANG"  # the language a parent command hands to the steps it starts
PACKAGE_DIR = Path(__file__).parent
# The functions whose first arguments are msgids (ngettext: the first two).
KEYWORDS = {"_": 1, "N_": 1, "ngettext": 2}


def _log() -> logging.Logger:
    """The package's logger (``logging`` is imported only when something goes wrong)."""
    from .console import log

    return log


_current: _gettext.NullTranslations = _gettext.NullTranslations()
_language: str | None = None


def _(message: str) -> str:
    """``message`` (an English literal) in the user's language."""
    return _active().gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """The form of ``singular``/``plural`` that goes with the number ``n``."""
    return _active().ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Mark a module-level msgid for translation; translate it with ``_()`` where shown."""
    return message


def language() -> str:
    """The language in use ("en" or "ru")."""
    _active()
    return _language or DEFAULT_LANGUAGE


def _active() -> _gettext.NullTranslations:
    if _language is None:  # a call before setup(): the locale decides
        activate(language_from_env())
    return _current


def language_from_argv(argv: Sequence[str]) -> str | None:
    """The value of ``--lang`` in ``argv`` if it names a known language."""
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        value = None
        if arg == "--lang" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--lang="):
            value = arg.partition("=")[2]
        if value is not None and value.lower() in LANGUAGES:
            return value.lower()
    return None


def language_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The language of ``LC_ALL``, ``LC_MESSAGES`` or ``LANG`` (the first set), else the system's."""
    environ = os.environ if environ is None else environ
    if environ.get(CHILD_ENV) in LANGUAGES:
        return environ[CHILD_ENV]
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(name)
        if value:
            return _language_of(value)
    import locale  # only without LC_ALL, LC_MESSAGES and LANG

    try:
        system = locale.getlocale()[0] or ""
    except ValueError:
        system = ""
    return _language_of(system)


def _language_of(locale_name: str) -> str:
    name = locale_name.lower()
    if name.startswith(("ru", "russian")):  # "ru_RU.UTF-8", Windows' "Russian_Russia"
        return "ru"
    return DEFAULT_LANGUAGE


def setup(argv: Sequence[str] | None = None) -> str:
    """Choose the language from ``argv`` (``--lang``), else the environment; return it."""
    argv = sys.argv[1:] if argv is None else argv
    lang = language_from_argv(argv) or language_from_env()
    activate(lang)
    return lang


def activate(lang: str) -> None:
    """Use ``lang`` from now on (this process), argparse's own words included."""
    global _current, _language
    _language = lang if lang in LANGUAGES else DEFAULT_LANGUAGE
    _current = translations(_language)
    # argparse looks these module globals up at each call ("usage: ", its errors).
    argparse._ = _  # type: ignore[attr-defined]
    argparse.ngettext = ngettext  # type: ignore[attr-defined]


def catalogue_files(lang: str) -> list[Path]:
    """The ``.po`` files of ``lang``, one per area, those that exist."""
    folder = LOCALE_DIR / lang / "LC_MESSAGES"
    return [folder / f"{area}.po" for area in AREAS if (folder / f"{area}.po").is_file()]


@cache
def translations(lang: str) -> _gettext.NullTranslations:
    """Every area's catalogue of ``lang``, chained; English (the msgids) needs none."""
    if lang == DEFAULT_LANGUAGE:
        return _gettext.NullTranslations()
    chain: _gettext.NullTranslations | None = None
    for path in catalogue_files(lang):
        try:
            current = load_po(path, lang)
        except Exception:  # one broken catalogue must not take the others down
            _log().exception("cannot read the catalogue %s", path)
            continue
        if chain is None:
            chain = current
        else:
            chain.add_fallback(current)
    return chain or _gettext.NullTranslations()


_MO_FORMAT = "1"  # bump when compile_po's output for the same .po changes


def cache_dir() -> Path:
    """Where compiled catalogues are kept (see the module's docstring)."""
    base = os.environ.get("YR_CACHE_DIR")
    if base:
        return Path(base) / "i18n"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "yandex_reverse" / "i18n"


def load_po(path: Path, lang: str) -> _gettext.GNUTranslations:
    """``compile_po``'s result, from the cache when this exact ``.po`` was compiled before."""
    from hashlib import blake2b

    data = path.read_bytes()
    key = blake2b(data, digest_size=16, person=f"{_MO_FORMAT}:{lang}".encode()[:16])
    cached: Path | None = None
    try:
        cached = cache_dir() / f"{path.stem}-{key.hexdigest()}.mo"
        with cached.open("rb") as handle:
            return _gettext.GNUTranslations(handle)
    except (OSError, RuntimeError):  # none yet, or no home folder
        pass
    except Exception:  # an unreadable cached copy: compile again below
        _log().warning("ignoring the cached catalogue %s", cached)
    mo = _compile(data, lang)
    if cached is not None:
        _store(cached, mo)
    return _gettext.GNUTranslations(io.BytesIO(mo))


def _store(target: Path, data: bytes) -> None:
    """Write ``target`` whole or not at all (a temporary name, then a rename)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.urandom(4).hex()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)
    except OSError as exc:  # a read-only home: compiled in memory each time
        _log().debug("cannot cache the catalogue %s: %s", target, exc)


def _compile(data: bytes, lang: str) -> bytes:
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    catalog = read_po(io.BytesIO(data), locale=lang, abort_invalid=True)
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    return buffer.getvalue()


def compile_po(path: Path, lang: str) -> _gettext.GNUTranslations:
    """One ``.po`` file as ready-to-use translations (compiled in memory, fuzzy entries left out)."""
    return _gettext.GNUTranslations(io.BytesIO(_compile(path.read_bytes(), lang)))


# --- extraction: what the code asks to translate (used by the test and `missing`) ---


def source_files(root: Path | None = None) -> list[Path]:
    """Every module a user's text can come from: the package and the numbered scripts."""
    root = PACKAGE_DIR.parent if root is None else root
    files = sorted((root / PACKAGE_DIR.name).rglob("*.py"))
    files += sorted(root.glob("[0-9]*.py"))
    return files


def extract(path: Path) -> Iterator[tuple[int, str | tuple[str, str] | None]]:
    """(line, msgid) for each ``_()``/``N_()``/``ngettext()`` call in ``path``.

    The msgid is ``None`` when the argument is an f-string, a concatenation or
    a call: such a text can never be found in a catalogue. A variable or an
    attribute (``_(label)``) is the ``N_()`` pattern and is skipped: its msgid
    is extracted where ``N_()`` marked it.
    """
    import ast  # only the test and ``missing`` extract: not loaded at a step's start

    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in sorted(ast.walk(tree), key=lambda n: getattr(n, "lineno", 0)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        count = KEYWORDS.get(node.func.id)
        if count is None:
            continue
        args = node.args[:count]
        if len(args) == count and all(
            isinstance(a, (ast.Name, ast.Attribute, ast.Subscript)) for a in args
        ):
            continue  # _(label): a msgid marked with N_() where it was written
        if len(args) < count or not all(
            isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args
        ):
            yield node.lineno, None
            continue
        values = [a.value for a in args]  # type: ignore[attr-defined]
        yield node.lineno, values[0] if count == 1 else (values[0], values[1])


def known_msgids(lang: str = "ru") -> dict[str, tuple[Path, object]]:
    """msgid -> (catalogue, translation) for every translated, non-fuzzy entry of ``lang``."""
    from babel.messages.pofile import read_po

    known: dict[str, tuple[Path, object]] = {}
    for path in catalogue_files(lang):
        with path.open("rb") as handle:
            catalog = read_po(handle, locale=lang, abort_invalid=True)
        for message in catalog:
            if not message.id or message.fuzzy:
                continue
            strings = message.string if isinstance(message.string, tuple) else (message.string,)
            if all(strings):
                key = message.id[0] if isinstance(message.id, tuple) else message.id
                known.setdefault(key, (path, message.string))
    return known


def missing(lang: str = "ru") -> list[tuple[Path, int, str | tuple[str, str]]]:
    """(file, line, msgid) for every msgid in the code without a translation in ``lang``."""
    known = known_msgids(lang)
    out = []
    seen: set[str] = set()
    for path in source_files():
        for line, msgid in extract(path):
            if msgid is None:
                continue
            key = msgid[0] if isinstance(msgid, tuple) else msgid
            if key not in known and key not in seen:
                seen.add(key)
                out.append((path, line, msgid))
    return out


def _po_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def main(argv: list[str] | None = None) -> int:
    """``python -m yandex_reverse.i18n missing``: .po stubs for every untranslated msgid."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["missing"]:
        print("usage: python -m yandex_reverse.i18n missing", file=sys.stderr)
        return 2
    root = PACKAGE_DIR.parent
    for path, line, msgid in missing():
        print(f"#: {path.relative_to(root)}:{line}")
        if isinstance(msgid, tuple):
            print(f"msgid {_po_quote(msgid[0])}\nmsgid_plural {_po_quote(msgid[1])}")
            print('msgstr[0] ""\nmsgstr[1] ""\nmsgstr[2] ""\n')
        else:
            print(f'msgid {_po_quote(msgid)}\nmsgstr ""\n')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
