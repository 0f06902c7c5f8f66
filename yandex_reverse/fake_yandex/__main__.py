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
import dataclasses
import json
import sys
from typing import Any

from .site import END_MODES, UPLOAD_VARIANTS, FakeYandex, Settings, start


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
    p.add_argument("--upload-variant", choices=UPLOAD_VARIANTS, default="A")
    p.add_argument("--renamed-similar-tab", action="store_true", help="change the tab's markup")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of results with yr_fault")
    p.add_argument("--image-web-port", type=int, help="also start the image web on this port")
    # every other switch of Settings, as --its-name (booleans: a flag; lists: 1,2; dicts: JSON)
    taken = {a.dest for a in p._actions}
    for f in dataclasses.fields(Settings):
        if f.name in taken:
            continue
        default = getattr(Settings(), f.name)
        flag = "--" + f.name.replace("_", "-")
        if default is True:
            no = "--no-" + f.name.replace("_", "-")
            p.add_argument(no, dest=f.name, action="store_false", help=f"switch off {f.name}")
        elif isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=f"switch on {f.name}")
        elif isinstance(default, list):
            p.add_argument(flag, type=_ints, default=default, help=f"{f.name}: 1,2,...")
        elif isinstance(default, dict):
            p.add_argument(flag, type=json.loads, default=default, help=f"{f.name} (JSON)")
        else:
            kind = type(default) if default is not None else int
            p.add_argument(flag, type=kind, default=default, help=f"{f.name} (default {default})")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    names = {f.name for f in dataclasses.fields(Settings)}
    settings: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
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
