"""Importable callables for the CLI tests: `tests.cli_callbacks:ok`, `:slow`, `:boom`, `:record`."""

from __future__ import annotations

import os
import time

import anyio

from swarrow import Message

__all__ = [
    "boom",
    "hang",
    "hang_or_boom",
    "not_callable",
    "ok",
    "record",
    "record_queue",
    "slow",
    "slow_head_record",
    "slow_record",
    "stuck",
]

not_callable = 42


def ok(message: Message) -> None:
    """Accept every message."""


def boom(message: Message) -> None:
    """Fail every message."""
    raise ValueError(f"boom on {message.message_id}")


def _append(message: Message) -> None:
    path = os.environ.get("SWARROW_TEST_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(f"{message.message_id}\n")


def record(message: Message) -> None:
    """Append the message id to the file named by $SWARROW_TEST_RECORD."""
    _append(message)


async def slow(message: Message) -> None:
    """Take $SWARROW_TEST_SLOW seconds (default 1) per message."""
    await anyio.sleep(float(os.environ.get("SWARROW_TEST_SLOW", "1")))


def slow_record(message: Message) -> None:
    """Announce the start (a `.started` file line), take $SWARROW_TEST_SLOW seconds, then record the id."""
    path = os.environ.get("SWARROW_TEST_RECORD")
    if path:
        with open(path + ".started", "a", encoding="utf-8") as file:
            file.write(f"{message.message_id}\n")
    time.sleep(float(os.environ.get("SWARROW_TEST_SLOW", "1")))
    _append(message)


async def slow_head_record(message: Message) -> None:
    """A body starting with `slow` takes 0.3 s (it holds back the coalesced ack); every id is recorded.

    Async: a stop that cancels it cancels it for good (a sync thread would finish and record anyway).
    """
    if message.body.startswith(b"slow"):
        await anyio.sleep(0.3)
    _append(message)


async def record_queue(message: Message) -> None:
    """Take $SWARROW_TEST_SLOW seconds (default 0), then append `queue id` to $SWARROW_TEST_RECORD."""
    await anyio.sleep(float(os.environ.get("SWARROW_TEST_SLOW", "0")))
    with open(os.environ["SWARROW_TEST_RECORD"], "a", encoding="utf-8") as file:  # noqa: ASYNC230 (a test)
        file.write(f"{message.queue} {message.message_id}\n")


async def hang(message: Message) -> None:
    """Never returns on its own: only a time limit frees the slot."""
    await anyio.sleep_forever()


def stuck(message: Message) -> None:
    """A sync callback stuck far past any time limit: its thread outlives the stop."""
    time.sleep(300)


def hang_or_boom(message: Message) -> None:
    """`boom` raises after 1.5 s; anything else is stuck like `stuck`."""
    if message.body == b"boom":
        time.sleep(1.5)
        raise ValueError("boom")
    time.sleep(300)


def warn_and_exit(message: Message) -> None:
    """Log a WARNING naming the message, then end the process at once with os._exit(3) (no shutdown)."""
    import logging

    logging.getLogger("tests.cli_callbacks").warning("fatal condition on %s, exiting", message.message_id)
    os._exit(3)
