#!/usr/bin/env python3
"""Step 4: remove duplicate and broken records, after a backup."""

import sys

if __name__ == "__main__":
    print("not yet implemented (issue #4)", file=sys.stderr)
    sys.exit(1)
