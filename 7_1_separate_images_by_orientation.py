#!/usr/bin/env python3
"""Step 7.1: sort images into landscape / portrait / square folders."""

import sys

if __name__ == "__main__":
    print("not yet implemented (issue #7)", file=sys.stderr)
    sys.exit(1)
