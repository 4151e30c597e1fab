"""RPC against RabbitMQ faults: a caller that vanishes, a dropped connection, a worker restarted mid-call."""

from __future__ import annotations

import os
import subprocess
import time

import anyio
import pytest

from processors.ack import AckProcessor
from processors.reply import ReplyProcessor
from swarrow import Consumer, Layer, Message, Stack
from swarrow.amqp import AmqpBroker
from swarrow.errors import PublishError, RpcConnectionLost, RpcTimeout
from swarrow.rpc import RpcClient

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

NODE = os.environ.get("SWARROW_TEST_NODE", "rabbit@localhost")


def _close_connections(name: str) -> int:
    command = ["rabbitmqctl", "-n", NODE, "list_connections", "pid", "client_properties", "-q"]
    listing = subprocess.run(
        [*command, "--no-table-headers"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if name in line]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-n", NODE, "close_connection", pid, "rpc test: simulated drop"],
                       capture_output=True, timeout=60, check=True)  # fmt: skip
    return len(pids)


def _worker(broker: AmqpBroker, queue: str, callback: object, *, grace: float = 2) -> Consumer:
    publisher = broker.publisher()
    provider = broker.provider(queue, prefetch=10)
    stack = Stack(
        Layer(ReplyProcessor, publisher=publisher, provider=provider),
        Layer(AckProcessor, provider=provider),
        callback=callback,  # type: ignore[arg-type]
    )
    return Consumer(provider, stack, concurrency=4, grace_period=grace)


async def test_a_caller_that_vanishes_costs_the_worker_nothing(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    await amqp_broker.declare_queue(queue_name)
    release = anyio.Event()
    runs: list[bytes] = []

    async def work(message: Message) -> str:
        runs.append(message.body)
        if message.body == b"held":
            await release.wait()
        return "ok"

    consumer = _worker(amqp_broker, queue_name, work)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        caller = AmqpBroker(amqp_broker.broker_url, reconnect_interval=0.5)
        async with RpcClient(caller) as client:
            with pytest.raises(RpcTimeout):
                await client.call(queue_name, b"held", timeout=0.5)
        await caller.close()
        release.set()  # the worker now answers a caller whose reply-to died with its channel
        async with RpcClient(amqp_broker) as client:
            assert (await client.call(queue_name, b"next", timeout=10)).text() == "ok"
        consumer.control.stop("test", "done")
    assert runs.count(b"held") == 1
    info = await amqp_broker.inspect_queue(queue_name)
    assert info is not None and info.message_count == 0


async def test_a_dropped_connection_fails_calls_in_flight_and_later_calls_work(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    await amqp_broker.declare_queue(queue_name)
    release = anyio.Event()

    async def work(message: Message) -> str:
        if message.body == b"held":
            await release.wait()
        return message.body.decode()

    consumer = _worker(amqp_broker, queue_name, work)
    name = f"rpc-caller-{queue_name}"
    caller = AmqpBroker(amqp_broker.broker_url, reconnect_interval=0.3, connection_name=name)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        async with RpcClient(caller) as client:
            failed: list[BaseException] = []

            async def held_call() -> None:
                try:
                    await client.call(queue_name, b"held", timeout=30)
                except (RpcConnectionLost, RpcTimeout) as exc:
                    failed.append(exc)

            async with anyio.create_task_group() as calls:
                calls.start_soon(held_call)
                await anyio.sleep(0.3)  # let the request reach the worker
                started = time.monotonic()
                assert _close_connections(name) == 1
            assert failed and isinstance(failed[0], RpcConnectionLost)
            assert time.monotonic() - started < 10, "the call waited for its timeout instead of failing"
            release.set()
            with anyio.fail_after(30):
                while True:  # the robust connection comes back; then calls work again
                    try:
                        reply = await client.call(queue_name, b"after", timeout=2)
                        break
                    except (RpcConnectionLost, RpcTimeout):
                        await anyio.sleep(0.2)
            assert reply.text() == "after"
        consumer.control.stop("test", "done")
    await caller.close()


async def test_a_worker_restarted_mid_call_answers_or_times_out_never_hangs(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    await amqp_broker.declare_queue(queue_name)
    first_run = anyio.Event()
    runs: list[int] = []

    async def work(message: Message) -> str:
        runs.append(1)
        if len(runs) == 1:
            first_run.set()
            await anyio.sleep(60)  # cancelled when the first worker stops: redelivered
        return "answered"

    first = _worker(amqp_broker, queue_name, work, grace=0.1)
    async with RpcClient(amqp_broker) as client, anyio.create_task_group() as tg:
        result: list[str] = []

        async def call() -> None:
            result.append((await client.call(queue_name, b"job", timeout=20)).text())

        tg.start_soon(first.run)
        tg.start_soon(call)
        with anyio.fail_after(10):
            await first_run.wait()
        first.control.stop("test", "restart")
        second = _worker(amqp_broker, queue_name, work)
        tg.start_soon(second.run)
        with anyio.fail_after(25):
            while not result:
                await anyio.sleep(0.05)
        second.control.stop("test", "done")
    assert result == ["answered"]
    assert len(runs) == 2


async def test_a_worker_that_dies_right_after_answering_does_not_run_the_request_again(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # Acks are coalesced (a batch, or a flush every 20 ms; longer behind a slow earlier message). A
    # request's ack used to wait in that batch while its reply had already gone: a crash then
    # redelivered an answered request, which ran, and answered, a second time.
    await amqp_broker.declare_queue(queue_name)
    runs: list[bytes] = []

    async def work(message: Message) -> str:
        runs.append(message.body)
        if message.body == b"held":
            await anyio.sleep(3600)
        return "ok"

    def worker(broker: AmqpBroker) -> Consumer:
        publisher = broker.publisher()
        provider = broker.provider(queue_name, prefetch=10)  # coalesced: batches of 5
        stack = Stack(
            Layer(ReplyProcessor, publisher=publisher, provider=provider),
            Layer(AckProcessor, provider=provider),
            callback=work,
        )
        return Consumer(provider, stack, concurrency=2, grace_period=0.1)

    doomed = AmqpBroker(amqp_broker.broker_url)
    async with RpcClient(amqp_broker) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker(doomed).run)

            async def held() -> None:
                with pytest.raises(RpcTimeout):
                    await client.call(queue_name, b"held", timeout=2)

            tg.start_soon(held)
            with anyio.fail_after(10):
                while b"held" not in runs:
                    await anyio.sleep(0.01)
                assert (await client.call(queue_name, b"quick", timeout=8)).text() == "ok"
            await doomed.close()  # the worker dies: what it had not acked comes back
            tg.cancel_scope.cancel()
        survivor = AmqpBroker(amqp_broker.broker_url)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker(survivor).run)
            with anyio.fail_after(10):
                while runs.count(b"held") < 2:  # the redelivered one came back: the queue is drained
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        await survivor.close()
    assert runs.count(b"quick") == 1


async def test_calls_sharing_a_message_id_each_get_their_own_routing_outcome(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # aiormq matches a return to its publish by message_id: a call to a missing queue and one to an
    # existing queue, sent together with one (idempotency) id, swapped outcomes: the missing queue's call
    # waited for a reply that could not come, and the delivered one raised "no queue".
    await amqp_broker.declare_queue(queue_name, durable=False)
    outcomes: dict[str, str] = {}
    rounds = 5

    async def call(client: RpcClient, key: str, queue: str, message_id: str) -> None:
        try:
            await client.call(queue, b"x", timeout=0.5, message_id=message_id)
            outcomes[key] = "replied"
        except PublishError:
            outcomes[key] = "unroutable"
        except RpcTimeout:
            outcomes[key] = "timeout"

    async with RpcClient(amqp_broker) as client:
        for i in range(rounds):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, client, f"missing-{i}", f"{queue_name}.nowhere", f"same-{i}")
                tg.start_soon(call, client, f"present-{i}", queue_name, f"same-{i}")
    pairs = (("missing", "unroutable"), ("present", "timeout"))
    assert outcomes == {f"{key}-{i}": outcome for i in range(rounds) for key, outcome in pairs}
