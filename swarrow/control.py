"""The handle processors use to stop the consumer: one stop path for every reason."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

import anyio

__all__ = ["ConsumerControl", "StopReason", "current_control"]


@dataclass(frozen=True, slots=True)
class StopReason:
    """Why a consumer stopped: a short stable `code` (for metrics and exit codes) and a human `detail`."""

    code: str
    detail: str = ""
    immediate: bool = False

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


_current: ContextVar[ConsumerControl | None] = ContextVar("swarrow_consumer_control", default=None)


def current_control() -> ConsumerControl | None:
    """The control of the run the calling task belongs to; None outside a stack's lifespan.

    The stack's lifespan sets it, and the consumer's worker tasks start inside that lifespan, so a
    processor that must stop the run calls this when it needs to instead of keeping the handle.
    """
    return _current.get()


class ConsumerControl:
    """Shared by the consumer and every processor's lifespan for one run.

    `stop()` asks for a graceful stop (no new messages, in-flight ones finish within the grace
    period); `stop_now()` cancels in-flight messages too, leaving them unacked for redelivery.
    The first reason given wins; a later `stop_now()` still escalates a graceful stop.
    """

    def __init__(self, *, queue_name: str, concurrency: int) -> None:
        self.queue_name = queue_name
        self.concurrency = concurrency
        self.reason: StopReason | None = None
        self.stop_requested = False
        self.stop_now_requested = False
        self.in_flight = 0
        # Rejected without requeue (AckProcessor): dead-lettered if the queue has a DLX, else dropped by
        # the broker. Counted off the hot path, for the warning a run without retries ends with.
        self.rejected = 0
        self._stop_event: anyio.Event | None = None
        self._stop_now_event: anyio.Event | None = None

    def _bind(self) -> None:
        # anyio events need a running event loop, so they are made when the run starts.
        self._stop_event = anyio.Event()
        self._stop_now_event = anyio.Event()
        if self.stop_requested:
            self._stop_event.set()
        if self.stop_now_requested:
            self._stop_now_event.set()

    def is_stopping(self) -> bool:
        """True once any stop was asked for (a call, so type checkers never assume it unchanged)."""
        return self.stop_requested

    def stop(self, code: str, detail: str = "") -> None:
        """Ask for a graceful stop: finish in-flight messages, take no new ones."""
        if self.reason is None:
            self.reason = StopReason(code, detail)
        self.stop_requested = True
        if self._stop_event is not None:
            self._stop_event.set()

    def stop_now(self, code: str, detail: str = "") -> None:
        """Ask for an immediate stop: in-flight messages are cancelled and left for redelivery."""
        if self.reason is None or not self.reason.immediate:
            self.reason = StopReason(
                code, detail or (self.reason.detail if self.reason else ""), immediate=True
            )
        self.stop(code, detail)
        self.stop_now_requested = True
        if self._stop_now_event is not None:
            self._stop_now_event.set()

    async def wait_stop_requested(self) -> None:
        """Return once a stop (graceful or immediate) was asked for."""
        if self._stop_event is None:
            raise RuntimeError("the consumer binds its control before running")
        await self._stop_event.wait()

    async def wait_stop_now_requested(self) -> None:
        """Return once an immediate stop was asked for."""
        if self._stop_now_event is None:
            raise RuntimeError("the consumer binds its control before running")
        await self._stop_now_event.wait()
