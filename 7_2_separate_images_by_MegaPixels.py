#!/usr/bin/env python3
"""Step 7.2: sort images into folders by megapixels."""

import sys

if __name__ == "__main__":
    print("not yet implemented (issue #7)", file=sys.stderr)
    sys.exit(1)
