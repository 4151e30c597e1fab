"""Callbacks for the chaos suite, importable by `swarrow consume` workers and by in-process tests.

Each one logs the message id it finished to the file named by `$SWARROW_TEST_PROCESSED_LOG` (and the
ids it started to `$SWARROW_TEST_STARTED_LOG`), one line per id, with a single `os.write` on an
`O_APPEND` descriptor: a `kill -9` leaves whole lines, never half of one. The log is the side effect
the accounting counts, so an id is logged only once the callback has done its work (the ack comes
after it): a crash between the two is a duplicate at-least-once allows, never a loss.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from swarrow import Message, PermanentError

__all__ = [
    "LEAK_MB_ENV",
    "PROCESSED_LOG_ENV",
    "SLEEP_ENV",
    "STARTED_LOG_ENV",
    "AsyncCallback",
    "Recorder",
    "hang",
    "hanging",
    "json_consumer",
    "json_record",
    "leak",
    "leaking",
    "parse_json",
    "poison",
    "poisoned",
    "read_log",
    "record",
]

PROCESSED_LOG_ENV = "SWARROW_TEST_PROCESSED_LOG"
STARTED_LOG_ENV = "SWARROW_TEST_STARTED_LOG"
SLEEP_ENV = "SWARROW_TEST_SLEEP"
LEAK_MB_ENV = "SWARROW_TEST_LEAK_MB"

_MIB = 1024 * 1024


def _open(path: str | None) -> int | None:
    if not path:
        return None
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def read_log(path: str | os.PathLike[str]) -> list[str]:
    """The ids in a log written by a `Recorder`, in order, duplicates kept (missing file: none)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line for line in f.read().split("\n") if line]
    except FileNotFoundError:
        return []


class Recorder:
    """An async callback that logs each message id it started and finished, in memory and to files.

    `sleep` seconds of (async) work per message; `fail_rate` makes that share of calls raise
    `RuntimeError` (seeded, so a run is repeatable) before anything is logged as processed.
    """

    def __init__(
        self,
        processed_path: str | os.PathLike[str] | None = None,
        started_path: str | os.PathLike[str] | None = None,
        *,
        sleep: float = 0.0,
        fail_rate: float = 0.0,
        seed: int = 1,
    ) -> None:
        self.processed: list[str] = []
        self.done: set[str] = set()
        self.started: list[str] = []
        self.failures = 0
        self.sleep = sleep
        self.fail_rate = fail_rate
        self._random = random.Random(seed).random
        self._processed_fd = _open(os.fspath(processed_path) if processed_path else None)
        self._started_fd = _open(os.fspath(started_path) if started_path else None)

    @classmethod
    def from_env(cls) -> Recorder:
        """A recorder writing to the files the test named in the worker's environment."""
        return cls(
            os.environ.get(PROCESSED_LOG_ENV),
            os.environ.get(STARTED_LOG_ENV),
            sleep=float(os.environ.get(SLEEP_ENV, "0")),
        )

    def mark_started(self, message_id: str) -> None:
        """Log that the work on `message_id` began."""
        self.started.append(message_id)
        if self._started_fd is not None:
            os.write(self._started_fd, (message_id + "\n").encode())

    def mark_processed(self, message_id: str) -> None:
        """Log that the work on `message_id` is done (the side effect the accounting counts)."""
        self.processed.append(message_id)
        self.done.add(message_id)
        if self._processed_fd is not None:
            os.write(self._processed_fd, (message_id + "\n").encode())

    async def __call__(self, message: Message) -> None:
        message_id = message.message_id or ""
        self.mark_started(message_id)
        if self.sleep:
            await anyio.sleep(self.sleep)
        if self.fail_rate and self._random() < self.fail_rate:
            self.failures += 1
            raise RuntimeError(f"injected failure for {message_id}")
        self.mark_processed(message_id)

    def close(self) -> None:
        """Close the log files."""
        for fd in (self._processed_fd, self._started_fd):
            if fd is not None:
                os.close(fd)
        self._processed_fd = self._started_fd = None


AsyncCallback = Callable[[Message], Awaitable[None]]


def leaking(recorder: Recorder, megabytes: float = 4.0) -> AsyncCallback:
    """A leaking callback: keeps `megabytes` MiB alive per message (pages touched, so RSS grows)."""
    leaked: list[bytearray] = []

    async def leak(message: Message) -> None:
        block = bytearray(int(megabytes * _MIB))
        for offset in range(0, len(block), 4096):
            block[offset] = 1
        leaked.append(block)
        await recorder(message)

    return leak


def hanging(recorder: Recorder) -> AsyncCallback:
    """Messages whose id starts with "hang" never finish (until cancelled); the others are recorded."""

    async def hang(message: Message) -> None:
        if (message.message_id or "").startswith("hang"):
            recorder.mark_started(message.message_id or "")
            await anyio.sleep_forever()
        await recorder(message)

    return hang


def poisoned(recorder: Recorder) -> AsyncCallback:
    """Messages whose id starts with "poison" crash the callback on every delivery."""

    async def poison(message: Message) -> None:
        message_id = message.message_id or ""
        recorder.mark_started(message_id)
        if message_id.startswith("poison"):
            raise RuntimeError(f"poison message {message_id}")
        recorder.mark_processed(message_id)

    return poison


def parse_json(message: Message) -> Any:
    """The body as JSON; `PermanentError` (dead-letter now, no retry can fix it) when it is not."""
    try:
        return json.loads(message.body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PermanentError(f"body is not UTF-8: {exc}") from None
    except ValueError as exc:
        raise PermanentError(f"body is not JSON: {exc}") from None


def json_consumer(recorder: Recorder) -> AsyncCallback:
    """A JSON consumer: bad bodies are permanent failures; `{"fail": true}` fails (and is retried)."""

    async def consume_json(message: Message) -> None:
        message_id = message.message_id or ""
        recorder.mark_started(message_id)
        payload = parse_json(message)
        if isinstance(payload, dict) and payload.get("fail"):
            raise RuntimeError(f"payload of {message_id} asks to fail")
        recorder.mark_processed(message_id)

    return consume_json


# Module-level callables for `swarrow consume tests.reliability.callbacks:<name>`, configured by env.
record = Recorder.from_env()
leak = leaking(record, float(os.environ.get(LEAK_MB_ENV, "4")))
hang = hanging(record)
poison = poisoned(record)
json_record = json_consumer(record)
