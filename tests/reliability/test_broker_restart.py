"""Scenario 2: the RabbitMQ app stops and starts mid-stream under a running `swarrow consume` worker.

The worker must reconnect and finish the queue without a restart of its own (same process, never
exited), and `/readyz` must go 200 → 503 while the broker is away → 200 again. This is aio-pika#231,
faststream#2758 and celery#3201 (consumers lost after a broker restart) and aio-pika#312/#501 (acks
of in-flight messages on the dead channel) proved absent. One of only two broker restarts in the
whole test suite: other tests share the broker, so the outage is kept short.
"""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import pytest

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.anyio]

MESSAGES = 2000
PREFETCH = 100
CONCURRENCY = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0  # not listening (yet)


def _in_order(seen: list[int], wanted: list[int]) -> bool:
    """True if `wanted` is a subsequence of `seen` (other answers may come between)."""
    remaining = iter(seen)
    return all(any(status == want for status in remaining) for want in wanted)


@pytest.mark.timeout(150)
async def test_worker_reconnects_after_a_broker_restart_and_readyz_follows(chaos: Chaos) -> None:
    await chaos.declare_topology((0.1,))
    published = chaos.ids("restart", MESSAGES)
    await chaos.publish(published)
    port = _free_port()
    readyz = f"http://127.0.0.1:{port}/readyz"
    worker = chaos.consume(
        "record",
        *("--prefetch", str(PREFETCH), "--concurrency", str(CONCURRENCY), "--retry-delays", "100ms"),
        *("--metrics-addr", f"127.0.0.1:{port}", "--no-log"),
        env=chaos.worker_env(SWARROW_TEST_SLEEP="0.01"),
    )
    statuses: list[int] = []

    async def readiness() -> bool:
        status = await anyio.to_thread.run_sync(_status, readyz)
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        return status == 200

    await chaos.wait_until(readiness, timeout=30, what="/readyz 200 before the restart")
    await chaos.wait_until(
        lambda: len(chaos.processed()) >= MESSAGES // 5 or worker.returncode is not None,
        timeout=60,
        what="a fifth of the messages processed",
    )
    assert worker.returncode is None, worker.output()[-2000:]

    async def unready() -> bool:
        await readiness()
        return statuses[-1] == 503

    try:
        await anyio.to_thread.run_sync(chaos.rabbitmqctl, "stop_app")
        await chaos.wait_until(unready, timeout=15, what="/readyz 503 while the broker is stopped")
        during_outage = len(chaos.processed())
    finally:
        await anyio.to_thread.run_sync(chaos.rabbitmqctl, "start_app")
    assert statuses[-1] == 503, f"/readyz answered {statuses} (0 = no answer): it must answer 503"

    await chaos.wait_until(readiness, timeout=60, what="/readyz 200 after the broker came back")
    await chaos.wait_until(
        lambda: set(chaos.processed()) >= set(published) or worker.returncode is not None,
        timeout=90,
        what="every message processed after the restart",
    )
    assert worker.returncode is None, f"the worker exited instead of reconnecting:\n{worker.output()[-3000:]}"
    worker.send(signal.SIGTERM)
    assert await worker.wait(30) == 0, worker.output()[-2000:]

    row, _ = await chaos.settle("2. broker restart under a running worker", published, chaos.processed())
    assert during_outage < MESSAGES, "the restart came after the end: not mid-stream"
    assert _in_order(statuses, [200, 503, 200]), f"/readyz went {statuses}: expected 200, 503, 200"
    assert row.processed == MESSAGES and row.dead == 0
    # Work finished while the broker was away could not be acked: redelivered, so at most a
    # prefetch's worth of duplicates (those deliveries were all the worker held).
    assert row.duplicates <= PREFETCH
