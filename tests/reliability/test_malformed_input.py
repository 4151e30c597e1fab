"""Scenario 7: malformed input through the default stack: non-UTF-8 and invalid JSON bodies, absurd
header values (attempt header a string, negative, huge; garbage x-death / x-delivery-count), 10 MB
bodies. None crashes the worker; what cannot be processed is dead-lettered with a reason."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from callbacks import Recorder, json_consumer

from processors import default_stack
from swarrow import Consumer, Stack
from swarrow.topology import ERROR_MESSAGE_HEADER, ERROR_TYPE_HEADER, RETRY_ATTEMPT_HEADER

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.anyio]

DELAYS = (0.05,)
TEN_MB = 10 * 1024 * 1024
OK = b'{"ok": true}'
FAIL = b'{"fail": true}'

# id -> (body, headers, where it must end: "processed" or the error type it is dead-lettered with)
CASES: dict[str, tuple[bytes, dict[str, Any] | None, str]] = {
    "non-utf8": (b"\xff\xfe\x00\x9c not text", None, "swarrow.errors.PermanentError"),
    "invalid-json": (b'{"unterminated": ', None, "swarrow.errors.PermanentError"),
    "attempt-string": (OK, {RETRY_ATTEMPT_HEADER: "three"}, "processed"),
    "attempt-negative": (OK, {RETRY_ATTEMPT_HEADER: -5}, "processed"),
    "attempt-huge": (OK, {RETRY_ATTEMPT_HEADER: 2**62}, "processed"),
    "attempt-bool": (OK, {RETRY_ATTEMPT_HEADER: True}, "processed"),
    "attempt-table": (OK, {RETRY_ATTEMPT_HEADER: {"nested": [1, "x"]}}, "processed"),
    "failing-attempt-string": (FAIL, {RETRY_ATTEMPT_HEADER: "three"}, "RuntimeError"),
    "failing-attempt-negative": (FAIL, {RETRY_ATTEMPT_HEADER: -5}, "RuntimeError"),
    "failing-attempt-huge": (FAIL, {RETRY_ATTEMPT_HEADER: 2**62}, "RuntimeError"),
    "garbage-x-death": (OK, {"x-death": "not a list", "x-delivery-count": "lots"}, "processed"),
    "garbage-x-death-entries": (OK, {"x-death": [{"queue": 7, "count": "many"}, "junk"]}, "processed"),
    "negative-delivery-count": (OK, {"x-delivery-count": -1}, "processed"),
    "empty-body": (b"", None, "swarrow.errors.PermanentError"),
    "ten-mb-json": (json.dumps({"blob": "x" * TEN_MB}).encode(), None, "processed"),
    "ten-mb-binary": (b"\x80" * TEN_MB, None, "swarrow.errors.PermanentError"),
}


@pytest.mark.timeout(90)
async def test_malformed_messages_are_processed_or_dead_lettered_with_a_reason(chaos: Chaos) -> None:
    await chaos.declare_topology(DELAYS)
    for message_id, (body, headers, _) in CASES.items():
        await chaos.publish_one(message_id, body, headers)
    after = chaos.ids("after-the-garbage", 50)
    await chaos.publish(after, body=OK)
    published = [*CASES, *after]

    broker = chaos.broker()
    recorder = Recorder()
    provider = broker.provider(chaos.queue, prefetch=20)
    stack = Stack(
        *default_stack(provider=provider, publisher=broker.publisher(), signals=False, delivery_limit=10,
                       retry_attempts=len(DELAYS), retry_delays=DELAYS),
        callback=json_consumer(recorder),
    )  # fmt: skip
    consumer = Consumer(provider, stack, concurrency=4)
    expected_dead = sum(1 for *_, outcome in CASES.values() if outcome != "processed")
    expected_done = len(published) - expected_dead

    async def settled() -> bool:
        return len(recorder.done) == expected_done and await chaos.ready(chaos.dead) == expected_dead

    reason = await chaos.run_until(consumer, settled, timeout=60, what="every malformed message settled")
    assert reason.code == "test", "the worker must still be consuming: no malformed input may stop it"
    row, dead = await chaos.settle("7. malformed input (16 kinds) + 50 normal", published, recorder.processed)
    assert row.duplicates == 0 and row.remaining == 0
    for message_id, (_, _, outcome) in CASES.items():
        if outcome == "processed":
            assert message_id in recorder.done, f"{message_id} should have been processed"
    reasons = {d.message_id: d.headers for d in dead}
    for message_id, (_, _, outcome) in CASES.items():
        if outcome == "processed":
            continue
        headers = reasons[message_id]
        assert headers[ERROR_TYPE_HEADER] == outcome, (message_id, headers)
        assert headers[ERROR_MESSAGE_HEADER], f"{message_id} dead-lettered without a reason"
    assert next(d for d in dead if d.message_id == "ten-mb-binary").body == b"\x80" * TEN_MB
