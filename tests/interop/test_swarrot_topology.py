"""The swarrot topology: the toolkit's exact layout, compatible with it, and a worker using it."""

from __future__ import annotations

import json
from typing import Any

import aiormq
import anyio
import pytest

from processors.defaults import default_stack
from swarrow import Broker, ConfigurationError, Consumer, MemoryBroker, Message, PermanentError, Stack
from swarrow.amqp import AmqpBroker
from swarrow.swarrot import (
    SWARROT_ATTEMPTS_HEADER,
    SwarrotTopology,
    swarrot_dead_letter_queue_name,
    swarrot_retry_queue_name,
    swarrot_retry_routing_key,
)
from swarrow.topology import ERROR_TYPE_HEADER, RETRY_ATTEMPT_HEADER

pytestmark = pytest.mark.anyio


def test_names_follow_the_toolkit() -> None:
    assert swarrot_retry_queue_name("mail", 25) == "mail_retry_25"
    assert swarrot_retry_queue_name("mail", 0.5) == "mail_retry_0.5"
    assert swarrot_retry_routing_key("mail", 2) == "mail_retry_2"
    assert swarrot_dead_letter_queue_name("mail") == "mail_dl"
    topology = SwarrotTopology("mail", [25, 125, 625])
    assert [name for name, _ in topology.queues()] == [
        "unroutable", "mail", "mail_dl", "mail_retry_25", "mail_retry_125", "mail_retry_625",
    ]  # fmt: skip
    assert dict(topology.queues())["mail_retry_125"] == {
        "x-message-ttl": 125_000, "x-dead-letter-exchange": "retry", "x-dead-letter-routing-key": "mail",
    }  # fmt: skip
    assert dict(topology.queues())["mail"] == {
        "x-dead-letter-exchange": "dl",
        "x-dead-letter-routing-key": "mail",
    }
    assert ("retry", "mail_retry_125", "mail_retry_2") in topology.bindings()
    assert ("retry", "mail", "mail") in topology.bindings()
    assert ("dl", "mail_dl", "mail") in topology.bindings()


async def _toolkit_declares(url: str, queue: str, delays: list[int]) -> None:
    """What rabbit-mq-admin-toolkit's VhostManager creates for `queue: {retries: delays}`, declared raw."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.exchange_declare("unroutable", exchange_type="fanout", durable=True)
        await channel.queue_declare("unroutable", durable=True)
        await channel.queue_bind("unroutable", "unroutable", routing_key="")
        for name, kind in (("dl", "direct"), ("retry", "topic")):
            await channel.exchange_declare(
                name, exchange_type=kind, durable=True, arguments={"alternate-exchange": "unroutable"}
            )
        await channel.queue_declare(
            queue,
            durable=True,
            arguments={"x-dead-letter-exchange": "dl", "x-dead-letter-routing-key": queue},
        )
        await channel.queue_declare(f"{queue}_dl", durable=True)
        await channel.queue_bind(f"{queue}_dl", "dl", routing_key=queue)
        await channel.queue_bind(queue, "retry", routing_key=queue)
        for attempt, delay in enumerate(delays, start=1):
            name = f"{queue}_retry_{delay}"
            arguments: dict[str, Any] = {"x-message-ttl": delay * 1000, "x-dead-letter-exchange": "retry"}
            arguments["x-dead-letter-routing-key"] = queue
            await channel.queue_declare(name, durable=True, arguments=arguments)
            await channel.queue_bind(name, "retry", routing_key=f"{queue}_retry_{attempt}")
    finally:
        await connection.close()


@pytest.mark.integration
async def test_declaring_over_the_toolkits_layout_is_a_no_op_and_a_difference_is_named(
    amqp_broker: AmqpBroker, amqp_url: str, queue_name: str
) -> None:
    topology = SwarrotTopology(queue_name, [5, 25])
    try:
        await _toolkit_declares(amqp_url, queue_name, [5, 25])
        infos = await topology.declare(amqp_broker)
        assert [info.created for info in infos] == [False, False, False, False]
    finally:
        for name, _ in topology.queues():
            if name != "unroutable":
                await amqp_broker.delete_queue(name)
    other = SwarrotTopology(queue_name, [5])
    try:
        await _toolkit_declares(amqp_url, queue_name, [5])
        # A queue `Q` the toolkit did not give a `dl` dead-letter exchange is refused, naming it.
        await amqp_broker.delete_queue(queue_name)
        await amqp_broker.declare_queue(queue_name)
        with pytest.raises(ConfigurationError, match=repr(queue_name)):
            await other.declare(amqp_broker)
    finally:
        for name, _ in other.queues():
            if name != "unroutable":
                await amqp_broker.delete_queue(name)


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.integration)])
async def any_broker(request: pytest.FixtureRequest, queue_name: str) -> Any:
    if request.param == "memory":
        yield MemoryBroker("swarrot")
        return
    broker = AmqpBroker(request.getfixturevalue("amqp_url"), reconnect_interval=0.5)
    await broker.connect()
    try:
        yield broker
    finally:
        for name, _ in SwarrotTopology(queue_name, [0.2, 0.2]).queues():
            if name != "unroutable":
                await broker.delete_queue(name)
        await broker.close()


async def test_a_worker_in_swarrot_mode_retries_through_retry_and_dead_letters_into_q_dl(
    any_broker: Broker, queue_name: str
) -> None:
    topology = SwarrotTopology(queue_name, [0.2, 0.2])
    await topology.declare(any_broker)
    seen: list[tuple[str, Any, Any]] = []

    async def callback(message: Message) -> None:
        job = json.loads(message.body)
        seen.append(
            (
                job["id"],
                message.headers.get(SWARROT_ATTEMPTS_HEADER),
                message.headers.get(RETRY_ATTEMPT_HEADER),
            )
        )
        if job["id"] == "permanent":
            raise PermanentError("no card on file")
        if message.headers.get(SWARROT_ATTEMPTS_HEADER, 0) < 2:
            raise RuntimeError("not yet")

    publisher = any_broker.publisher()
    for job_id in ("retried", "permanent"):
        await publisher.publish(Message(json.dumps({"id": job_id}).encode(), message_id=job_id), queue_name)
    provider = any_broker.provider(queue_name, prefetch=10)
    layers = default_stack(
        provider=provider, publisher=publisher, signals=False, log=False, retry_attempts=2,
        retry_delays=[0.2, 0.2], retry_topology="swarrot", max_messages=4,
    )  # fmt: skip
    with anyio.fail_after(20):
        await Consumer(provider, Stack(*layers, callback=callback), concurrency=2).run()
    assert [s for s in seen if s[0] == "retried"] == [
        ("retried", None, None),
        ("retried", 1, 1),
        ("retried", 2, 2),
    ]
    dead_provider = any_broker.provider(topology.dead_letter_queue, prefetch=10)
    await dead_provider.start()
    with anyio.fail_after(10):
        dead = await dead_provider.receive()
    assert dead is not None
    await dead_provider.ack(dead)
    await dead_provider.close()
    assert dead.message_id == "permanent"
    assert dead.headers[ERROR_TYPE_HEADER] == "swarrow.errors.PermanentError"
    await publisher.close()


def test_the_migration_example_config_selects_the_swarrot_topology() -> None:
    from pathlib import Path

    from click.testing import CliRunner

    from swarrow.cli import cli

    example = Path(__file__).resolve().parents[2] / "examples" / "swarrot.toml"
    result = CliRunner().invoke(cli, ["consume", "send_mail", "--config", str(example), "--print-settings"])
    assert result.exit_code == 0, result.output
    assert 'retry_topology = "swarrot"' in result.output
    assert "retry_delays = [5s, 25s, 100s]" in result.output
    assert "secret" not in result.output


def test_declare_with_the_swarrot_topology_prints_the_toolkits_layout() -> None:
    from click.testing import CliRunner

    from swarrow.cli import cli

    args = ["declare", "--url", "memory://swarrot-cli", "--queue", "mail", "--retry-topology", "swarrot"]
    result = CliRunner().invoke(cli, [*args, "--retry-delays", "5s,25s"])
    assert result.exit_code == 0, result.output
    for line in (
        "exchange retry (topic, alternate-exchange=unroutable)",
        "created mail (dead letters → exchange dl)",
        "created mail_retry_25 (x-message-ttl=25000ms → mail)",
        "bound mail_retry_25 to retry with 'mail_retry_2'",
        "bound mail_dl to dl with 'mail'",
    ):
        assert line in result.output
    bad = CliRunner().invoke(cli, [*args, "--retry-topology", "php"])
    assert bad.exit_code == 2 and "--retry-topology" in bad.output


def test_consume_with_changed_swarrot_delays_warns_that_declaring_them_would_deliver_retries_twice() -> None:
    """10s,25s over a 5s,25s layout binds mail_retry_5 and mail_retry_10 to one key: two copies a retry."""
    from click.testing import CliRunner

    from swarrow.cli import cli

    url = "memory://swarrot-changed-delays"
    common = ["--url", url, "--queue", "mail", "--retry-topology", "swarrot"]
    assert CliRunner().invoke(cli, ["declare", *common, "--retry-delays", "5s,25s"]).exit_code == 0
    result = CliRunner().invoke(cli, ["consume", "json:dumps", *common, "--retry-delays", "10s,25s"])
    assert result.exit_code == 2, result.output
    assert "'mail_retry_10' missing" in result.output
    assert "delete its old mail_retry_* queues first" in result.output and "delivered twice" in result.output


def test_a_stray_retry_route_is_told_from_the_newest_x_death_entry() -> None:
    from swarrow.swarrot import stray_retry_route

    def death(queue: str, key: str, reason: str = "expired") -> dict[str, Any]:
        return {"x-death": [{"queue": queue, "reason": reason, "exchange": "retry", "routing-keys": [key]}]}

    delays = [10, 25]
    assert stray_retry_route("mail", delays, death("mail_retry_10", "mail_retry_1")) is None
    assert stray_retry_route("mail", delays, death("mail_retry_5", "mail_retry_1")) == (
        "mail_retry_5", "mail_retry_1", "mail_retry_10",
    )  # fmt: skip
    assert stray_retry_route("mail", delays, death("mail_retry_5", "mail_retry_1", "rejected")) is None
    # A key past the delays is not ours to judge.
    assert stray_retry_route("mail", delays, death("mail_retry_100", "mail_retry_3")) is None
    assert stray_retry_route("mail", delays, {"x-death": "garbage"}) is None
    assert stray_retry_route("mail", delays, {}) is None


@pytest.mark.integration
async def test_a_retry_delivered_twice_through_reordered_delays_is_reported_naming_the_stray_queue(
    amqp_broker: AmqpBroker, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """0.2s,0.4s then 0.4s,0.2s: both queues exist, so declare adds a second queue to each key unseen.

    The duplicate itself cannot be prevented (AMQP shows no bindings); the first copy that comes back
    through the queue the delays do not name is logged once, naming it, its key and the right queue.
    """
    old, new = SwarrotTopology(queue_name, [0.2, 0.4]), SwarrotTopology(queue_name, [0.4, 0.2])
    calls: list[Any] = []

    async def callback(message: Message) -> None:
        calls.append(message.headers.get(SWARROT_ATTEMPTS_HEADER))
        if not calls[-1]:
            raise RuntimeError("first call fails")

    async def one_message(topology: SwarrotTopology) -> None:
        publisher = amqp_broker.publisher()
        await publisher.publish(Message(b"{}", message_id="m"), queue_name)
        provider = amqp_broker.provider(queue_name, prefetch=10)
        layers = default_stack(
            provider=provider, publisher=publisher, signals=False, log=False, retry_attempts=2,
            retry_delays=topology.delays, retry_topology="swarrot", stop_when_idle=1.5,
        )  # fmt: skip
        with anyio.fail_after(20):
            await Consumer(provider, Stack(*layers, callback=callback), concurrency=2).run()
        await publisher.close()

    stray = "came back from retry queue"
    try:
        await old.declare(amqp_broker)
        await one_message(old)
        assert calls == [None, 1] and stray not in caplog.text  # the right route says nothing
        calls.clear()
        await new.declare(amqp_broker, add_retry_queues=True)  # nothing missing: nothing to refuse
        await one_message(new)
        assert calls == [None, 1, 1]  # delivered twice: through queue_retry_0.2 and queue_retry_0.4
        reports = [r.getMessage() for r in caplog.records if stray in r.getMessage()]
        assert len(reports) == 1, reports
        assert f"{queue_name}_retry_0.2, bound to exchange retry with key {queue_name}_retry_1" in reports[0]
        assert f"the retry queue for that key is {queue_name}_retry_0.4" in reports[0]
    finally:
        for name, _ in old.queues():
            if name != "unroutable":
                await amqp_broker.delete_queue(name)
