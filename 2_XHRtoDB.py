#!/usr/bin/env python3
"""Step 2: import the XHR JSON files into yandex_images.db (idempotent)."""

import sys

from yandex_reverse.console import run_main
from yandex_reverse.xhr_import import main

if __name__ == "__main__":
    sys.exit(run_main(main))
