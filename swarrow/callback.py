"""Adapts a user function, async or sync, into the innermost processor."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import anyio
import anyio.to_thread

from swarrow.control import ConsumerControl, current_control
from swarrow.errors import StopConsumer
from swarrow.message import Message
from swarrow.replies import record_result

__all__ = ["AsyncCallback", "Callback", "CallbackProcessor", "SyncCallback", "check_callback"]

AsyncCallback: TypeAlias = Callable[[Message], Awaitable[bool | None]]
SyncCallback: TypeAlias = Callable[[Message], bool | None]
Callback: TypeAlias = AsyncCallback | SyncCallback


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
    Sync functions run on a thread limiter sized to the consumer's concurrency, so threads never
    outnumber in-flight messages.
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
        try:
            if self.is_async:
                result = await self.callback(message)  # type: ignore[misc]
            else:
                # Abandoned on cancellation (time limit, immediate stop, grace period over): Python
                # cannot kill a thread, but the worker slot and the stop path must not wait for it.
                result = await anyio.to_thread.run_sync(
                    self.callback, message, limiter=self._limiter, abandon_on_cancel=True
                )
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
