"""``python -m yandex_reverse.fake_yandex --port P``: serve the Yandex imitation.

Prints the base URL to give the crawler (``--base-url``). Every switch of
:class:`~yandex_reverse.fake_yandex.site.Settings` is also a flag here, and
can be flipped while it runs with ``POST /__control`` (JSON); ``GET
/__served`` tells what each uploaded picture was shown. ``--image-web-port``
starts the image web (``image_web.make_app()``) beside it, in the same loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from .site import END_MODES, FakeYandex, start


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m yandex_reverse.fake_yandex",
        description="Serve an offline imitation of Yandex Images on 127.0.0.1.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="port (0: any free one)")
    p.add_argument("--pages", type=int, default=3, help="XHR pages after the first (default 3)")
    p.add_argument("--first-page", type=int, default=30, help="results on the rendered page")
    p.add_argument("--per-page", type=int, default=30, help="results per XHR page")
    p.add_argument("--end", choices=END_MODES, default="button", help="how the results end")
    p.add_argument("--empty-pages", type=_ints, default=[], help="XHR pages with no results: 2,3")
    p.add_argument("--broken-json-page", type=int, help="this XHR page is broken JSON once")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to each request")
    p.add_argument("--captcha-on-upload", type=_ints, default=[], help="the Nth uploads: 1,5")
    p.add_argument("--captcha-next", type=int, default=0, help="the next K requests get a captcha")
    p.add_argument("--upload-500-next", type=int, default=0, help="the next K uploads answer 500")
    p.add_argument("--upload-variant", choices=("A", "B"), default="A")
    p.add_argument("--renamed-similar-tab", action="store_true", help="change the tab's markup")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of results with yr_fault")
    p.add_argument("--image-web-port", type=int, help="also start the image web on this port")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    settings: dict[str, Any] = {
        "pages": args.pages,
        "first_page": args.first_page,
        "per_page": args.per_page,
        "end": args.end,
        "empty_pages": args.empty_pages,
        "broken_json_page": args.broken_json_page,
        "latency": args.latency,
        "captcha_on_upload": args.captcha_on_upload,
        "captcha_next": args.captcha_next,
        "upload_500_next": args.upload_500_next,
        "upload_variant": args.upload_variant,
        "renamed_similar_tab": args.renamed_similar_tab,
        "fault_rate": args.fault_rate,
    }
    fake = FakeYandex(**settings)
    runners = []
    runner, base_url = await start(fake, args.host, args.port)
    runners.append(runner)
    info: dict[str, Any] = {"base_url": base_url}
    if args.image_web_port is not None:
        from aiohttp import web

        from . import image_web  # built beside this module; an async make_app()

        app = image_web.make_app()
        if asyncio.iscoroutine(app):
            app = await app
        web_runner = web.AppRunner(app, access_log=None)
        await web_runner.setup()
        await web.TCPSite(web_runner, args.host, args.image_web_port).start()
        runners.append(web_runner)
        info["proxy"] = f"http://{args.host}:{web_runner.addresses[0][1]}"
    print(base_url, flush=True)
    print(json.dumps(info), file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for r in runners:
            await r.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
