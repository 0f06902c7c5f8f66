"""The HTTP side of step 5: one GET with its reasons, retries, limits, the checks.

Nothing here touches the DB or names a final file: a :class:`Fetcher` turns a
:class:`Candidate` into a :class:`Body` (or a :class:`FetchFailure` with the
reason), and :func:`check_body` turns a body into a :class:`Checked` image
(or a failure). A worker on another machine can run both and hand the
:class:`Checked` (its body spilled to a temporary file in the output folder
with :meth:`Checked.spill`) back to the driver, which alone settles it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType

import aiofiles
import aiohttp
from yarl import URL

from ..console import one_line
from ..urls import host_of
from .checks import FetchFailure, file_type, inspect_image, refuse_text, sniff
from .store import temp_path

DEFAULT_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
ACCEPT = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"
CHUNK = 64 * 1024
SPILL_AT = 1024 * 1024  # bodies up to this size stay in memory until verified
MAX_HOST_WAIT = 120.0  # a host asking for a longer pause fails its URLs as retryable
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
BACKOFF_STATUS = frozenset({429, 503})
# Reasons that say "the network (or the proxy) is not there", not "this URL is bad".
NETWORK_REASONS = frozenset(
    {"network error", "proxy unreachable", "timeout", "connection reset", "connection closed"}
)
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10


@dataclass
class Candidate:
    url: str
    variant_type: str  # original, preview, dups, thumb
    origin_url: str | None = None


@dataclass(frozen=True)
class FetchOptions:
    """What the HTTP side and the checks need from the settings (picklable)."""

    concurrency: int = 40
    per_host: int = 4
    timeout: float = 40.0
    max_bytes: int = 50 * 1024 * 1024
    retries: int = 3
    proxy: str | None = None
    user_agent: str = DEFAULT_USER_AGENT
    min_side: int = 0
    min_bytes: int = 0
    allow_private: bool = False


@dataclass
class Body:
    """A body received in full: in memory, or spilled to a temporary file."""

    buffer: bytes | bytearray
    temp: Path | None
    size: int
    sha256: str
    head: bytes
    content_type: str
    http_status: int
    final_url: str
    attempts: int = 0


@dataclass
class Checked:
    """A body that passed every check: a whole image of a known format."""

    body: Body
    fmt: str
    width: int
    height: int
    ext: str
    mime: str

    def spill(self, out: Path, url: str) -> Path:
        """Move an in-memory body to a temporary file in ``out`` (for a remote driver)."""
        body = self.body
        if body.temp is None:
            temp = temp_path(out, url)
            try:
                temp.write_bytes(body.buffer)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            body.temp = temp
        elif body.buffer:
            with body.temp.open("ab") as handle:
                handle.write(body.buffer)
        body.buffer = bytearray()
        return body.temp


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host literal stands for, also in the forms browsers and
    ``inet_aton`` accept (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _not_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is not on the public internet (None when it is)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "not global"


def host_refusal(host: str) -> str | None:
    """A reason when the URL's host literal (IDNA already applied) is not public."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return f"{name} (loopback)"
    ip = _ip_of(name)
    if ip is None:
        return None
    kind = _not_public(ip)
    return f"{name} = {ip} ({kind})" if kind else None


def check_body(body: Body, opts: FetchOptions) -> Checked:
    """In a worker thread: hash, the filters, a real image; :class:`FetchFailure` if not.

    A spilled body has its remaining bytes appended to its temporary file.
    """
    if body.size < opts.min_bytes:
        raise FetchFailure(
            f"smaller than --min-bytes {opts.min_bytes:,}", f"{body.size:,} bytes", skipped=True
        )
    if body.temp is not None and body.buffer:
        with body.temp.open("ab") as handle:
            handle.write(body.buffer)
        body.buffer = bytearray()
    if not body.sha256:
        body.sha256 = hashlib.sha256(body.buffer).hexdigest()
    fmt, width, height = inspect_image(body.temp if body.temp is not None else bytes(body.buffer))
    if opts.min_side and min(width, height) < opts.min_side:
        raise FetchFailure(
            f"smaller than --min-side {opts.min_side}", f"{width}x{height}", skipped=True
        )
    ext, mime = file_type(fmt)
    return Checked(body, fmt, width, height, ext, mime)


@dataclass
class HostState:
    sem: asyncio.Semaphore
    resume_at: float = 0.0
    strikes: int = 0
    users: int = 0


# host -> (valid until, why it is refused or None), for the whole process: a Ray
# worker runs one Fetcher per shard, and each shard must not resolve its hosts
# again (a lookup can block a thread for seconds where DNS does not answer).
VERDICT_TTL = 300.0
_VERDICTS: dict[str, tuple[float, str | None]] = {}


@functools.lru_cache(maxsize=1024)
def parsed(url: str) -> URL:
    """``URL(url)``, remembered: a URL is parsed when its page is read (its host's
    address check starts), when its unit waits for the check and when it is fetched."""
    return URL(url)


def host_key(url: str) -> str:
    """The host whose limits a URL counts against: :func:`host_of`'s answer, from the
    URL parsed once (:func:`parsed`, as its page was read) instead of split again."""
    try:
        host = parsed(url).host
    except ValueError:
        return host_of(url) or ""
    return host.rstrip(".").lower() if host else (host_of(url) or "")


RESOLVER_THREADS = 64  # lookups at once: a lost DNS answer holds its thread for 5 s


class _Resolver:
    """Daemon threads that look host names up, for the whole process.

    Apart from the event loop's default executor, so a lookup that waits for a
    slow or lossy DNS server never delays the checks of bodies already
    received; daemon threads, so a lookup nobody waits for any more (one asked
    again, see :func:`resolve`) never holds up the end of the process.
    """

    def __init__(self, threads: int) -> None:
        self.size = threads
        self.jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future, str, int]]
        self.jobs = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.idle = 0  # threads waiting for a job
        self.queued = 0  # jobs not yet taken by a thread
        self.lock = threading.Lock()

    def lookup(self, host: str, port: int) -> asyncio.Future[list[str] | None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[str] | None] = loop.create_future()
        with self.lock:
            self.queued += 1
            if self.queued > self.idle and len(self.threads) < self.size:
                thread = threading.Thread(target=self._run, name="resolver", daemon=True)
                self.threads.append(thread)
                self.idle += 1
                thread.start()
        self.jobs.put((loop, future, host, port))
        return future

    def _run(self) -> None:
        while True:
            loop, future, host, port = self.jobs.get()
            with self.lock:
                self.queued -= 1
                self.idle -= 1
            try:
                answer = _addresses(host, port)
            finally:
                with self.lock:
                    self.idle += 1
            with suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_answer, future, answer)


def _answer(future: asyncio.Future[list[str] | None], answer: list[str] | None) -> None:
    if not future.done():
        future.set_result(answer)


_RESOLVER = _Resolver(RESOLVER_THREADS)


# A lookup not answered after LOOKUP_AGAIN seconds is asked again alongside it (up to
# LOOKUP_TRIES at once): the system resolver waits 5 s before it sends a lost query
# again, and every URL of the host waits for the answer.
LOOKUP_AGAIN = 1.0
LOOKUP_TRIES = 3
# getaddrinfo errors that are the DNS's answer (no such name, no address), not a failure
_NO_SUCH_NAME = frozenset(
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)  # fmt: skip


def _addresses(host: str, port: int) -> list[str] | None:
    """In a resolver thread: the addresses ``host`` has here; [] when the DNS says it
    has none; None when the lookup failed (no answer, a temporary error)."""
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return [] if exc.errno in _NO_SUCH_NAME else None
    except (OSError, UnicodeError):
        return None
    return [str(info[4][0]) for info in infos]


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to here ([] when none or no answer at all).

    The first answer wins; a lookup still unanswered after :data:`LOOKUP_AGAIN`
    seconds (or failed) is asked again, up to :data:`LOOKUP_TRIES` lookups.
    """
    tries = {_RESOLVER.lookup(host, port)}
    started = 1
    while tries:
        more = started < LOOKUP_TRIES
        done, tries = await asyncio.wait(
            tries, timeout=LOOKUP_AGAIN if more else None, return_when=asyncio.FIRST_COMPLETED
        )
        for finished in done:
            answer = finished.result()
            if answer is not None:
                return answer
        if more:
            tries.add(_RESOLVER.lookup(host, port))
            started += 1
    return []


class Fetcher:
    """One HTTP session with global and per-host limits, pauses and retries.

    ``async with Fetcher(opts, out) as f: body = await f.fetch(url)``. A host
    that answers 429/503 is paused (Retry-After in seconds or as an HTTP-date,
    with jitter) without any task holding a connection slot while it waits.
    """

    def __init__(self, opts: FetchOptions, out: Path) -> None:
        self.opts = opts
        self.out = out
        self.hosts: dict[str, HostState] = {}
        self.global_sem = asyncio.Semaphore(opts.concurrency)
        self.session: aiohttp.ClientSession | None = None
        self.proxy: URL | None = None
        # host -> why it is refused (None: public), one check per host and run
        self.verdicts: dict[str, asyncio.Future[str | None]] = {}
        # Told after every attempt (the driver counts network errors in a row).
        self.on_attempt: Callable[[FetchFailure | None], None] = lambda failure: None

    async def __aenter__(self) -> Fetcher:
        o = self.opts
        # total bounds the body read too (a drip ends as a timeout); no sock_read,
        # which re-arms a timer on every packet and can never fire before total.
        timeout = aiohttp.ClientTimeout(total=o.timeout, connect=min(10.0, o.timeout))
        connector = aiohttp.TCPConnector(limit=o.concurrency, limit_per_host=0, ttl_dns_cache=300)
        self.proxy = URL(o.proxy) if o.proxy else None  # parsed once, not per request
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": o.user_agent, "Accept": ACCEPT},
            trust_env=o.proxy is None,
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.session is not None:
            await self.session.close()

    def _host(self, host: str) -> HostState:
        state = self.hosts.get(host)
        if state is None:
            state = self.hosts[host] = HostState(asyncio.Semaphore(self.opts.per_host))
        state.users += 1
        return state

    def _release_host(self, host: str, state: HostState) -> None:
        state.users -= 1
        if state.users == 0 and state.resume_at <= time.monotonic():
            self.hosts.pop(host, None)

    async def fetch(self, url: str) -> Body:
        """Retries with exponential backoff for transient failures; never for 404/410.

        :class:`FetchFailure` carries ``attempts``; a body carries them too.
        """
        host = host_key(url)
        state = self._host(host)
        attempts = 0
        try:
            # The host's address verdict before any slot is taken: a slow lookup then
            # holds up this host's URLs only, not a connection slot the others need.
            await self.known_verdict(url)
            while True:
                wait = state.resume_at - time.monotonic()
                if wait > MAX_HOST_WAIT:
                    failure = FetchFailure(
                        "host asks to wait",
                        f"{wait:.0f} s (Retry-After)",
                        retryable=True,
                        http_status=429,
                    )
                    failure.attempts = attempts
                    raise failure
                if wait > 0:
                    await asyncio.sleep(wait)  # holding no slot
                    continue
                async with self.global_sem, state.sem:
                    if state.resume_at > time.monotonic():
                        continue  # the host said "slow down" while we queued
                    attempts += 1
                    try:
                        body = await self._get(url)
                    except FetchFailure as exc:
                        failure = exc
                        failure.attempts = attempts
                        self.on_attempt(failure)
                    else:
                        state.strikes = 0
                        body.attempts = attempts
                        self.on_attempt(None)
                        return body
                if failure.http_status in BACKOFF_STATUS:
                    state.strikes += 1
                    delay = failure.retry_after
                    if delay is None:
                        delay = min(60.0, 2.0**state.strikes)
                    delay *= 1 + random.uniform(0.05, 0.25)  # jitter: not all at once
                    state.resume_at = max(state.resume_at, time.monotonic() + delay)
                if not failure.retryable or attempts > self.opts.retries:
                    raise failure
                if failure.http_status not in BACKOFF_STATUS:
                    base = min(30.0, 0.5 * 2 ** (attempts - 1))
                    await asyncio.sleep(base * random.uniform(0.5, 1.0))
        finally:
            self._release_host(host, state)

    def check_and_spill(self, body: Body, url: str) -> Checked:
        """:func:`check_body` of a :meth:`fetch`'s body, which is then spilled to a
        temporary file in the output folder: what a remote worker hands back (a
        refused body's file is removed)."""
        try:
            checked = check_body(body, self.opts)
            checked.spill(self.out, url)
        except FetchFailure as exc:
            exc.attempts, exc.received = body.attempts, body.size
            exc.http_status, exc.content_type = body.http_status, body.content_type or None
            if body.temp is not None:
                body.temp.unlink(missing_ok=True)
            raise
        except BaseException:
            if body.temp is not None:
                body.temp.unlink(missing_ok=True)
            raise
        return checked

    def prime(self, url: str) -> None:
        """Start the address check of ``url``'s host now (without waiting for it), so
        the lookup runs while the URL waits for its turn."""
        if self.opts.allow_private:
            return
        with suppress(ValueError):
            target = parsed(url)
            host = target.host or ""
            remembered = _VERDICTS.get(host)
            if remembered is not None and remembered[0] > time.monotonic():
                return
            if host not in self.verdicts:
                self.verdicts[host] = asyncio.ensure_future(self._verdict(host, target.port))

    def checking(self, url: str) -> bool:
        """Is the address check of ``url``'s host under way (started, not done)?"""
        if self.opts.allow_private:
            return False
        try:
            host = parsed(url).host or ""
        except ValueError:
            return False
        remembered = _VERDICTS.get(host)
        if remembered is not None and remembered[0] > time.monotonic():
            return False
        known = self.verdicts.get(host)
        return known is not None and not known.done()

    async def known_verdict(self, url: str) -> None:
        """Wait until the address check of ``url``'s host is done (its verdict is used
        by :meth:`_get`); an unparsable URL is left to :meth:`_get` to refuse."""
        if self.opts.allow_private:
            return
        try:
            target = parsed(url)
        except ValueError:
            return
        if target.scheme in ("http", "https"):
            await self.refusal(target)

    async def refusal(self, url: URL) -> str | None:
        """Why ``url`` must not be fetched: its host is, or resolves to, a loopback,
        private, link-local or reserved address (unless ``allow_private``).

        The host is checked as written (IDNA applied by yarl, so a full-width
        ``ｌｏｃａｌｈｏｓｔ`` is ``localhost``) and as resolved here, even
        when a proxy will resolve it: a name that does not resolve here passes.
        """
        if self.opts.allow_private:
            return None
        host = url.host or ""
        remembered = _VERDICTS.get(host)
        if remembered is not None and remembered[0] > time.monotonic():
            return remembered[1]
        known = self.verdicts.get(host)
        if known is None:  # one check per host, shared by every URL that waits for it
            known = self.verdicts[host] = asyncio.ensure_future(self._verdict(host, url.port))
        verdict = await asyncio.shield(known)
        _VERDICTS[host] = (time.monotonic() + VERDICT_TTL, verdict)
        return verdict

    async def _verdict(self, host: str, port: int | None) -> str | None:
        verdict = host_refusal(host)
        if verdict is None and _ip_of(host.lower().rstrip(".")) is None:
            for address in await resolve(host, port or 80):
                kind = _not_public(ipaddress.ip_address(address.split("%", 1)[0]))
                if kind:
                    verdict = f"{host} resolves to {address} ({kind})"
                    break
        return verdict

    async def _get(self, url: str) -> Body:
        """One GET (redirects followed here, each hop checked), the body streamed and
        hashed; :class:`FetchFailure` on any problem."""
        assert self.session is not None, "use the Fetcher as an async context manager"
        o = self.opts
        try:
            target = parsed(url)
            for _hop in range(MAX_REDIRECTS + 1):
                if target.scheme not in ("http", "https"):
                    raise FetchFailure("invalid URL", f"redirect to {target.scheme}:")
                refused = await self.refusal(target)
                if refused:
                    raise FetchFailure(
                        "refused: private address", f"{refused}; --allow-private fetches it"
                    )
                async with self.session.get(
                    target, proxy=self.proxy, allow_redirects=False
                ) as resp:
                    location = resp.headers.get("Location")
                    if resp.status in REDIRECT_STATUS and location:
                        target = resp.url.join(URL(location))
                        continue
                    return await self._read(resp, url)
            raise FetchFailure("too many redirects")
        except FetchFailure:
            raise
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise FetchFailure(
                "timeout", f"no complete answer in {o.timeout:g} s", retryable=True
            ) from exc
        except aiohttp.TooManyRedirects as exc:
            raise FetchFailure("too many redirects") from exc
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, ValueError) as exc:
            raise FetchFailure("invalid URL", one_line(exc, 120)) from exc
        except aiohttp.ClientPayloadError as exc:
            text = repr(exc)
            if "Reset" in text or "reset" in text:
                raise FetchFailure("connection reset", "during the body", retryable=True) from exc
            raise FetchFailure("truncated body", one_line(exc, 120), retryable=True) from exc
        except (aiohttp.ClientConnectionResetError, ConnectionResetError) as exc:
            raise FetchFailure("connection reset", retryable=True) from exc
        except aiohttp.ClientProxyConnectionError as exc:
            raise FetchFailure("proxy unreachable", one_line(exc, 120), retryable=True) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise FetchFailure("connection closed", "by the server", retryable=True) from exc
        except aiohttp.ClientResponseError as exc:
            raise FetchFailure(
                "bad HTTP response", one_line(exc, 120), http_status=exc.status
            ) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise FetchFailure("network error", one_line(exc, 120), retryable=True) from exc
        # Any other OSError is the local disk (the spill file): not the URL's fault;
        # it propagates so the driver stops the run with one line.

    async def _read(self, resp: aiohttp.ClientResponse, url: str) -> Body:
        """The body of a final (non-redirect) answer, checked as it streams."""
        o = self.opts
        temp: Path | None = None
        handle = None
        try:
            ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if resp.status != 200:
                raise FetchFailure(
                    f"HTTP {resp.status}",
                    resp.reason or "",
                    retryable=resp.status in RETRYABLE_STATUS,
                    http_status=resp.status,
                    content_type=ctype or None,
                    retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                )
            declared = resp.content_length
            if declared is not None and declared > o.max_bytes:
                raise FetchFailure(
                    "too large",
                    f"Content-Length {declared:,} > --max-bytes {o.max_bytes:,}",
                    http_status=200,
                    content_type=ctype,
                )
            encoding = resp.headers.get("Content-Encoding", "").strip().lower()
            if declared is not None and declared <= SPILL_AT and encoding in ("", "identity"):
                # Small and not compressed: aiohttp reads exactly the declared bytes in
                # one call (a short body fails as truncated); then the same checks.
                data = await resp.content.read()
                head = data[:64]
                if not sniff(head):
                    refuse_text(head, ctype)
                return Body(data, None, len(data), "", head, ctype, 200, str(resp.url))
            digest = None  # bodies kept in memory are hashed in the checking thread
            buffer = bytearray()
            head = b""
            size = 0
            async for chunk in resp.content.iter_chunked(CHUNK):
                if len(head) < 64:
                    head = (head + chunk)[:64]
                    if len(head) >= 64 and not sniff(head):
                        refuse_text(head, ctype)
                size += len(chunk)
                if size > o.max_bytes:
                    raise FetchFailure(
                        "too large",
                        f"more than --max-bytes {o.max_bytes:,}",
                        http_status=200,
                        content_type=ctype,
                    )
                buffer += chunk
                if digest is not None:
                    digest.update(chunk)
                if len(buffer) >= SPILL_AT:
                    if digest is None:
                        digest = hashlib.sha256(buffer)
                    if handle is None:
                        temp = temp_path(self.out, url)
                        handle = await aiofiles.open(temp, "wb")
                    await handle.write(bytes(buffer))
                    buffer.clear()
            if not sniff(head):
                refuse_text(head, ctype)
            if handle is not None:
                await handle.close()
                handle = None
            sha = digest.hexdigest() if digest is not None else ""
            body = Body(buffer, temp, size, sha, head, ctype, 200, str(resp.url))
            temp = None  # the body owns it now
            return body
        finally:
            if handle is not None:
                with suppress(OSError):
                    await handle.close()
            if temp is not None:
                temp.unlink(missing_ok=True)
