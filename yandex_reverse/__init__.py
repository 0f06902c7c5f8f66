"""Yandex Images reverse search pipeline.

One module per numbered step, plus a few shared modules (``db``, ``console``,
``images``, ``urls``). See ``docs/architecture.md`` for the map.
"""

__version__ = "1.0.0"
