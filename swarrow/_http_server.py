"""A WSGI server for the metrics endpoint that a slow or hostile client cannot exhaust.

Built from the standard library's public classes (`socketserver.ThreadingMixIn`, `wsgiref`'s
`WSGIServer` and `WSGIRequestHandler`) with three limits the plain ones lack:

- at most `max_connections` requests are handled at once, each in its own short-lived thread; one
  more takes the place of the oldest connection still sending its request after 1 s (so a
  slow-sending client cannot keep a liveness probe out), else is answered `503` at once (without a
  thread) and closed;
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
_STALL: Final = 1.0  # at the cap, a request still not in after this long makes room for a newcomer
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
        self.evicted = 0  # connections cut, still sending their request, to make room for a newcomer
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
        victim = None
        with self._lock:
            self.accepted += 1
            now = self._clock()
            if self._active >= self.max_connections:
                victim = self._stalled(now)
            busy = self._active >= self.max_connections and victim is None
            if busy:
                self.rejected += 1
            else:
                self._active += 1
                self._deadlines[request] = now + self.read_timeout
        if victim is not None:
            with contextlib.suppress(OSError):
                victim.shutdown(socket.SHUT_RDWR)  # its thread ends at once (end-of-file)
        if busy:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started (e.g. the system refused one): give the slot back
            self._release(request)
            self.shutdown_request(request)
            raise

    def _stalled(self, now: float) -> socket.socket | None:
        """Under the lock, at the cap: cut the oldest connection whose request is still not in after
        `_STALL` seconds, for the newcomer. Its thread ends at once, so at most twice the cap run at any
        moment; a slow-sending client can then hold every slot only until a prompt client (a probe) comes.
        """
        if self._active >= 2 * self.max_connections or not self._deadlines:
            return None
        request, deadline = min(self._deadlines.items(), key=lambda item: item[1])
        if now - (deadline - self.read_timeout) < min(_STALL, self.read_timeout / 2):
            return None  # a burst of prompt clients: the newcomer waits its turn (503)
        del self._deadlines[request]
        self._cut.add(request)
        self.evicted += 1
        return request

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
