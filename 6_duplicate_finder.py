#!/usr/bin/env python3
"""Step 6: find duplicates (exact, perceptual, by name) and quarantine them."""

import gc

# The imports make some 9,000 objects that live as long as the process, and
# no garbage: the collector neither runs during them (a dozen passes) nor
# looks at them again afterwards (frozen; its first pass after the imports
# would walk them all).
gc.disable()
from yandex_reverse.console import exit_now, run_main
from yandex_reverse.dedup import main

gc.freeze()
gc.enable()

if __name__ == "__main__":
    exit_now(run_main(main))
