#!/usr/bin/env python3
"""Step 7.3: score image quality with pyiqa (MUSIQ / CLIPIQA) and sort into high / medium / low."""

import sys

if __name__ == "__main__":
    print("not yet implemented (issue #8)", file=sys.stderr)
    sys.exit(1)
