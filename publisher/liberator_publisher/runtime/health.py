"""HTTP probes and metrics: ``/healthz``, ``/readyz`` and ``/metrics`` on one small server.

Liveness deliberately stays 200 while parked (with the reason in the body): a failing liveness
probe restarts the container, and a restart cannot fix a lost resume point, so it would only
restart-loop the application pod. 503 means a loop is stuck, which a restart does fix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["Health", "HealthServer", "Probe"]


@dataclass(frozen=True)
class Health:
    """What ``/healthz`` and ``/readyz`` answer."""

    alive: bool
    """False when a loop is stuck; ``/healthz`` then answers 503."""
    ready: bool
    """Once configured, always true (standbys included)."""
    detail: str
    """The body of ``/healthz``: ``ok``, the parked reason, or what is stuck."""


Probe = Callable[[], Health]


class HealthServer:
    """A threaded HTTP server in a daemon thread."""

    def __init__(
        self, port: int, probe: Probe, metrics: Callable[[], bytes], host: str = "0.0.0.0"
    ) -> None:
        handler = _handler(probe, metrics)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="liberator-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(probe: Probe, metrics: Callable[[], bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, metrics(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/healthz":
                health = probe()
                self._reply(200 if health.alive else 503, health.detail.encode() + b"\n")
            elif path == "/readyz":
                health = probe()
                self._reply(
                    200 if health.ready else 503,
                    b"ready\n" if health.ready else b"not ready: " + health.detail.encode() + b"\n",
                )
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, kind: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds would flood the log; stay quiet."""

    return Handler
