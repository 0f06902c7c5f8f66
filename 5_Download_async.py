#!/usr/bin/env python3
"""Step 5: download the originals (resumable, async)."""

import sys

if __name__ == "__main__":
    print("not yet implemented (issue #5)", file=sys.stderr)
    sys.exit(1)
