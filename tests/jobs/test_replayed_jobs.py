"""A job brought back by `swarrow dead replay` shows what became of it next, not its old dead letter."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import anyio
import pytest
from click.testing import CliRunner, Result

from swarrow import MemoryBroker
from swarrow.amqp import AmqpBroker
from swarrow.cli import cli


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"SWARROW_TRACK_JOBS": ""})


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.integration)])
def broker_url(request: pytest.FixtureRequest, queue_name: str) -> Iterator[str]:
    if request.param == "memory":
        name = f"replayed-jobs-{uuid.uuid4().hex[:8]}"
        MemoryBroker.named(name)
        yield f"memory://{name}"
        return
    url: str = request.getfixturevalue("amqp_url")
    yield url

    async def delete() -> None:
        broker = AmqpBroker(url)
        await broker.connect()
        try:
            for name in (queue_name, f"{queue_name}.dead", f"{queue_name}.retry.1"):
                await broker.delete_queue(name)
        finally:
            await broker.close()

    anyio.run(delete)


def _consume(callback: str, queue: str, url: str, store: str) -> None:
    result = invoke("consume", f"tests.cli_callbacks:{callback}", "-q", queue, "--url", url, "--declare",
                    "--retry-delays", "0.2s", "--stop-when-idle", "1s", "--no-signals",
                    "--track-jobs", store)  # fmt: skip
    assert result.exit_code == 0, result.output


def _status(ids: list[str], store: str) -> tuple[int, list[list[str]]]:
    result = invoke("jobs", "status", *ids, "--store", store)
    return result.exit_code, [line.split() for line in result.stdout.splitlines()]


def test_a_replayed_job_shows_its_new_state_and_fails_again_as_dead_lettered(
    broker_url: str, queue_name: str, store_url: str
) -> None:
    assert invoke("declare", "-q", queue_name, "--url", broker_url, "--retry-delays", "0.2s").exit_code == 0
    published = invoke("publish", "-q", queue_name, "--url", broker_url, "--body", "x", "--count", "3",
                       "--print-ids")  # fmt: skip
    assert published.exit_code == 0, published.output
    ids = published.stdout.split()
    _consume("boom", queue_name, broker_url, store_url)
    code, rows = _status(ids, store_url)
    assert code == 1 and [r[1:3] for r in rows] == [["dead_lettered", "attempts=2"]] * 3, rows

    replay = invoke("dead", "replay", "-q", queue_name, "--url", broker_url, "--message-id", ids[0],
                    "--message-id", ids[1], "--track-jobs", store_url)  # fmt: skip
    assert replay.stdout.splitlines()[-1] == "replayed 2, kept 1, failed 0", replay.output
    # back in the queue, not run yet: unfinished again (a script waiting on them must not stop here)
    code, rows = _status(ids, store_url)
    assert [r[1:4] for r in rows[:2]] == [["retrying", "attempts=0", "replays=1"]] * 2, rows
    assert rows[2][1] == "dead_lettered"
    unfinished = invoke("jobs", "unfinished", *ids, "--store", store_url)
    assert unfinished.exit_code == 7 and unfinished.stdout.split() == ids[:2]
    _consume("ok", queue_name, broker_url, store_url)  # the fix is deployed
    code, rows = _status(ids, store_url)
    assert [r[1] for r in rows] == ["succeeded", "succeeded", "dead_lettered"], rows
    assert code == 1  # the third is still dead-lettered
    assert _status(ids[:2], store_url)[0] == 0

    # replayed again and failing again: dead-lettered again, with the new attempts
    assert invoke("dead", "replay", "-q", queue_name, "--url", broker_url).exit_code == 0
    _consume("boom", queue_name, broker_url, store_url)
    code, rows = _status(ids[2:], store_url)
    assert code == 1 and rows[0][1] == "dead_lettered", rows
