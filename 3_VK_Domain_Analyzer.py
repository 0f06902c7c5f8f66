#!/usr/bin/env python3
"""Step 3: domain statistics of the results, the VK share, and the VK subset in vk_images.db."""

import sys

if __name__ == "__main__":
    print("not yet implemented (issue #4)", file=sys.stderr)
    sys.exit(1)
