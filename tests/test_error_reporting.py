"""Messages given up for good reach error trackers hooked into logging, with their structured fields."""

from __future__ import annotations

import logging

import anyio
import pytest

from processors.defaults import default_stack
from swarrow import Consumer, MemoryBroker, Message, PermanentError, Stack
from swarrow.topology import RetryTopology

pytestmark = pytest.mark.anyio


class _Tracker(logging.Handler):
    """What Sentry's LoggingIntegration sees: every record at ERROR and above."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_dead_lettered_message_reaches_a_logging_handler_with_queue_id_attempt_and_error_type() -> (
    None
):
    broker = MemoryBroker("errors")
    await RetryTopology("orders", [0.01]).declare(broker)
    await broker.publisher().publish(Message(b"x", message_id="order-7"), "orders")
    tracker = _Tracker()
    logging.getLogger().addHandler(tracker)

    async def refuse(message: Message) -> None:
        raise PermanentError("card declined")

    try:
        provider = broker.provider("orders", prefetch=10)
        layers = default_stack(
            provider=provider, publisher=broker.publisher(), signals=False, retry_attempts=1,
            retry_delays=[0.01], max_messages=1,
        )  # fmt: skip
        with anyio.fail_after(10):
            await Consumer(provider, Stack(*layers, callback=refuse)).run()
    finally:
        logging.getLogger().removeHandler(tracker)
    given_up = [r for r in tracker.records if getattr(r, "message_id", None) == "order-7"]
    assert given_up, "no ERROR record for the dead-lettered message"
    record = given_up[0]
    assert record.queue == "orders"  # type: ignore[attr-defined]
    assert record.attempt == 1  # type: ignore[attr-defined]
    assert record.error_type == "PermanentError"  # type: ignore[attr-defined]
    assert "card declined" in record.getMessage()
