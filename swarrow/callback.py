"""Adapts a user function, async or sync, into the innermost processor."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeAlias

import anyio
import anyio.to_thread

from swarrow.control import ConsumerControl, current_control
from swarrow.errors import StopConsumer, UndecodableMessage
from swarrow.message import Message
from swarrow.replies import record_result
from swarrow.topology import UNDECODABLE_HEADER

__all__ = [
    "AsyncCallback",
    "Callback",
    "CallbackProcessor",
    "SyncCallback",
    "check_callback",
    "hung_callback_threads",
    "take_overrunning_call",
]

logger = logging.getLogger(__name__)

AsyncCallback: TypeAlias = Callable[[Message], Awaitable[bool | None]]
SyncCallback: TypeAlias = Callable[[Message], bool | None]
Callback: TypeAlias = AsyncCallback | SyncCallback


class _OverrunningCall:
    """One sync callback call in a worker thread, which a cancellation cannot stop: wait for it to return."""

    __slots__ = ("callback", "done", "lock", "loop", "started", "waiter")

    def __init__(self, callback: SyncCallback) -> None:
        self.callback = callback
        self.started = False
        self.done = False
        self.waiter: anyio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock = threading.Lock()

    def run(self, message: Message) -> bool | None:
        """Run in the worker thread; wake the event loop's waiter, if any, once the callback returns."""
        with self.lock:
            if self.done:  # cancelled before the thread picked it up: never run
                return None
            self.started = True
        try:
            return self.callback(message)
        finally:
            # `done` first, `waiter` second, and the reverse in `wait()`: under the GIL one of
            # the two sides always sees the other, so no wake-up is lost.
            self.done = True
            _running_late.discard(self)
            waiter, loop = self.waiter, self.loop
            if waiter is not None and loop is not None:
                # Fire and forget: waiting for the loop to run it (anyio.from_thread.run_sync) hung this
                # thread for ever when the loop had stopped without closing, and the process with it at exit.
                try:
                    loop.call_soon_threadsafe(waiter.set)
                except RuntimeError:  # the event loop is closed: nobody waits any more
                    logger.debug("could not wake the waiter of a late sync callback", exc_info=True)

    def cancelled(self) -> bool:
        """Called once its message is cancelled: True if the thread is still running the callback."""
        with self.lock:
            if not self.started:
                self.done = True  # the thread will not start it now
                return False
        return not self.done

    async def wait(self) -> None:
        """Return once the thread returned (cancellable: the thread is then left running)."""
        self.loop = asyncio.get_running_loop()
        event = self.waiter = anyio.Event()
        if not self.done:
            await event.wait()


# Calls whose message was cancelled while their thread still runs (a time limit, a stop).
_running_late: set[_OverrunningCall] = set()
# The call the current worker task's time limit just cut short, for TimeLimitProcessor to wait on.
_overrunning: ContextVar[_OverrunningCall | None] = ContextVar("swarrow_overrunning_call", default=None)


def hung_callback_threads() -> int:
    """Sync callback threads still running although their message was cancelled (time limit, stop)."""
    return len(_running_late)


def take_overrunning_call() -> _OverrunningCall | None:
    """The call this task's last cancelled sync callback left running (and forget it), or None."""
    call = _overrunning.get()
    if call is not None:
        _overrunning.set(None)
    return call


def _is_async(callback: Callable[..., Any]) -> bool:
    target: Any = callback
    while isinstance(target, functools.partial):
        target = target.func
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - an instance with `async def __call__`
    )


def check_callback(callback: object) -> None:
    """Raise TypeError, naming the callable and its signature, unless it can be called with one message.

    Checked once at start: a `def handle(a, b)` would otherwise fail every message, each one retried
    and dead-lettered. Callables whose signature Python cannot read (some builtins) pass.
    """
    if not callable(callback):
        raise TypeError(f"callback must be callable, got {callback!r}")
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None)
    except TypeError as exc:
        name = getattr(callback, "__qualname__", None) or type(callback).__qualname__
        bare = signature.replace(  # names only: string annotations would read `a: 'Any'`
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=signature.empty,
        )
        raise TypeError(
            f"{name}{bare} cannot be called with one message ({exc}): "
            "it must accept one positional argument, the swarrow.Message"
        ) from None


class CallbackProcessor:
    """Call the user's function: awaited if async, in a worker thread if sync.

    Returning `False` stops the consumer after this message; `None` or anything else keeps going.
    `StopConsumer` raised by the function finishes the message normally, then stops.
    Sync functions run on a thread limiter sized to the consumer's concurrency. A cancelled sync call
    (Python cannot kill a thread) is left running and handed to `TimeLimitProcessor`, which keeps the
    message's slot until the thread returns; so threads never outnumber the concurrency.
    """

    def __init__(self, callback: Callback, /) -> None:
        check_callback(callback)
        self.callback = callback
        self.is_async = _is_async(callback)
        self._limiter: anyio.CapacityLimiter | None = None

    @asynccontextmanager
    async def lifespan(self, control: ConsumerControl) -> AsyncIterator[None]:
        """Size the thread limiter to the consumer's concurrency."""
        if not self.is_async:
            self._limiter = anyio.CapacityLimiter(max(1, control.concurrency))
        yield

    async def __call__(self, message: Message, /) -> bool:
        headers = message.headers
        if headers and UNDECODABLE_HEADER in headers:  # its properties did not decode: never the callback's
            raise UndecodableMessage(f"its properties do not decode: {headers[UNDECODABLE_HEADER]}")
        try:
            if self.is_async:
                result = await self.callback(message)  # type: ignore[misc]
            else:
                # Abandoned on cancellation, so the stop path never waits for a thread that may not
                # return; a time limit then waits for it outside its cancelled scope (see _OverrunningCall).
                call = _OverrunningCall(self.callback)  # type: ignore[arg-type]
                try:
                    result = await anyio.to_thread.run_sync(
                        call.run, message, limiter=self._limiter, abandon_on_cancel=True
                    )
                except BaseException:
                    if call.cancelled():
                        _running_late.add(call)
                        if call.done:  # returned meanwhile (it discards itself after setting done)
                            _running_late.discard(call)
                        _overrunning.set(call)
                    raise
                if inspect.isawaitable(result):
                    result = await result
            if message.reply_to is not None:
                record_result(result)
        except StopConsumer as stop:
            if (control := current_control()) is not None:
                control.stop("callback", str(stop) or "the callback raised StopConsumer")
            return False
        if result is False:
            if (control := current_control()) is not None:
                control.stop("callback", "the callback returned False")
            return False
        return True
