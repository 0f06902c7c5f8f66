"""Step 5: download the originals, resumable and async.

The package, by job (the driver alone writes the DB and names final files):

- :mod:`.checks` what a body must pass (signature, not text, a whole image);
  :class:`~.checks.FetchFailure` carries the reason.
- :mod:`.fetch` the HTTP side, no DB: :class:`~.fetch.Fetcher` (limits,
  pauses, retries) and :func:`~.fetch.check_body`.
- :mod:`.store` names, temporary files, the folder lock, :class:`~.store.Store`
  (one file per content).
- :mod:`.ledger` the ``downloads`` table: the writer thread, point queries,
  the work read page by page.
- :mod:`.run` the driver: units in a bounded pool of tasks, outcomes settled
  and recorded.
- :mod:`.cli` flags, questions, the summary; ``5_Download_async.py`` calls
  :func:`main`.
"""

from .cli import main

__all__ = ["main"]
