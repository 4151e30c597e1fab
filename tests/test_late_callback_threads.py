"""A sync callback's late thread must end once the callback returns, whatever its event loop does.

Seen in CI with anyio 4.4 (the lowest bound): the worker thread waited for a stopped event loop to run its
wake-up, for ever, and the interpreter hung at exit waiting for that thread.
"""

from __future__ import annotations

import asyncio
import threading

import anyio
import anyio.to_thread

from swarrow.callback import _OverrunningCall
from swarrow.message import Message


def _start_and_abandon(
    call: _OverrunningCall, loop: asyncio.AbstractEventLoop, run_returned: threading.Event | None = None
) -> None:
    """Run `call` in an anyio worker thread as the callback processor does, cancel it, wait a bit."""

    def run(message: Message) -> None:
        call.run(message)
        if run_returned is not None:
            run_returned.set()

    async def main() -> None:
        with anyio.move_on_after(0.05):
            await anyio.to_thread.run_sync(run, Message(body=b"x"), abandon_on_cancel=True)
        assert call.cancelled(), "the callback should still be running in its thread"
        with anyio.move_on_after(0.05):
            await call.wait()  # registers the waiter the thread will wake

    loop.run_until_complete(main())


def _worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("AnyIO worker")}


def test_a_late_thread_returns_when_its_loop_stopped_without_closing() -> None:
    release = threading.Event()
    returned = threading.Event()

    def callback(message: Message) -> None:
        release.wait(10)
        returned.set()

    call = _OverrunningCall(callback)
    run_returned = threading.Event()
    loop = asyncio.new_event_loop()
    try:
        _start_and_abandon(call, loop, run_returned)  # the loop is now stopped, not closed
        release.set()
        assert returned.wait(5)
        # call.run() must come back to the worker thread: it used to block waking the stopped loop.
        assert run_returned.wait(5), "the worker thread is stuck waking a stopped event loop"
        assert call.done
        outcome = loop.run_until_complete(asyncio.wait_for(call.wait(), 5))  # woken once the loop runs again
        assert outcome is None
    finally:
        release.set()
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def test_a_late_thread_returns_when_its_loop_is_closed() -> None:
    release = threading.Event()
    finished = threading.Event()

    def callback(message: Message) -> None:
        release.wait(10)

    call = _OverrunningCall(callback)
    before = _worker_threads()
    loop = asyncio.new_event_loop()
    _start_and_abandon(call, loop)
    loop.close()
    release.set()
    late = _worker_threads() - before

    def join_all() -> None:
        for thread in late:
            thread.join(5)
        finished.set()

    threading.Thread(target=join_all, daemon=True).start()
    assert finished.wait(10)
    assert call.done
    assert not any(thread.is_alive() for thread in late), "an anyio worker thread outlived its closed loop"


def test_the_waiter_is_woken_when_the_callback_returns_while_the_loop_runs() -> None:
    release = threading.Event()
    call = _OverrunningCall(lambda message: release.wait(10) and None)

    async def main() -> None:
        with anyio.move_on_after(0.05):
            await anyio.to_thread.run_sync(call.run, Message(body=b"x"), abandon_on_cancel=True)
        assert call.cancelled()
        asyncio.get_running_loop().call_later(0.05, release.set)
        await asyncio.wait_for(call.wait(), 5)

    asyncio.run(main())
    assert call.done
