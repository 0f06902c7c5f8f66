#!/usr/bin/env python3
"""Step 7.2: sort images into folders by megapixels."""

import sys

from yandex_reverse.console import run_main
from yandex_reverse.megapixels import main

if __name__ == "__main__":
    sys.exit(run_main(main))
