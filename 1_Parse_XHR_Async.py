#!/usr/bin/env python3
"""Step 1: upload each photo to Yandex Images, open "Похожие", save every serpList/fetch JSON to XHR/."""

import sys

if __name__ == "__main__":
    print("not yet implemented (issue #3)", file=sys.stderr)
    sys.exit(1)
