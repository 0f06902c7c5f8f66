"""Run-level stops: new searches pause after a captcha, the run stops after too many."""

from __future__ import annotations

import asyncio
import time

from .errors import Stopped
from .settings import DEFAULT_BACKOFF


class Gate:
    """Pauses new searches after a captcha (backoff ladder); stops after K in a row,
    or when the first searches all fail to connect."""

    def __init__(self, backoff: tuple[float, ...], max_in_row: int) -> None:
        self.backoff = backoff or DEFAULT_BACKOFF
        self.max_in_row = max_in_row
        self.in_row = 0
        self.resume_at = 0.0
        self.stopped = ""  # why the run stopped: "captcha" or "connect"
        self.connected = False  # one search reached the site
        self.connect_failures = 0

    async def wait(self) -> None:
        while True:
            if self.stopped:
                raise Stopped
            delay = self.resume_at - time.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(delay)

    def hit(self) -> float:
        self.in_row += 1
        if self.in_row >= self.max_in_row:
            self.stopped = self.stopped or "captcha"
            return 0.0
        pause = self.backoff[min(self.in_row - 1, len(self.backoff) - 1)]
        self.resume_at = max(self.resume_at, time.monotonic() + pause)
        return pause

    def ok(self) -> None:
        self.in_row = 0

    def cannot_connect(self, limit: int) -> None:
        self.connect_failures += 1
        if not self.connected and self.connect_failures >= limit:
            self.stopped = self.stopped or "connect"
