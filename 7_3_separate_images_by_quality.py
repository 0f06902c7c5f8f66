#!/usr/bin/env python3
"""Step 7.3: score image quality with pyiqa (MUSIQ / CLIPIQA / any metric) and sort into high / medium / low."""

import sys

from yandex_reverse.console import run_main
from yandex_reverse.quality.cli import main

if __name__ == "__main__":
    sys.exit(run_main(main))
