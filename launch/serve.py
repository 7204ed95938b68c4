"""The HTTP server of every role: `/metrics` (Prometheus exposition) and `/healthz`.

Anything that can connect may be hostile or just careless (a half-open scrape, a port scanner,
a slowloris), so the server never spends a thread on a connection: one asyncio thread holds
every connection, a request must arrive whole within `timeout` seconds, at most
`max_connections` are open (the oldest one still sending its request is dropped for a
newcomer, so a scrape always gets through), and the exposition and health check run on a
fixed pool of `RENDER_THREADS` threads, bounded by the same timeout (a health check stuck on a
lock answers 503 instead of hanging the scrape). Optional TLS (standard library `ssl`) and
HTTP basic auth; prometheus-client's own server has neither a health endpoint nor server-side
basic auth. Port 0 picks a free port; the bound URL is returned.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from asyncrl.launch.memory import MemoryMetrics

logger = logging.getLogger(__name__)

HealthFn = Callable[[], tuple[bool, str]]

RENDER_THREADS = 2
MAX_REQUEST_BYTES = 8192  # request line + headers; a scrape sends a few hundred


@dataclass(frozen=True)
class HttpOptions:
    """How the server is reached: TLS certificate and key (both or neither), and a file
    holding `user:password` for basic auth (empty: no auth)."""

    certfile: str = ""
    keyfile: str = ""
    auth_file: str = ""
    timeout: float = 5.0
    max_connections: int = 256


def http_options(section) -> HttpOptions:
    """The server settings of a learner or generator config section."""
    return HttpOptions(
        section.metrics_tls_certfile, section.metrics_tls_keyfile, section.metrics_auth_file
    )


class ProcessMetrics:
    """Series every role exposes about the process itself: whether its health check passes
    (sampled at each scrape), whether its run finished normally (so alerting tells a
    finish from a crash once the process is gone), and its memory (`launch.memory`)."""

    def __init__(self, registry: CollectorRegistry):
        self.healthy = Gauge(
            "asyncrl_healthy",
            "1 while /healthz answers 200, else 0 (sampled at each scrape).",
            registry=registry,
        )
        self.run_finished = Gauge(
            "asyncrl_run_finished",
            "1 once the run finished normally (learner: target reached; generator: told so by "
            "the learner), else 0.",
            registry=registry,
        )
        self.memory = MemoryMetrics(registry)


def start_metrics_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    health: HealthFn,
    options: HttpOptions | None = None,
) -> tuple[str, MetricsServer]:
    """Serve `registry` on http(s)://host:port/metrics and `health()` on /healthz (200 or 503);
    returns the bound /metrics URL and the server (`close()` stops it)."""
    server = MetricsServer(host, port, registry, health, options or HttpOptions())
    return server.url, server


class MetricsServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: HealthFn,
        options: HttpOptions,
    ):
        self.registry = registry
        self.health = health
        self.options = options
        self._ssl = ssl_context(options)
        self._auth = auth_header(options.auth_file)
        # Bound here, in the caller's thread, so a taken port fails the caller at once.
        self._sock = socket.create_server((host, port), backlog=128)
        bound_host, bound_port = self._sock.getsockname()[:2]
        scheme = "https" if self._ssl else "http"
        self.url = f"{scheme}://{bound_host}:{bound_port}/metrics"
        self._pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="metrics-render")
        self._pending: dict[asyncio.StreamWriter, None] = {}  # still sending their request
        self._open = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)
        self._thread.start()
        self._started.wait()

    @property
    def connections(self) -> int:
        """Connections open now (tests)."""
        return self._open

    def close(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- event loop
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(
                self._connection,
                sock=self._sock,
                ssl=self._ssl,
                ssl_handshake_timeout=self.options.timeout if self._ssl else None,
                limit=MAX_REQUEST_BYTES,
            )
        )
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(self._loop)  # connections still open: closed first
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._open += 1
        if len(self._pending) >= self.options.max_connections:
            # Full of connections that never finished a request: the oldest makes room.
            oldest = next(iter(self._pending))
            self._pending.pop(oldest)
            oldest.transport.abort()
        self._pending[writer] = None
        try:
            try:
                path = await asyncio.wait_for(self._read_request(reader), self.options.timeout)
            except (TimeoutError, ValueError, ConnectionError, EOFError, asyncio.LimitOverrunError):
                return  # slow, oversize, malformed or gone: closed without an answer
            finally:
                self._pending.pop(writer, None)
            if path is None:
                code, ctype, body, extra = 401, "text/plain", b"unauthorized\n", _CHALLENGE
            else:
                code, ctype, body = await self._render(path)
                extra = ()
            head = [f"HTTP/1.1 {code} {_REASONS[code]}", f"Content-Type: {ctype}"]
            head += [f"Content-Length: {len(body)}", "Connection: close", *extra]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            try:
                await asyncio.wait_for(writer.drain(), self.options.timeout)
            except (TimeoutError, ConnectionError):
                pass
        finally:
            self._open -= 1
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> str | None:
        """The request's path, or None when it lacks the configured credentials. ValueError
        for anything but a GET/HEAD with headers under MAX_REQUEST_BYTES (the reader's
        limit bounds each line)."""
        line = (await reader.readuntil(b"\n")).decode("latin-1").split()
        if len(line) != 3 or line[0] not in ("GET", "HEAD"):
            raise ValueError("not a GET request")
        total, authorization = len(line), ""
        while True:
            header = await reader.readuntil(b"\n")
            total += len(header)
            if total > MAX_REQUEST_BYTES:
                raise ValueError("request headers too large")
            if header in (b"\r\n", b"\n"):
                break
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "authorization":
                authorization = value.strip()
        if self._auth and not hmac.compare_digest(authorization.encode(), self._auth.encode()):
            return None
        return line[1].split("?", 1)[0]

    async def _render(self, path: str) -> tuple[int, str, bytes]:
        if path not in ("/metrics", "/healthz"):
            return 404, "text/plain", b"not found\n"
        work = self._exposition if path == "/metrics" else self._health
        try:
            return await asyncio.wait_for(
                self._loop.run_in_executor(self._pool, work), self.options.timeout
            )
        except TimeoutError:
            what = "metrics" if path == "/metrics" else "health check"
            msg = f"{what} did not answer within {self.options.timeout:g}s\n"
            return 503, "text/plain; charset=utf-8", msg.encode()

    # ---------------------------------------------------------------- render threads
    def _exposition(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def _health(self) -> tuple[int, str, bytes]:
        ok, reason = self.health()
        body = (reason or ("ok" if ok else "unhealthy")).encode() + b"\n"
        return (200 if ok else 503), "text/plain; charset=utf-8", body


_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 503: "Service Unavailable"}
_CHALLENGE = ('WWW-Authenticate: Basic realm="asyncrl", charset="UTF-8"',)


def ssl_context(options: HttpOptions) -> ssl.SSLContext | None:
    if bool(options.certfile) != bool(options.keyfile):
        raise ValueError("metrics TLS needs both a certificate file and a key file")
    if not options.certfile:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(options.certfile, options.keyfile)
    return ctx


def auth_header(auth_file: str) -> str:
    """The Authorization header value a client must send (empty: auth off). The file holds
    one `user:password` line, so the secret stays out of the config and the command line."""
    if not auth_file:
        return ""
    text = Path(auth_file).read_text().strip()
    if ":" not in text or "\n" in text:
        raise ValueError(f"{auth_file}: expected one line `user:password`")
    return "Basic " + base64.b64encode(text.encode()).decode()
