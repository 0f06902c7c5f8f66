"""The floor of step 5's benchmark: the simplest downloader, as a command of its own.

A semaphore, GET through the proxy, write the body; no checks, no ledger, no
sidecar. ``bench_download.py`` runs it as a whole command (interpreter start
and imports included), as it runs ``5_Download_async.py`` and img2dataset.

    .venv/bin/python bench/plain_download.py PROXY URLS.txt OUT_DIR|- [CONCURRENCY]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp


async def plain_loop(all_urls: list[str], proxy: str, out: Path | None, concurrency: int) -> int:
    """GET every URL (``concurrency`` at once), write each 200 body to ``out``."""
    sem = asyncio.Semaphore(concurrency)
    got = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    ) as session:

        async def one(i: int, url: str) -> None:
            nonlocal got
            async with sem, session.get(url, proxy=proxy) as resp:
                data = await resp.read()
            if resp.status == 200:
                got += 1
                if out is not None:
                    await asyncio.to_thread((out / f"{i:05d}.jpg").write_bytes, data)

        await asyncio.gather(*(one(i, u) for i, u in enumerate(all_urls)))
    return got


def main() -> int:
    proxy, url_file, out_arg = sys.argv[1:4]
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    urls = Path(url_file).read_text(encoding="utf-8").split()
    out = None if out_arg == "-" else Path(out_arg)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    got = asyncio.run(plain_loop(urls, proxy, out, concurrency))
    print(f"{got} of {len(urls)}")
    return 0 if got == len(urls) else 1


if __name__ == "__main__":
    sys.exit(main())
