#!/usr/bin/env python3
"""Step 5: download the originals (resumable, async)."""

import sys

from yandex_reverse.console import run_main
from yandex_reverse.download import main

if __name__ == "__main__":
    sys.exit(run_main(main))
