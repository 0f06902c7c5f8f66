#!/usr/bin/env python3
"""Step 3: domain statistics of the results, the VK share, and the VK subset in vk_images.db."""

import sys

from yandex_reverse.console import run_main
from yandex_reverse.domains import main

if __name__ == "__main__":
    sys.exit(run_main(main))
