"""Step 1: search Yandex Images with each query photo (or image URL) and save every result page.

For each query a browser tab opens the start page, uploads the photo (or opens
the search by URL), opens the tabs asked for ("Похожие", and "Сайты" with
``--tabs similar,sites``) and saves what they show, atomically, one file per
source, never overwritten by another source:

* ``XHR/<query>_xhr_000.json``: the first page, from the page's ``data-state``
  that holds results (a page may hold several), or the ``p=0`` XHR when the tab
  is a client-side route; a data-state without results is not saved;
* ``XHR/<query>_xhr_<p>.json``: every ``serpList/fetch`` answer (``p`` = the page
  the XHR asked for);
* ``XHR/<query>_sites_000.json``: the "Сайты" tab's data-state.

**The end of the results is decided from the network.** The tab keeps scrolling
to the bottom, clicks "Показать ещё" whenever it is visible and enabled, and
follows the ``serpList/fetch`` requests in flight (request, finished, failed).
The results have ended on a 404, on the error notice, or after a quiet period
(``--quiet-period``) with no request in flight, none started and nothing
clickable. A disabled button means "busy" only while a request is in flight.
Every action is confirmed by its effect (the panel visible, the URL changed, a
request started) and retried within ``--timeout``; the cookie popup is
accepted whenever it appears (Playwright's ``add_locator_handler``).

``XHR/.progress.json`` records each query: how it ended (``404``, ``error``,
``quiet``), the pages saved, so a re-run skips finished ones. Selectors live
in ``selectors.json``; ``--selectors FILE`` overrides them. The JSON format is
read by :mod:`yandex_reverse.serp`.

The package, one responsibility a module:

* :mod:`.settings`: the run's options, defaults and selectors;
* :mod:`.queries`: what is searched (the photos of a folder, a ``--urls`` list);
* :mod:`.photo`: the photo file (checked before upload, re-encoded under the limit);
* :mod:`.errors`: the failures worth one line, and ``errors.log``;
* :mod:`.progress`: ``XHR/.progress.json`` (resume) and how each query ended;
* :mod:`.gate`: run-level stops (captcha backoff, no connection);
* :mod:`.browser_session`: the browser (launch, contexts, proxy, profile, cookie popup);
* :mod:`.job`: one search in one tab (upload, tabs, ``load_all``: the end of the results);
* :mod:`.run`: the pool of tabs, retries, Ctrl-C;
* :mod:`.cli`: the flags and the summary (``main``).
"""
