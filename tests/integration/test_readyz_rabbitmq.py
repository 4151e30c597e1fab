"""/readyz against RabbitMQ: 503 while the broker app is stopped, 200 once back; /healthz stays 200."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request

import anyio
import pytest
from prometheus_client import CollectorRegistry

from processors.ack import AckProcessor
from processors.metrics import MetricsProcessor
from swarrow import CallbackProcessor, Consumer, Message, Stack
from swarrow.amqp import AmqpBroker

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

# The node behind SWARROW_TEST_URL: restarting another one fails the test and disturbs its users.
RABBITMQCTL = ["rabbitmqctl", "-n", os.environ.get("SWARROW_TEST_NODE", "rabbit@localhost")]


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except urllib.error.URLError:
        return 0  # not listening (yet, or any more)


async def status(url: str) -> int:
    return await anyio.to_thread.run_sync(get_status, url)


async def rabbitmqctl(command: str) -> None:
    await anyio.run_process([*RABBITMQCTL, command], check=True)


async def test_readyz_is_503_while_the_broker_is_down_and_200_after(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed here")
    await amqp_broker.declare_queue(queue_name)
    provider = amqp_broker.provider(queue_name, prefetch=10)
    registry = CollectorRegistry()
    handled: list[bytes] = []

    async def handle(message: Message) -> None:
        handled.append(message.body)

    metrics = MetricsProcessor(
        AckProcessor(CallbackProcessor(handle), provider=provider),
        registry=registry,
        provider=provider,
        address=("127.0.0.1", 0),
        heartbeat_interval=0.2,
    )
    consumer = Consumer(provider, Stack(lambda inner: metrics, callback=handle))
    server = metrics.server
    assert server is not None
    healthz: list[int] = []

    def url(path: str) -> str:
        return f"http://127.0.0.1:{server.port}{path}"  # the port is known once the lifespan started it

    async def wait_readyz(expected: int, within: float) -> None:
        with anyio.fail_after(within):
            while True:
                healthz.append(await status(url("/healthz")))
                if await status(url("/readyz")) == expected:
                    return
                await anyio.sleep(0.1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        await wait_readyz(200, 10)
        healthz.clear()  # from here on the endpoint listens: every /healthz must say 200
        await rabbitmqctl("stop_app")
        try:
            await wait_readyz(503, 10)
            with anyio.fail_after(3):
                while registry.get_sample_value("swarrow_consumer_up", {"queue": queue_name}) != 0.0:
                    await anyio.sleep(0.05)
        finally:
            with anyio.CancelScope(shield=True):
                await rabbitmqctl("start_app")
        await wait_readyz(200, 30)
        # consuming really resumed: a message published now is handled and acked
        publisher = amqp_broker.publisher()
        with anyio.fail_after(15):
            while True:  # the fixture's own connection may still be reconnecting
                try:
                    await publisher.publish(Message(b"after"), queue_name)
                    break
                except Exception:
                    await anyio.sleep(0.2)
            while (
                registry.get_sample_value(
                    "swarrow_messages_processed_total", {"queue": queue_name, "outcome": "acked"}
                )
                != 1.0
            ):
                await anyio.sleep(0.05)
        with anyio.fail_after(5):
            while registry.get_sample_value("swarrow_consumer_up", {"queue": queue_name}) != 1.0:
                await anyio.sleep(0.05)
        consumer.control.stop("signal", "test over")
    assert handled == [b"after"]
    assert healthz and set(healthz) == {200}, healthz
