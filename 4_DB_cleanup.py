#!/usr/bin/env python3
"""Step 4: remove orphan, empty and unusable rows from a pipeline DB, with a backup first."""

import sys

from yandex_reverse.cleanup import main
from yandex_reverse.console import run_main

if __name__ == "__main__":
    sys.exit(run_main(main))
