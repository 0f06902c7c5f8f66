#!/usr/bin/env python3
"""Step 7.1: sort images into landscape / portrait / square folders."""

import sys

from yandex_reverse.console import run_main
from yandex_reverse.orientation import main

if __name__ == "__main__":
    sys.exit(run_main(main))
