"""Callbacks for the cluster suite's `swarrow consume` workers.

`fail_once` fails the first delivery of every tenth message (ids ending in 0) so it goes through
the retry topology, and logs each id it finished to `$SWARROW_TEST_PROCESSED_LOG` with one
`os.write` on an `O_APPEND` descriptor (a killed worker leaves whole lines). `$SWARROW_TEST_SLEEP`
seconds of async work per message keep a run long enough for the faults to land mid-stream.
"""

from __future__ import annotations

import os

import anyio

from swarrow import Message

__all__ = ["fail_once"]

_LOG = os.environ.get("SWARROW_TEST_PROCESSED_LOG")
_FD = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if _LOG else None
_SLEEP = float(os.environ.get("SWARROW_TEST_SLEEP", "0"))


async def fail_once(message: Message) -> None:
    """Process a message; ids ending in 0 fail on their first delivery (10% go through retry)."""
    message_id = message.message_id or ""
    if _SLEEP:
        await anyio.sleep(_SLEEP)
    if message_id.endswith("0") and "x-swarrow-attempt" not in message.headers:
        raise RuntimeError(f"first attempt of {message_id} fails on purpose")
    if _FD is not None:
        os.write(_FD, (message_id + "\n").encode())
