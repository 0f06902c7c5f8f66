#!/usr/bin/env python3
"""Step 6: find duplicates (exact, perceptual, by name) and quarantine them."""

import sys

from yandex_reverse.console import run_main
from yandex_reverse.dedup import main

if __name__ == "__main__":
    sys.exit(run_main(main))
