"""The broker goes silent while the provider starts: a stop still wins, and every start call is bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest

from swarrow.amqp import AmqpBroker
from swarrow.amqp.scan import AmqpQueueScan
from swarrow.errors import BrokerUnavailableError
from tests.tcp_proxy import BASIC_CONSUME, BASIC_QOS, CONNECTION_OPEN, QUEUE_DECLARE, freezing_proxy

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]


def _proxied(url: str, port: int) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0]
    return f"{parts.scheme}://{credentials}@127.0.0.1:{port}{parts.path or '/'}"


async def test_sigterm_during_start_stops_within_the_grace_period(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # Before the fix: SIGTERM did nothing while basic.qos waited on a silent broker (killed after 20 s).
    await amqp_broker.declare_queue(queue_name)
    target = urlsplit(amqp_url).port or 5672
    async with freezing_proxy(target, BASIC_QOS) as proxy:
        command = [sys.executable, "-m", "swarrow", "consume", "tests.cli_callbacks:ok", "-q", queue_name,
                   "--url", _proxied(amqp_url, proxy.port), "--no-retry", "--grace-period", "1s"]  # fmt: skip
        process = await anyio.open_process(command, cwd=ROOT, env=dict(os.environ), stdin=subprocess.DEVNULL)
        try:
            with anyio.fail_after(20):
                await proxy.frozen.wait()  # the queue checks passed; the broker now says nothing more
            await anyio.sleep(0.3)  # let the worker block in start(): the state this test is about
            process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            with anyio.fail_after(20):
                code = await process.wait()
            took = time.monotonic() - sent
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            stderr = (await process.stderr.receive()).decode() if process.stderr else ""
            await process.aclose()
    assert code == 0, stderr
    assert took < 1 + 2, took  # the grace period, plus the time to close


@pytest.mark.parametrize("method", [BASIC_QOS, BASIC_CONSUME], ids=["qos", "consume"])
async def test_every_start_call_gives_up_after_the_connect_timeout(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str, method: tuple[int, int]
) -> None:
    # Before the fix: start() waited for the silent broker with no timeout at all.
    await amqp_broker.declare_queue(queue_name)
    target = urlsplit(amqp_url).port or 5672
    async with freezing_proxy(target, method) as proxy:
        broker = AmqpBroker(_proxied(amqp_url, proxy.port), connect_timeout=1)
        provider = broker.provider(queue_name, prefetch=10)
        started = time.monotonic()
        try:
            with anyio.fail_after(8), pytest.raises(BrokerUnavailableError, match="did not answer"):
                await provider.start()
            assert time.monotonic() - started < 4
        finally:
            with anyio.move_on_after(5, shield=True):
                await provider.close()
                await broker.close()


async def test_a_cancelled_connect_leaves_no_connection_retrying_behind(amqp_url: str) -> None:
    # Before the fix: aio-pika's robust connection kept trying in a task of its own after the
    # cancelled connect (a stop, Ctrl-C): 5 more connections in 1 s here, forever, and `close()`
    # could not reach it. After: the one connection the cancelled attempt opened.
    target = urlsplit(amqp_url).port or 5672
    async with freezing_proxy(target, CONNECTION_OPEN) as proxy:
        broker = AmqpBroker(_proxied(amqp_url, proxy.port), reconnect_interval=0.2)
        with anyio.move_on_after(0.5) as scope:
            await broker.connect()
        assert scope.cancelled_caught
        await broker.close()
        await anyio.sleep(1.0)  # a deliberate wait: five reconnect intervals in which nothing may happen
        assert proxy.connections == 1


async def test_ctrl_c_while_connecting_to_a_silent_broker_exits_at_once(amqp_url: str) -> None:
    # Before the fix: SIGINT while connection.open waited on a silent broker left the robust
    # connection's retry task behind, and the CLI hung (still running 20 s later). After: ~0.2 s.
    target = urlsplit(amqp_url).port or 5672
    async with freezing_proxy(target, CONNECTION_OPEN) as proxy:
        command = [sys.executable, "-m", "swarrow", "consume", "tests.cli_callbacks:ok", "-q", "nowhere",
                   "--url", _proxied(amqp_url, proxy.port), "--no-retry"]  # fmt: skip
        process = await anyio.open_process(command, cwd=ROOT, env=dict(os.environ), stdin=subprocess.DEVNULL)
        try:
            with anyio.fail_after(20):
                await proxy.frozen.wait()
            await anyio.sleep(0.3)  # the CLI now waits in connect(): the state this test is about
            process.send_signal(signal.SIGINT)
            sent = time.monotonic()
            with anyio.fail_after(10):
                code = await process.wait()
            took = time.monotonic() - sent
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()
    assert code != 0  # interrupted, not a success
    assert took < 3, took


@pytest.mark.parametrize("call", ["inspect_queue", "declare_queue", "message_ttl"])
async def test_the_queue_checks_give_up_after_the_connect_timeout(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str, call: str
) -> None:
    # Before the fix: the CLI's queue checks (a passive queue.declare, --declare, the retry queues' TTLs)
    # waited on a silent broker with no timeout: 'swarrow consume' was still there 45 s later, no
    # signal sent. After: BrokerUnavailableError after connect_timeout (CLI: exit 4 after 13 s).
    await amqp_broker.declare_queue(queue_name)
    target = urlsplit(amqp_url).port or 5672
    async with freezing_proxy(target, QUEUE_DECLARE) as proxy:
        broker = AmqpBroker(_proxied(amqp_url, proxy.port), connect_timeout=1)
        started = time.monotonic()
        try:
            with anyio.fail_after(8), pytest.raises(BrokerUnavailableError, match="did not answer within 1s"):
                await getattr(broker, call)(queue_name)
            assert time.monotonic() - started < 4
        finally:
            with anyio.move_on_after(5, shield=True):
                await broker.close()


@pytest.mark.parametrize("method", [QUEUE_DECLARE, BASIC_CONSUME], ids=["check", "consume"])
async def test_a_dead_letter_scan_gives_up_on_a_silent_broker(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str, method: tuple[int, int]
) -> None:
    # Before the fix: 'swarrow dead list' was still waiting 40 s later for a broker gone silent at
    # basic.consume (its queue check and channel setup had no timeout). After: BrokerUnavailableError.
    await amqp_broker.declare_queue(queue_name)
    target = urlsplit(amqp_url).port or 5672
    async with freezing_proxy(target, method) as proxy:
        scan = AmqpQueueScan(_proxied(amqp_url, proxy.port), queue_name, connect_timeout=1)
        started = time.monotonic()
        with anyio.fail_after(15), pytest.raises(BrokerUnavailableError, match="did not answer within 1s"):
            async with scan:
                pass
        assert time.monotonic() - started < 8
