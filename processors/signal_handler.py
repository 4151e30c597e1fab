"""Turn SIGTERM/SIGINT/SIGQUIT into a graceful stop, and a second signal into an immediate one."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import ExitStack, asynccontextmanager

import anyio
from anyio.abc import TaskStatus

from swarrow.control import ConsumerControl
from swarrow.message import Message
from swarrow.processor import Processor
from swarrow.stop_signals import StopSignals, watch_closing

__all__ = ["DEFAULT_SIGNALS", "SignalHandlerProcessor"]

logger = logging.getLogger(__name__)

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGQUIT") if hasattr(signal, name)
)


class SignalHandlerProcessor:
    """First signal: stop taking messages, let in-flight ones finish and be acked, exit.
    Second signal: stop now; in-flight messages are cancelled, left unacked and redelivered.

    Signals can only be watched from the main thread (a consumer run elsewhere logs a warning and
    leaves signals alone). `__call__` only passes through, so the layer costs nothing per message.
    """

    def __init__(self, inner: Processor, /, *, signals: Iterable[int] = DEFAULT_SIGNALS) -> None:
        resolved: list[signal.Signals] = []
        for signum in signals:
            try:
                resolved.append(signal.Signals(signum))
            except (ValueError, TypeError):
                raise ValueError(f"signals must be signal numbers, got {signum!r}") from None
        self.inner = inner
        self.signals = tuple(resolved)
        self.stops = StopSignals()
        self.received = 0  # a copy of `stops.received`, read per message

    @asynccontextmanager
    async def lifespan(self, control: ConsumerControl) -> AsyncIterator[None]:
        """Watch the signals for the whole run, from before the first message to after the last."""
        if not self.signals:
            yield
            return
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "not in the main thread: signals are not handled for %s",
                control.queue_name,
                extra={"queue": control.queue_name},
            )
            yield
            return
        async with anyio.create_task_group() as tg:
            # start(), not start_soon(): the handlers are installed before the first message.
            await tg.start(self._watch, control)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _watch(self, control: ConsumerControl, *, task_status: TaskStatus[None]) -> None:
        with ExitStack() as stack:
            try:
                received = stack.enter_context(anyio.open_signal_receiver(*self.signals))
                stack.callback(watch_closing, self.signals)  # runs first as the stack closes
            except NotImplementedError:  # e.g. the asyncio backend on Windows
                logger.warning("signal handling is not supported on this platform or event loop")
                task_status.started()
                return
            task_status.started()
            extra = {"queue": control.queue_name}
            async for signum in received:
                name, now = self.stops.receive(signum)
                self.received = self.stops.received
                if not now:
                    logger.warning(
                        "%s received: finishing %d in-flight message(s), then stopping "
                        "(send it again to stop now)",
                        name,
                        control.in_flight,
                        extra=extra,
                    )
                    control.stop("signal", f"{name} received")
                else:
                    logger.warning(
                        "%s received again: stopping now; %d in-flight message(s) will be redelivered",
                        name,
                        control.in_flight,
                        extra=extra,
                    )
                    control.stop_now("signal", f"{name} received twice")

    async def __call__(self, message: Message, /) -> bool:
        keep_going = await self.inner(message)
        return keep_going and not self.received
