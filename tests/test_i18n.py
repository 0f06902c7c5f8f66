"""Every message has a Russian translation that keeps its fields; the language is chosen as documented."""

from __future__ import annotations

import argparse
import re
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from yandex_reverse import i18n
from yandex_reverse.console import positive_int

FIELDS = re.compile(r"%(?:\((\w+)\))?[-#0 +]*\d*(?:\.\d+)?[sdrifgx%]")


@pytest.fixture(autouse=True)
def english_afterwards() -> Iterator[None]:
    yield
    i18n.activate("en")


def fields(text: str) -> set[str]:
    """The names a translation must keep: ``{n}`` fields and ``%(n)s`` / ``%s`` conversions."""
    names = {f"{{{name}}}" for _, name, _, _ in string.Formatter().parse(text) if name}
    for match in FIELDS.finditer(text):
        if match.group(0) != "%%":
            names.add(f"%({match.group(1)})" if match.group(1) else "%")
    return names


def test_every_msgid_in_the_code_is_a_literal() -> None:
    bad = [
        f"{path.relative_to(i18n.PACKAGE_DIR.parent)}:{line}"
        for path in i18n.source_files()
        for line, msgid in i18n.extract(path)
        if msgid is None
    ]
    assert not bad, "_()/N_()/ngettext() need string literals (no f-strings): " + ", ".join(bad)


def test_every_msgid_in_the_code_has_a_russian_translation() -> None:
    missing = [
        f"{path.relative_to(i18n.PACKAGE_DIR.parent)}:{line}: {msgid!r}"
        for path, line, msgid in i18n.missing("ru")
    ]
    assert not missing, (
        f"{len(missing)} message(s) without a Russian translation "
        "(run `.venv/bin/python -m yandex_reverse.i18n missing` for .po stubs):\n"
        + "\n".join(missing)
    )


@pytest.mark.parametrize("area", i18n.AREAS)
def test_each_area_catalogue_parses_and_keeps_the_fields(area: str) -> None:
    path = i18n.LOCALE_DIR / "ru" / "LC_MESSAGES" / f"{area}.po"
    assert path.is_file(), path
    with path.open("rb") as handle:
        catalog = read_po(handle, locale="ru", abort_invalid=True)
    assert catalog.num_plurals == 3
    for message in catalog:
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        wanted = fields(ids[-1]) | fields(ids[0])
        for text in strings:
            if text:  # an empty msgstr is reported by the "missing" test
                assert fields(text) <= wanted and fields(ids[0]) <= fields(text) | {"%"}, (
                    f"{path.name}: {ids[0]!r} -> {text!r} changes the fields"
                )
    i18n.compile_po(path, "ru")  # the same compilation the program does


def test_field_check_sees_renamed_fields() -> None:
    assert fields("Saved {n} pages to {folder}") == {"{n}", "{folder}"}
    assert fields("%(prog)s: error: %(message)s\n") == {"%(prog)", "%(message)"}
    assert fields("{text!r} 100%%") == {"{text}"}


def test_russian_plural_forms() -> None:
    i18n.activate("ru")
    forms = [i18n.ngettext("expected %s argument", "expected %s arguments", n) for n in (1, 3, 5)]
    assert forms == ["ожидается %s значение", "ожидается %s значения", "ожидается %s значений"]
    assert i18n.ngettext("expected %s argument", "expected %s arguments", 21) == forms[0]


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--lang", "ru"], {"LANG": "C"}, "ru"),
        (["x", "--lang=en"], {"LANG": "ru_RU.UTF-8"}, "en"),
        (["--lang", "de"], {"LANG": "ru_RU.UTF-8"}, "ru"),  # unknown: the locale decides
        (["--", "--lang", "ru"], {"LANG": "C"}, "en"),  # after "--" it is an argument
        ([], {"LC_ALL": "ru_RU.UTF-8", "LANG": "C"}, "ru"),
        ([], {"LC_ALL": "C.UTF-8", "LANG": "ru_RU.UTF-8"}, "en"),
        ([], {"LC_MESSAGES": "ru_RU", "LANG": "en_US.UTF-8"}, "ru"),
        ([], {"LANG": "ru_RU.UTF-8"}, "ru"),
        ([], {"LANG": "C"}, "en"),
        ([], {"LANG": "Russian_Russia.1251"}, "ru"),
        ([], {"YR_LANG": "ru", "LC_ALL": "C"}, "ru"),  # handed down by `run` and `demo`
        (["--lang", "en"], {"YR_LANG": "ru"}, "en"),
    ],
)
def test_language_from_argv_then_environment(
    argv: list[str], env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LC_ALL", "LC_MESSAGES", "LANG", i18n.CHILD_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert i18n.setup(argv) == expected
    assert i18n.language() == expected


def test_argparse_speaks_russian_help_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    i18n.activate("ru")
    parser = argparse.ArgumentParser(prog="step")
    parser.add_argument("--workers", type=positive_int, required=True)
    parser.print_help()
    out = capsys.readouterr().out
    assert out.startswith("использование: step")
    assert "показать эту справку и выйти" in out
    assert "usage" not in out and "show this help" not in out
    with pytest.raises(SystemExit):
        parser.parse_args(["--workers", "0"])
    err = capsys.readouterr().err
    assert "step: ошибка: аргумент --workers: должно быть 1 или больше, а не 0" in err
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "нужны аргументы: --workers" in capsys.readouterr().err


def test_english_is_the_msgid_itself(capsys: pytest.CaptureFixture[str]) -> None:
    i18n.activate("en")
    assert i18n._("Critical error:") == "Critical error:"
    argparse.ArgumentParser(prog="step").print_help()
    assert capsys.readouterr().out.startswith("usage: step")


def test_a_broken_catalogue_leaves_the_others_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ru" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    source = i18n.LOCALE_DIR / "ru" / "LC_MESSAGES" / "common.po"
    (folder / "common.po").write_bytes(source.read_bytes())
    (folder / "crawl.po").write_text('msgid "x"\nmsgstr "unterminated\n', encoding="utf-8")
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    i18n.translations.cache_clear()
    try:
        assert i18n.translations("ru").gettext("Critical error:") == "Критическая ошибка:"
    finally:
        i18n.translations.cache_clear()


def test_extraction_flags_fstrings_and_keeps_marked_variables(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text(
        'LABEL = N_("Saved")\n'
        "_(f'Saved {n}')\n"
        '_("a" + b)\n'
        "_(LABEL)\n"
        'ngettext("{n} file", "{n} files", n)\n',
        encoding="utf-8",
    )
    assert list(i18n.extract(source)) == [
        (1, "Saved"),
        (2, None),
        (3, None),
        (5, ("{n} file", "{n} files")),
    ]


def test_compiled_catalogue_is_cached_and_never_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YR_CACHE_DIR", str(tmp_path / "cache"))
    po = tmp_path / "dedup.po"
    header = (i18n.LOCALE_DIR / "ru" / "LC_MESSAGES" / "dedup.po").read_text(encoding="utf-8")
    header = header[: header.index("\n\n") + 2]  # the catalogue's header entry only
    po.write_text(header + 'msgid "groups"\nmsgstr "группы"\n', encoding="utf-8")
    assert i18n.load_po(po, "ru").gettext("groups") == "группы"
    cached = list((tmp_path / "cache" / "i18n").glob("dedup-*.mo"))
    assert len(cached) == 1
    assert i18n.load_po(po, "ru").gettext("groups") == "группы"  # read from the cache
    # Edited with the same size and the same mtime: still the new text.
    stat = po.stat()
    po.write_text(header + 'msgid "groups"\nmsgstr "ГРУППЫ"\n', encoding="utf-8")
    import os

    os.utime(po, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert po.stat().st_size == stat.st_size
    assert i18n.load_po(po, "ru").gettext("groups") == "ГРУППЫ"
    # A damaged cached copy is compiled again, not trusted.
    for path in (tmp_path / "cache" / "i18n").glob("dedup-*.mo"):
        path.write_bytes(b"not a catalogue")
    assert i18n.load_po(po, "ru").gettext("groups") == "ГРУППЫ"
    # No writable cache folder: compiled in memory, still right.
    monkeypatch.setenv("YR_CACHE_DIR", str(po))  # a file, not a folder
    assert i18n.load_po(po, "ru").gettext("groups") == "ГРУППЫ"
