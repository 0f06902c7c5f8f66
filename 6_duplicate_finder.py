#!/usr/bin/env python3
"""Step 6: find duplicates (exact, perceptual, by name) and quarantine them."""

import sys

if __name__ == "__main__":
    print("not yet implemented (issue #6)", file=sys.stderr)
    sys.exit(1)
