"""The processor contract: one async call per message, `False` means "stop after this one"."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from swarrow.control import ConsumerControl
from swarrow.message import Message

__all__ = ["HasLifespan", "Processor"]


@runtime_checkable
class Processor(Protocol):
    """Handles one message; returns whether the consumer should keep going."""

    async def __call__(self, message: Message, /) -> bool: ...


@runtime_checkable
class HasLifespan(Protocol):
    """A processor with work to do before the first message and after the last (swarrot's
    initialize/terminate), or in the background while idle (deadlines, signal watching)."""

    def lifespan(self, control: ConsumerControl, /) -> AbstractAsyncContextManager[None]: ...
