#!/usr/bin/env python3
"""Step 1: upload each photo to Yandex Images, open "Похожие", save every serpList/fetch JSON to XHR/."""

import sys

from yandex_reverse.console import run_main
from yandex_reverse.crawl.cli import main

if __name__ == "__main__":
    sys.exit(run_main(main))
