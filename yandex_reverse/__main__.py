"""``python -m yandex_reverse``: the same as the ``yandex-reverse`` command."""

from yandex_reverse.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
