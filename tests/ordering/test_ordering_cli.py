"""The ordering flags of `swarrow declare`, `swarrow publish` and `swarrow consume`, from the CLI."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner

from swarrow import MemoryBroker
from swarrow.cli import cli
from swarrow.ordering import SERIAL_HEADER


def test_publish_serial_group_sets_the_header() -> None:
    name = f"order-{uuid.uuid4().hex[:6]}"
    broker = MemoryBroker.named(name)
    broker.declare_queue_nowait("jobs")
    result = CliRunner().invoke(
        cli,
        [
            "publish",
            "--url",
            f"memory://{name}",
            "-q",
            "jobs",
            "--body",
            "x",
            "--serial-group",
            "customer-42",
        ],
    )
    assert result.exit_code == 0, result.output
    message = broker.get_nowait("jobs")
    assert message is not None and message.headers[SERIAL_HEADER] == "customer-42"
    empty = CliRunner().invoke(
        cli, ["publish", "--url", f"memory://{name}", "-q", "jobs", "--body", "x", "--serial-group", ""]
    )
    assert empty.exit_code == 2 and "--serial-group" in empty.output


def test_declare_refuses_priorities_on_quorum_queues_and_mixing_with_swarrot() -> None:
    quorum = CliRunner().invoke(
        cli, ["declare", "--url", "memory://o", "-q", "q", "--quorum", "--max-priority", "5"]
    )
    assert quorum.exit_code == 2 and "quorum queues have no priorities" in quorum.output
    bad = CliRunner().invoke(cli, ["declare", "--url", "memory://o", "-q", "q", "--max-priority", "300"])
    assert bad.exit_code == 2 and "--max-priority" in bad.output
    mixed = CliRunner().invoke(
        cli, ["declare", "--url", "memory://o", "-q", "q", "--shards", "2", "--retry-topology", "swarrot"]
    )
    assert mixed.exit_code == 2 and "--shards" in mixed.output


@pytest.mark.integration
def test_declare_priority_single_active_consumer_and_shards_on_rabbitmq(amqp_url: str) -> None:
    queue = f"test.ordering-cli.{uuid.uuid4().hex[:8]}"
    runner = CliRunner()
    try:
        result = runner.invoke(cli, ["declare", "--url", amqp_url, "-q", queue, "--max-priority", "10",
                                     "--single-active-consumer"])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert f"created {queue} (priorities 0-10, single active consumer)" in result.output
        again = runner.invoke(cli, ["declare", "--url", amqp_url, "-q", queue, "--max-priority", "10",
                                    "--single-active-consumer"])  # fmt: skip
        assert again.exit_code == 0 and f"found {queue}" in again.output
        shards = runner.invoke(cli, ["declare", "--url", amqp_url, "-q", f"{queue}.s", "--shards", "3",
                                     "--no-retry"])  # fmt: skip
        assert shards.exit_code == 0, shards.output
        assert f"exchange {queue}.s.shards (x-consistent-hash" in shards.output
        assert shards.output.count("bound ") == 3
    finally:
        import asyncio

        from swarrow.amqp import AmqpBroker

        async def cleanup() -> None:
            broker = AmqpBroker(amqp_url)
            names = [queue, f"{queue}.dead", *(f"{queue}.retry.{k}" for k in (1, 2, 3))]
            names += [f"{queue}.s.shard.{k}" for k in (1, 2, 3)]
            for name in names:
                await broker.delete_queue(name)
            channel = await broker._scratch_channel()
            await channel.exchange_delete(f"{queue}.s.shards")
            await channel.close()
            await broker.close()

        asyncio.run(cleanup())


def test_consume_serial_header_reaches_the_settings() -> None:
    result = CliRunner().invoke(
        cli,
        [
            "consume",
            "tests.rpc.callbacks:echo",
            "-q",
            "jobs",
            "--serial-header",
            "x-serial-group",
            "--print-settings",
        ],
    )
    assert result.exit_code == 0, result.output
    assert 'serial_header = "x-serial-group"' in result.output
