"""Step 6: find duplicate images (exact, perceptual, by name) and quarantine them.

``find`` builds the groups, ``hashing`` fingerprints files and pictures,
``index`` searches perceptual hashes without all pairs, ``cli`` plans, acts,
reports and undoes.
"""

from .cli import main

__all__ = ["main"]
