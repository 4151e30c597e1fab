"""`swarrow dead … --queue Q` on a queue in swarrot's layout reads its `Q_dl` (no `Q.dead` there)."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest

from swarrow import Message
from swarrow.amqp import AmqpBroker
from swarrow.topology import dead_letter_headers

pytestmark = [pytest.mark.integration]


def swarrow(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "swarrow", *args, "--url", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_dead_commands_find_swarrots_q_dl(amqp_url: str, queue_name: str) -> None:
    queue = queue_name.replace(".", "-")
    declared = swarrow(
        "declare", "-q", queue, "--retry-topology", "swarrot", "--retry-delays", "1s", url=amqp_url
    )
    assert declared.returncode == 0, declared.stderr

    async def fill() -> None:
        broker = AmqpBroker(amqp_url)
        await broker.connect()
        try:
            for i in range(3):
                headers = dead_letter_headers("myapp.Boom", "no", attempts=2, queue=queue)
                await broker.publisher().publish(
                    Message(b"x", headers=headers, message_id=f"s{i}"), f"{queue}_dl"
                )
        finally:
            await broker.close()

    async def count_and_delete() -> dict[str, int]:
        broker = AmqpBroker(amqp_url)
        await broker.connect()
        try:
            counts = {}
            for name in (queue, f"{queue}_dl", f"{queue}_retry_1"):
                info = await broker.inspect_queue(name)
                counts[name] = info.message_count if info else -1
                await broker.delete_queue(name)
            return counts
        finally:
            await broker.close()

    try:
        anyio.run(fill)
        listed = swarrow("dead", "list", "-q", queue, url=amqp_url)
        assert listed.returncode == 0 and listed.stdout.startswith(f"{queue}_dl: 3 dead letters"), listed
        assert f"'{queue}.dead' does not exist: reading '{queue}_dl'" in listed.stderr
        replayed = swarrow("dead", "replay", "-q", queue, "--message-id", "s1", "--no-progress", url=amqp_url)
        assert replayed.stdout.splitlines()[-1] == "replayed 1, kept 2, failed 0", replayed
    finally:
        counts = anyio.run(count_and_delete)
    assert counts == {queue: 1, f"{queue}_dl": 2, f"{queue}_retry_1": 0}
