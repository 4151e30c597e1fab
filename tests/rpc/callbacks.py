"""Worker callbacks for the `swarrow call` tests (imported by `swarrow consume` subprocesses)."""

from __future__ import annotations

import time

from swarrow import Message, PermanentError


def echo(message: Message) -> bytes:
    """Answer with the request's bytes, upper-cased."""
    return message.body.upper()


def refuse(message: Message) -> None:
    """Give every request up."""
    raise PermanentError("refused: " + message.body.decode(errors="replace"))


def slow(message: Message) -> str:
    """Answer after two seconds."""
    time.sleep(2)
    return "late"
