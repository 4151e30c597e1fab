"""A WSGI server for the metrics endpoint that a slow or hostile client cannot exhaust.

Built from the standard library's public classes (`socketserver.ThreadingMixIn`, `wsgiref`'s
`WSGIServer` and `WSGIRequestHandler`) with three limits the plain ones lack:

- at most `max_connections` requests are handled at once, each in its own short-lived thread; one
  more is answered `503` at once (without a thread) and closed;
- a request must arrive whole within `read_timeout` seconds of its connection, however slowly it
  trickles in (a sweep in the serve loop closes the laggards), and every socket read or write times
  out after `read_timeout` too;
- these threads are the endpoint's own: they never take a slot of anyio's worker-thread pool, where
  sync callbacks run, and a busy callback pool never delays a scrape.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import time
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_READ_TIMEOUT", "BoundedWSGIServer", "QuietHandler"]

logger = logging.getLogger("swarrow.http")

DEFAULT_MAX_CONNECTIONS: Final = 16
DEFAULT_READ_TIMEOUT: Final = 5.0
_BUSY_BODY: Final = b"too many connections: retry\n"
_BUSY: Final = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class QuietHandler(WSGIRequestHandler):
    """`wsgiref`'s handler with per-operation socket timeouts and access lines at DEBUG."""

    server: BoundedWSGIServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.read_timeout)  # every read and write of the request

    def parse_request(self) -> bool:
        # A request cut by the deadline reads as end-of-file, which would pass for a complete head.
        parsed = super().parse_request()
        return self.server.request_received(self.connection) and parsed

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("metrics endpoint: " + format, *args)


class BoundedWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """A threading WSGI server with a connection cap and a whole-request read deadline (see the module)."""

    daemon_threads = True
    block_on_close = False  # stop() must not wait for a client that stopped reading
    request_queue_size = 128  # a burst waits in the kernel's queue (with 5, clients retried after 1 s)

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[QuietHandler] = QuietHandler,
        *,
        max_connections: object = DEFAULT_MAX_CONNECTIONS,
        read_timeout: object = DEFAULT_READ_TIMEOUT,
        family: socket.AddressFamily = socket.AF_INET,
        clock: Any = time.monotonic,
    ) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be an integer >= 1, got {max_connections!r}")
        if (
            isinstance(read_timeout, bool)
            or not isinstance(read_timeout, int | float)
            or not read_timeout > 0
        ):
            raise ValueError(f"read_timeout must be a number of seconds > 0, got {read_timeout!r}")
        self.address_family = family
        self.max_connections = max_connections
        self.read_timeout = float(read_timeout)
        self.accepted = 0  # connections taken from the listening socket, handled or refused
        self.rejected = 0  # connections answered 503 because the cap was reached
        self.incomplete = 0  # connections closed before their request arrived whole (deadline, timeout, EOF)
        self._clock = clock
        self._lock = threading.Lock()
        self._active = 0
        self._deadlines: dict[socket.socket, float] = {}
        self._cut: set[socket.socket] = set()
        super().__init__(address, handler)

    @property
    def active(self) -> int:
        """Connections being handled now (each holds one thread)."""
        return self._active

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self.accepted += 1
            if self._active >= self.max_connections:
                self.rejected += 1
                busy = True
            else:
                self._active += 1
                self._deadlines[request] = self._clock() + self.read_timeout
                busy = False
        if busy:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started (e.g. the system refused one): give the slot back
            self._release(request)
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def request_received(self, request: socket.socket) -> bool:
        """The request head is read: False if the deadline cut it; the sweep leaves it alone from now on."""
        with self._lock:
            self._deadlines.pop(request, None)
            return request not in self._cut

    def service_actions(self) -> None:
        """Close connections whose request did not arrive whole within `read_timeout` (serve loop)."""
        if not self._deadlines:
            return
        now = self._clock()
        with self._lock:
            late = [request for request, deadline in self._deadlines.items() if deadline <= now]
            for request in late:
                del self._deadlines[request]
                self._cut.add(request)
        for request in late:
            # Wakes the handler's blocked read with end-of-file; the handler thread then ends.
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("metrics endpoint: error while serving %s", client_address, exc_info=True)

    def _release(self, request: Any) -> None:
        with self._lock:
            self._active -= 1
            if self._deadlines.pop(request, None) is not None or request in self._cut:
                self.incomplete += 1
            self._cut.discard(request)

    def _refuse(self, request: socket.socket) -> None:
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(_BUSY)  # fits the empty send buffer of a new connection: never blocks
        self.shutdown_request(request)
