"""Reply values the wire cannot carry: each an error reply naming why, never a dead connection or a hang."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anyio
import pytest

from swarrow import Broker, Message
from swarrow.errors import ConfigurationError, InvalidMessageError, PublishError, RemoteError
from swarrow.rpc import ReplyBody, RpcClient
from swarrow.rpc.client import MAX_TIMEOUT
from tests.rpc.test_rpc_contract import serving

pytestmark = pytest.mark.anyio

BAD_HEADERS: dict[str, Any] = {
    "nan": float("nan"),  # RabbitMQ 3.10 closes the publisher's whole connection (541 INTERNAL_ERROR)
    "inf": float("-inf"),
    "huge": 1e300,  # aiormq packs floats in 32 bits: OverflowError from the encoder
    "decimal": Decimal("NaN"),
    "object": object(),
}


@pytest.mark.parametrize("kind", sorted(BAD_HEADERS))
async def test_a_reply_whose_headers_cannot_be_sent_is_an_error_reply(
    broker: Broker, queue_name: str, kind: str
) -> None:
    async def answer(message: Message) -> object:
        if message.body == b"bad":
            return ReplyBody(b"x", None, {"k": BAD_HEADERS[kind]})
        return "fine"

    async with serving(broker, queue_name, answer), RpcClient(broker) as client:
        with anyio.fail_after(10), pytest.raises(RemoteError) as caught:
            await client.call(queue_name, b"bad", timeout=8)
        # The worker and the caller's connection are intact: the next call is answered.
        assert (await client.call(queue_name, b"good", timeout=8)).text() == "fine"
    assert caught.value.error_type == "swarrow.errors.InvalidMessageError"
    assert "headers['k']" in caught.value.error_message
    info = await broker.inspect_queue(queue_name)
    assert info is not None and info.message_count == 0


async def test_a_value_too_deep_to_encode_is_an_error_reply(broker: Broker, queue_name: str) -> None:
    async def deep(message: Message) -> object:
        value: list[Any] = []
        for _ in range(100_000):
            value = [value]
        return value

    async with serving(broker, queue_name, deep), RpcClient(broker) as client:
        with anyio.fail_after(10), pytest.raises(RemoteError) as caught:
            await client.call(queue_name, b"x", timeout=8)
    assert caught.value.error_type == "TypeError"
    assert "'list'" in caught.value.error_message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e300], ids=["nan", "inf", "huge"])
async def test_a_request_header_the_wire_cannot_carry_is_refused_before_it_leaves(
    broker: Broker, queue_name: str, value: float
) -> None:
    async def answer(message: Message) -> str:
        return "fine"

    async with serving(broker, queue_name, answer), RpcClient(broker) as client:
        with pytest.raises(InvalidMessageError, match=r"headers\['k'\]"):
            await client.call(queue_name, b"x", headers={"k": value}, timeout=8)
        assert (await client.call(queue_name, b"next", timeout=8)).text() == "fine"


async def test_a_call_to_a_missing_exchange_fails_alone(broker: Broker, queue_name: str) -> None:
    # On RabbitMQ a publish to a missing exchange closes the channel (404), and direct reply-to lives on
    # that channel: every other call in flight used to fail with RpcConnectionLost.
    release = anyio.Event()
    started: list[bytes] = []

    async def held(message: Message) -> str:
        started.append(message.body)
        await release.wait()
        return "fine"

    answers: list[str] = []
    async with serving(broker, queue_name, held), RpcClient(broker) as client:

        async def waiting() -> None:
            answers.append((await client.call(queue_name, b"w", timeout=10)).text())

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(waiting)
            with anyio.fail_after(5):
                while len(started) < 3:
                    await anyio.sleep(0.01)
            for _ in range(2):  # a second time: a client remembers nothing wrong about the name
                with anyio.fail_after(5), pytest.raises(PublishError, match="no-such-exchange"):
                    await client.call(queue_name, b"x", exchange=f"{queue_name}.no-such-exchange", timeout=8)
            release.set()
    assert answers == ["fine"] * 3


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 1e17, -1.0, 0.0])
async def test_a_timeout_no_request_can_carry_is_a_configuration_error(
    broker: Broker, queue_name: str, timeout: float
) -> None:
    async def answer(message: Message) -> str:
        return "fine"

    with pytest.raises(ConfigurationError, match="timeout"):
        RpcClient(broker, timeout=timeout)
    async with serving(broker, queue_name, answer), RpcClient(broker) as client:
        with pytest.raises(ConfigurationError, match="timeout"):
            await client.call(queue_name, b"x", timeout=timeout)
        # The longest timeout allowed still carries a deadline and an expiration the broker takes.
        assert (await client.call(queue_name, b"x", timeout=MAX_TIMEOUT)).text() == "fine"


@pytest.mark.parametrize("where", ["routing_key", "exchange"])
async def test_a_name_over_255_bytes_is_refused_the_same_on_both_brokers(
    broker: Broker, queue_name: str, where: str
) -> None:
    async def answer(message: Message) -> str:
        return "fine"

    async with serving(broker, queue_name, answer), RpcClient(broker) as client:
        with pytest.raises(InvalidMessageError, match=f"{where} is 300 bytes"):
            await client.call(queue_name, b"x", timeout=8, **{where: "n" * 300})
        assert (await client.call(queue_name, b"next", timeout=8)).text() == "fine"
