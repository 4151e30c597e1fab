"""processors.callback re-exports the core CallbackProcessor: one class, two import paths."""

from __future__ import annotations

import threading

import pytest

import processors.callback
import swarrow
from processors.callback import CallbackProcessor
from swarrow import Message

pytestmark = pytest.mark.anyio


def test_is_the_core_class() -> None:
    assert CallbackProcessor is swarrow.CallbackProcessor
    assert processors.callback.__all__ == ["CallbackProcessor"]


async def test_runs_async_callbacks_in_the_loop_and_sync_ones_in_a_thread() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    async def async_cb(message: Message) -> None:
        threads.append(threading.get_ident())

    def sync_cb(message: Message) -> bool:
        threads.append(threading.get_ident())
        return False

    assert await CallbackProcessor(async_cb)(Message()) is True
    assert await CallbackProcessor(sync_cb)(Message()) is False
    assert threads[0] == loop_thread
    assert threads[1] != loop_thread
