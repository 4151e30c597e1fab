"""swarrot's layout names its retry queues after their delays: swarrow never guesses them, and never binds a
second queue to a retry key (which would deliver every retry twice) without being told it is safe."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiormq
import anyio
import pytest
from click.testing import CliRunner

from swarrow import ConfigurationError, Settings
from swarrow.amqp import AmqpBroker
from swarrow.cli import cli

pytestmark = pytest.mark.integration


async def _toolkit(url: str, queue: str, delays: list[int], ttl: dict[int, int] | None = None) -> None:
    """rabbit-mq-admin-toolkit's layout for `queue: {retries: delays}`, declared raw (TTLs overridable)."""
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
        dlx = {"x-dead-letter-exchange": "dl", "x-dead-letter-routing-key": queue}
        await channel.queue_declare(queue, durable=True, arguments=dlx)
        await channel.queue_declare(f"{queue}_dl", durable=True)
        await channel.queue_bind(f"{queue}_dl", "dl", routing_key=queue)
        await channel.queue_bind(queue, "retry", routing_key=queue)
        for attempt, delay in enumerate(delays, start=1):
            arguments: dict[str, Any] = {
                "x-message-ttl": (ttl or {}).get(delay, delay * 1000),
                "x-dead-letter-exchange": "retry",
                "x-dead-letter-routing-key": queue,
            }
            await channel.queue_declare(f"{queue}_retry_{delay}", durable=True, arguments=arguments)
            await channel.queue_bind(
                f"{queue}_retry_{delay}", "retry", routing_key=f"{queue}_retry_{attempt}"
            )
    finally:
        await connection.close()


async def _copies_of_one_retry(url: str, queue: str, attempt: int, candidates: list[int]) -> dict[str, int]:
    """One copy to `retry` with key Q_retry_<attempt> as swarrot does; count it per retry queue."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.confirm_delivery()
        await channel.basic_publish(b"probe", exchange="retry", routing_key=f"{queue}_retry_{attempt}")
        counts: dict[str, int] = {}
        for delay in candidates:
            name = f"{queue}_retry_{delay}"
            try:
                ok = await channel.queue_declare(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                channel = await connection.channel()
                continue
            counts[name] = int(ok.message_count or 0)
            await channel.queue_purge(name)
        return counts
    finally:
        await connection.close()


@pytest.fixture
def layout(amqp_url: str, queue_name: str) -> Iterator[str]:
    """`queue_name` laid out by the toolkit with retries [5, 25]; every queue of it deleted after."""
    anyio.run(_toolkit, amqp_url, queue_name, [5, 25])
    yield queue_name

    async def clean() -> None:
        broker = AmqpBroker(amqp_url)
        await broker.connect()
        for name in (
            queue_name,
            f"{queue_name}_dl",
            *(f"{queue_name}_retry_{d}" for d in (1, 2, 4, 5, 10, 25)),
        ):
            await broker.delete_queue(name)
        await broker.close()

    anyio.run(clean)


def test_declaring_changed_delays_over_the_toolkits_layout_is_refused_naming_the_queue_and_key(
    amqp_url: str, layout: str
) -> None:
    """Before: `declare --retry-delays 10s,25s` over 5,25 bound Q_retry_10 next to Q_retry_5: 2 copies."""
    args = ["declare", "--url", amqp_url, "--queue", layout, "--retry-topology", "swarrot"]
    refused = CliRunner().invoke(cli, [*args, "--retry-delays", "10s,25s"])
    assert refused.exit_code == 2, refused.output
    assert f"'{layout}_retry_10' (routing key '{layout}_retry_1')" in refused.output
    assert "--add-retry-queues" in refused.output and "twice" in refused.output
    # Nothing was declared or bound: a retry for attempt 1 still lands once, in the old queue.
    assert anyio.run(_copies_of_one_retry, amqp_url, layout, 1, [5, 10, 25]) == {
        f"{layout}_retry_5": 1, f"{layout}_retry_25": 0,
    }  # fmt: skip
    # Declaring the same layout again is still a no-op that needs no flag.
    again = CliRunner().invoke(cli, [*args, "--retry-delays", "5s,25s"])
    assert again.exit_code == 0, again.output
    # The documented way: the old queue deleted (it was empty), then the new one added on purpose.
    anyio.run(_delete, amqp_url, f"{layout}_retry_5")
    added = CliRunner().invoke(cli, [*args, "--retry-delays", "10s,25s", "--add-retry-queues"])
    assert added.exit_code == 0, added.output
    assert f"created {layout}_retry_10" in added.output
    assert anyio.run(_copies_of_one_retry, amqp_url, layout, 1, [5, 10, 25]) == {
        f"{layout}_retry_10": 1, f"{layout}_retry_25": 0,
    }  # fmt: skip


async def _delete(url: str, name: str) -> None:
    broker = AmqpBroker(url)
    await broker.connect()
    await broker.delete_queue(name)
    await broker.close()


def test_swarrot_mode_without_delays_is_refused_rather_than_guessing_queue_names(
    amqp_url: str, layout: str
) -> None:
    """Before: consume guessed 1s,2s,4s; declaring them as told put 2 copies in per retry."""
    common = ["--url", amqp_url, "--queue", layout, "--retry-topology", "swarrot"]
    for args in (
        ["consume", "json:dumps", *common, "--max-messages", "1"],
        ["consume", "json:dumps", *common, "--retry-attempts", "2", "--max-messages", "1"],
        ["declare", *common],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert "needs --retry-delays" in result.output and f"{layout}_retry_5" in result.output, result.output
    # The previous advice, followed, is refused too: it would add queues to an existing layout.
    followed = CliRunner().invoke(cli, ["declare", *common, "--retry-delays", "1s,2s,4s"])
    assert followed.exit_code == 2 and "--add-retry-queues" in followed.output
    assert anyio.run(_copies_of_one_retry, amqp_url, layout, 1, [1, 2, 4, 5, 25]) == {
        f"{layout}_retry_5": 1, f"{layout}_retry_25": 0,
    }  # fmt: skip
    with pytest.raises(ConfigurationError, match="retry_delays"):
        Settings.create(url=amqp_url, queue=layout, retry_topology="swarrot")
    assert Settings.create(url=amqp_url, queue=layout, retry_topology="swarrot", retry=False).retry is False
    # With the toolkit's delays it runs (and finds everything).
    ran = CliRunner().invoke(cli, ["consume", "json:dumps", *common, "--retry-delays", "5s,25s",
                                   "--stop-when-idle", "0.2", "--no-signals"])  # fmt: skip
    assert ran.exit_code == 0, ran.output


def test_a_retry_queue_whose_ttl_contradicts_its_name_is_refused(amqp_url: str, queue_name: str) -> None:
    """A hand-made Q_retry_5 holding copies 1 s: consume says so instead of retrying 5x too early."""
    anyio.run(lambda: _toolkit(amqp_url, queue_name, [5, 25], ttl={5: 1000}))
    try:
        result = CliRunner().invoke(cli, ["consume", "json:dumps", "--url", amqp_url, "--queue", queue_name,
                                          "--retry-topology", "swarrot", "--retry-delays", "5s,25s",
                                          "--stop-when-idle", "0.5", "--no-signals"])  # fmt: skip
        assert result.exit_code == 2, result.output
        assert f"'{queue_name}_retry_5'" in result.output and "1000 ms, not 5000 ms" in result.output
    finally:
        for name in (queue_name, f"{queue_name}_dl", f"{queue_name}_retry_5", f"{queue_name}_retry_25"):
            anyio.run(_delete, amqp_url, name)


def test_declare_refuses_changed_delays_on_memory_too() -> None:
    url = "memory://swarrot-delays-guard"
    args = ["declare", "--url", url, "--queue", "mail", "--retry-topology", "swarrot"]
    assert CliRunner().invoke(cli, [*args, "--retry-delays", "5s,25s"]).exit_code == 0
    refused = CliRunner().invoke(cli, [*args, "--retry-delays", "5s,25s,100s"])
    assert refused.exit_code == 2 and "'mail_retry_100' (routing key 'mail_retry_3')" in refused.output
    assert (
        CliRunner().invoke(cli, [*args, "--retry-delays", "5s,25s,100s", "--add-retry-queues"]).exit_code == 0
    )
