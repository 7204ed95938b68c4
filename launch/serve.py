"""A tiny HTTP server for `/metrics` (Prometheus exposition) and `/healthz`.

prometheus-client's own server has no health endpoint; this one serves both from one port on a
daemon thread. Port 0 picks a free port; the bound URL is returned.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

HealthFn = Callable[[], tuple[bool, str]]


def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry, health: HealthFn
) -> tuple[str, ThreadingHTTPServer]:
    """Serve `registry` on http://host:port/metrics and `health()` on /healthz (200 or 503)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
            elif path == "/healthz":
                ok, reason = health()
                body = (reason or ("ok" if ok else "unhealthy")).encode() + b"\n"
                ctype, code = "text/plain; charset=utf-8", 200 if ok else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # scrapes every second would flood the log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    bound_host, bound_port = server.server_address[:2]
    return f"http://{bound_host}:{bound_port}/metrics", server
