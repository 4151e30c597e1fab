"""Scenario 4: `swarrow publish` with confirms while the queue's leader is killed.

A confirm never lies: every message the command counts as confirmed is in the queue afterwards.
The ones it could not confirm are reported by id (`not confirmed: ID`), never silently dropped;
they may or may not have reached the queue. Every id is either confirmed or reported.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.cluster, pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]

MESSAGES = 6_000


@pytest.mark.timeout(300)
async def test_a_confirm_never_lies_when_the_leader_dies_mid_publish(chaos: Chaos) -> None:
    cluster = chaos.cluster
    await chaos.declare_topology((0.5,))
    publisher = chaos.swarrow(
        "publish",
        *("--queue", chaos.queue, "--url", cluster.url(1), "--count", str(MESSAGES)),
        *("--persistent", "--body", "{n}", "--message-id", "pub-{n}", "--window", "50", "--no-progress"),
    )

    async def some_queued() -> bool:
        return (await chaos.counts())[0] >= MESSAGES // 5 or publisher.returncode is not None

    await chaos.wait_until(some_queued, timeout=90, what="a fifth of the messages queued")
    assert publisher.returncode is None, f"the publish ended before the kill:\n{publisher.output()[-2000:]}"
    leader = cluster.leader(chaos.queue)
    killed_at = time.monotonic()
    await cluster.kill(leader)
    code = await publisher.wait(180)
    seconds_after_kill = time.monotonic() - killed_at
    output = publisher.output()
    assert "guest:guest@" not in output, "the publisher printed the broker password"

    published = [f"pub-{n}" for n in range(1, MESSAGES + 1)]
    reported = set(re.findall(r"^not confirmed: (pub-\d+) \(", output, flags=re.MULTILINE))
    confirmed = [message_id for message_id in published if message_id not in reported]
    summary = re.search(r"published (\d+)(?: of (\d+))? messages? to ", output)
    assert summary is not None, output[-2000:]
    assert int(summary.group(1)) == len(confirmed), (
        f"the summary's count disagrees with the ids:\n{output[-2000:]}"
    )
    assert code == (1 if reported else 0), output[-2000:]
    if reported:
        assert f"{len(reported)} message(s) not confirmed" in output

    await cluster.start(leader)
    queued = await chaos.drain(chaos.queue)
    in_queue = set(queued)
    lied = [message_id for message_id in confirmed if message_id not in in_queue]
    row = chaos.account(
        "4. swarrow publish during a leader kill -9",
        confirmed,
        processed=[],
        remaining=[message_id for message_id in queued if message_id not in reported],
        seconds=seconds_after_kill,
    )
    print(
        f"\n{len(confirmed)} confirmed, {len(reported)} reported not confirmed "
        f"({len(reported & in_queue)} of those in the queue anyway); duplicates {row.duplicates}; "
        f"the publish ended {seconds_after_kill:.1f} s after the kill"
    )
    assert not lied, f"{len(lied)} confirmed message(s) missing from the queue, e.g. {lied[:10]}"
    assert set(queued) <= set(published)
