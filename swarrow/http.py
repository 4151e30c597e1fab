"""The HTTP endpoint: `/metrics`, `/healthz` (liveness), `/readyz` (readiness), and `--metrics-addr` parsing.

The HTTP server runs in a daemon thread so a scrape is answered even while the event loop is busy;
liveness therefore cannot be "the server answered" but "the event loop's heartbeat is fresh".
Exposition is prometheus-client's own WSGI app (content negotiation, OpenMetrics, gzip).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from collections.abc import Iterable
from typing import Final
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    make_wsgi_app,
)

from swarrow._http_server import DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT, BoundedWSGIServer
from swarrow.errors import ConfigurationError
from swarrow.health import HealthState
from swarrow.validation import require_int, require_seconds

__all__ = ["ALL_INTERFACES", "DEFAULT_HOST", "DEFAULT_PORT", "MetricsServer", "parse_metrics_addr"]

logger = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
# What ":PORT" means, as for Prometheus' exporters (--web.listen-address=:9100).
ALL_INTERFACES: Final = "0.0.0.0"
DEFAULT_PORT: Final = 9100


def _json(start_response: StartResponse, ok: bool, why: str) -> list[bytes]:
    body = json.dumps({"status": "ok" if ok else "unavailable", "detail": why}).encode()
    status = "200 OK" if ok else "503 Service Unavailable"
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


class MetricsServer:
    """Serves `/metrics`, `/healthz` and `/readyz` from a daemon thread; `start()` / `stop()`.

    Binds 127.0.0.1 by default: metrics are not for the whole network unless asked for.
    Port 0 picks a free port, readable from `port` after `start()`. A slow or hostile client cannot
    exhaust it: at most `max_connections` requests are served at once (one more gets a 503 at once),
    each must arrive whole within `read_timeout` seconds, and the threads are the endpoint's own,
    never the ones sync callbacks run in.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        registry: CollectorRegistry | None = None,
        health: HealthState | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        if require_int("port", port, minimum=0) > 65535:
            raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
        self.host = host
        self.port = port
        self.registry = REGISTRY if registry is None else registry
        self.health = HealthState() if health is None else health
        self._metrics_app = make_wsgi_app(self.registry)
        self.max_connections = require_int("max_connections", max_connections)
        self.read_timeout = require_seconds("read_timeout", read_timeout)
        self._server: BoundedWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """host:port as a URL authority (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI application: prometheus-client's exposition on /metrics, health on the other two."""
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            result: Iterable[bytes] = self._metrics_app(environ, start_response)
            return result
        if path == "/healthz":
            return _json(start_response, *self.health.liveness())
        if path == "/readyz":
            return _json(start_response, *self.health.readiness())
        body = b"swarrow: see /metrics, /healthz, /readyz\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def start(self) -> None:
        """Bind and serve in a daemon thread; ConfigurationError if the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("this MetricsServer is already started")
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family = infos[0][0]
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {self.address}: {exc}") from None

        try:
            server = BoundedWSGIServer(
                (self.host, self.port),
                family=family,
                max_connections=self.max_connections,
                read_timeout=self.read_timeout,
            )
        except OSError as exc:
            why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise ConfigurationError(f"cannot listen on {self.address}: {why}") from None
        server.set_app(self.app)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="swarrow-metrics", daemon=True
        )
        self._thread.start()
        logger.info("serving /metrics, /healthz and /readyz on http://%s", self.address)

    def stop(self) -> None:
        """Stop serving and release the port (blocks at most ~0.1 s for the serve loop to notice)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def parse_metrics_addr(value: str) -> tuple[str, int]:
    """Parse `--metrics-addr`: "HOST:PORT", "[IPv6]:PORT", "PORT" (127.0.0.1) or ":PORT" (every interface).

    ":PORT" follows Prometheus' exporters (`--web.listen-address=:9100`): every IPv4 interface, on
    purpose. A bare "PORT" keeps the safe default, loopback. A URL is refused, naming what to give.
    """
    from swarrow.urls import mask_url

    text = value.strip()
    value = mask_url(value)  # only shown from here on: a URL given by mistake may carry a password
    if "://" in text or "/" in text:
        raise ValueError(
            f"invalid metrics address {value!r}: give HOST:PORT (e.g. 127.0.0.1:9100), not a URL; "
            "the endpoint serves /metrics, /healthz and /readyz itself"
        )
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, text
    elif not host:
        host = ALL_INTERFACES
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"invalid metrics address {value!r}: empty IPv6 host")
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"invalid metrics address {value!r}: put an IPv6 host in brackets, e.g. [::1]:9100")
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"invalid metrics address {value!r}: the port must be an integer in 1..65535")
    return host, int(port_text)
