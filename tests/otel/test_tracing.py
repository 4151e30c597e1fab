"""Tracing across queues: producer → consumer → retry → dead letter → reply, one trace, today's attributes."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from processors.defaults import default_stack
from swarrow import Broker, Consumer, Message, PermanentError, Stack
from swarrow.errors import InvalidMessageError
from swarrow.otel import FIRST_ATTEMPT_HEADER, TracingPublisher
from swarrow.topology import RetryTopology

pytestmark = pytest.mark.anyio


def _by_name(spans: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


async def _run(broker: Broker, queue: str, callback: Any, messages: int, **options: Any) -> None:
    await RetryTopology(queue, [0.05]).declare(broker)
    provider = broker.provider(queue, prefetch=10)
    layers = default_stack(
        provider=provider, publisher=broker.publisher(), signals=False, log=False, otel=True,
        otel_server=("127.0.0.1", 5672), retry_attempts=1, retry_delays=[0.05], max_messages=messages,
        **options,
    )  # fmt: skip
    with anyio.fail_after(20):
        await Consumer(provider, Stack(*layers, callback=callback), concurrency=2).run()


async def test_the_consumer_span_continues_the_producers_trace(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter
) -> None:
    inner: list[Any] = []

    async def work(message: Message) -> None:
        with trace.get_tracer("app").start_as_current_span("send e-mail") as span:
            inner.append(span.get_span_context())

    await broker.declare_queue(queue_name)
    publisher = TracingPublisher(broker.publisher(), server=("127.0.0.1", 5672))
    await publisher.publish(Message(b"x", message_id="m-1", correlation_id="c-1"), queue_name)
    await _run(broker, queue_name, work, 1)
    found = _by_name(spans)
    (send,) = found[f"send {queue_name}"]
    (process,) = found[f"process {queue_name}"]
    (own,) = found["send e-mail"]
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == send.context.trace_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert own.parent is not None and own.parent.span_id == process.context.span_id, (
        "the callback's spans nest"
    )
    attributes = dict(process.attributes or {})
    assert attributes["messaging.system"] == "rabbitmq"
    assert attributes["messaging.operation.name"] == "process"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == queue_name
    assert attributes["messaging.consumer.group.name"] == queue_name
    assert attributes["messaging.rabbitmq.destination.routing_key"] == queue_name
    assert isinstance(attributes["messaging.rabbitmq.message.delivery_tag"], int)
    assert attributes["messaging.message.id"] == "m-1"
    assert attributes["messaging.message.conversation_id"] == "c-1"
    assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", 5672)
    assert attributes["swarrow.outcome"] == "acked"
    assert dict(send.attributes or {})["messaging.operation.type"] == "send"


async def test_a_retried_message_is_one_trace_linked_to_its_first_attempt(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter
) -> None:
    calls: list[Message] = []

    async def flaky(message: Message) -> None:
        calls.append(message)
        if len(calls) == 1:
            raise RuntimeError("first time fails")

    await broker.declare_queue(queue_name)
    await TracingPublisher(broker.publisher()).publish(Message(b"x", message_id="m-2"), queue_name)
    await _run(broker, queue_name, flaky, 2)
    found = _by_name(spans)
    first, second = sorted(found[f"process {queue_name}"], key=lambda s: s.start_time or 0)
    (retry_send,) = found[f"send {queue_name}.retry.1"]
    assert dict(first.attributes or {})["swarrow.outcome"] == "retried"
    assert [e.name for e in first.events] == ["swarrow.retry"]
    assert dict(second.attributes or {})["swarrow.outcome"] == "acked"
    assert first.context.trace_id == retry_send.context.trace_id == second.context.trace_id
    assert retry_send.parent is not None and retry_send.parent.span_id == first.context.span_id
    assert second.parent is not None and second.parent.span_id == retry_send.context.span_id
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert FIRST_ATTEMPT_HEADER in calls[1].headers and "traceparent" in calls[1].headers


async def test_a_dead_lettered_message_fails_its_span_with_the_error_type(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter
) -> None:
    async def refuse(message: Message) -> None:
        raise PermanentError("no card")

    await broker.declare_queue(queue_name)
    await broker.publisher().publish(Message(b"x", message_id="m-3"), queue_name)
    await _run(broker, queue_name, refuse, 1)
    found = _by_name(spans)
    (process,) = found[f"process {queue_name}"]
    (dead_send,) = found[f"send {queue_name}.dead"]
    assert process.status.status_code is StatusCode.ERROR
    assert dict(process.attributes or {})["error.type"] == "swarrow.errors.PermanentError"
    assert dict(process.attributes or {})["swarrow.outcome"] == "dead_lettered"
    assert dead_send.parent is not None and dead_send.parent.span_id == process.context.span_id


async def test_a_publish_that_fails_marks_its_send_span(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter
) -> None:
    from swarrow import PublishError

    with pytest.raises(PublishError):
        await TracingPublisher(broker.publisher()).publish(Message(b"x"), f"{queue_name}.missing")
    (send,) = spans.get_finished_spans()
    assert send.status.status_code is StatusCode.ERROR
    assert dict(send.attributes or {})["error.type"] == "swarrow.errors.PublishError"


async def test_old_attribute_names_too_under_dual_emission(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http,messaging/dup")
    await broker.declare_queue(queue_name)
    await TracingPublisher(broker.publisher(), server=("127.0.0.1", 5672)).publish(Message(b"x"), queue_name)
    await _run(broker, queue_name, lambda m: None, 1)
    found = _by_name(spans)
    (send,) = found[f"send {queue_name}"]
    (process,) = found[f"process {queue_name}"]
    assert dict(send.attributes or {})["messaging.operation"] == "publish"
    assert dict(process.attributes or {})["messaging.operation"] == "process"
    assert dict(process.attributes or {})["net.peer.name"] == "127.0.0.1"


async def test_an_rpc_call_and_its_reply_are_one_trace(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter
) -> None:
    from swarrow import RpcClient

    await RetryTopology(queue_name, [0.05]).declare(broker)
    provider = broker.provider(queue_name, prefetch=10)
    layers = default_stack(
        provider=provider, publisher=broker.publisher(), signals=False, log=False, otel=True,
        retry_attempts=1, retry_delays=[0.05], max_messages=1,
    )  # fmt: skip
    consumer = Consumer(provider, Stack(*layers, callback=lambda m: "pong"), concurrency=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        async with RpcClient(broker, otel=True) as client:
            assert (await client.call(queue_name, b"ping", timeout=10)).text() == "pong"
    found = _by_name(spans)
    (request,) = found[f"send {queue_name}"]
    (process,) = found[f"process {queue_name}"]
    (reply,) = found["send"]  # the reply address is temporary: kept out of the span's name
    assert dict(reply.attributes or {})["messaging.destination.temporary"] is True
    assert request.context.trace_id == process.context.trace_id == reply.context.trace_id
    assert process.parent is not None and process.parent.span_id == request.context.span_id
    assert reply.parent is not None and reply.parent.span_id == process.context.span_id


@pytest.mark.parametrize(
    "headers",
    [
        # Not UTF-8 (RabbitMQ hands such a longstr over as bytes).
        {"traceparent": b"\xff\xfe", "tracestate": b"\xff", "baggage": b"k=\xff"},
        {FIRST_ATTEMPT_HEADER: b"\xff-\xfe-a-b"},
        # Out of range for W3C (a 160-bit trace id, 100 hex digits of flags, 100 kB): a link built from
        # them made the exporter's encoding fail for the whole batch (OverflowError: 512 spans lost).
        {FIRST_ATTEMPT_HEADER: "00-" + "1" * 40 + "-b7ad6b7169203331-01"},
        {FIRST_ATTEMPT_HEADER: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-" + "f" * 100},
        {FIRST_ATTEMPT_HEADER: "00-" + "f" * 50_000 + "-1-1", "traceparent": "00-" + "a" * 50_000},
    ],
    ids=["not-utf8", "first-not-utf8", "trace-id-too-long", "flags-too-long", "huge"],
)
async def test_malformed_trace_headers_neither_fail_the_message_nor_the_export(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter, headers: dict[str, Any],
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from swarrow.memory import MemoryBroker

    if isinstance(broker, MemoryBroker) and any(isinstance(v, bytes) for v in headers.values()):
        # RabbitMQ delivers a non-UTF-8 longstr as bytes; memory:// refuses bytes at the publish, loudly.
        await broker.declare_queue(queue_name)
        with pytest.raises(InvalidMessageError, match="bytes"):
            await broker.publisher().publish(Message(b"x", headers=headers), queue_name)
        return

    done: list[Message] = []

    async def work(message: Message) -> None:
        done.append(message)

    await broker.declare_queue(queue_name)
    message = Message(b"x", message_id="m-bad", headers=headers)
    if isinstance(broker, MemoryBroker):
        await broker.publisher().publish(message, queue_name)
    else:
        await _publish_as_foreign_producer(request.getfixturevalue("amqp_url"), queue_name, message)
    await _run(broker, queue_name, work, 1)
    assert len(done) == 1, "the callback ran once"
    (process,) = _by_name(spans)[f"process {queue_name}"]
    assert dict(process.attributes or {})["swarrow.outcome"] == "acked"
    assert list(process.links) == []
    encode_spans(spans.get_finished_spans())  # what the OTLP exporter does with the batch
    dead = await broker.inspect_queue(f"{queue_name}.dead")
    assert dead is None or dead.message_count == 0


async def _publish_as_foreign_producer(url: str, queue: str, message: Message) -> None:
    """Publish what swarrow's own publisher refuses (bytes header values), as another client may."""
    import aiormq
    from pamqp.commands import Basic

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        headers = {k: _RawString(v) if isinstance(v, bytes) else v for k, v in message.headers.items()}
        properties = Basic.Properties(message_id=message.message_id, headers=headers)
        await channel.basic_publish(message.body, routing_key=queue, properties=properties)
    finally:
        await connection.close()


class _RawString(str):
    """A header string whose bytes on the wire are not UTF-8 (pamqp hands such a string over as bytes)."""

    def __new__(cls, raw: bytes) -> _RawString:
        value = super().__new__(cls, raw.decode("latin-1"))
        value.raw = raw
        return value

    raw: bytes

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


@pytest.mark.parametrize("retried", [True, False], ids=["retried", "dead-lettered"])
async def test_a_url_password_in_an_error_never_reaches_the_spans(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter, retried: bool
) -> None:
    # The logs mask it (whoever logged it); the spans go to a tracing backend: the same rule.
    secret = "s3cr/#?@%:t"

    async def fail(message: Message) -> None:
        error = RuntimeError if retried and len(spans.get_finished_spans()) < 2 else PermanentError
        raise error(f"cannot reach postgresql://app:{secret}@db:5432/orders")

    await broker.declare_queue(queue_name)
    await broker.publisher().publish(Message(b"x", message_id="m-pw"), queue_name)
    await _run(broker, queue_name, fail, 2 if retried else 1)
    finished = spans.get_finished_spans()
    assert any(s.status.status_code is StatusCode.ERROR for s in finished)
    texts = []
    for span in finished:
        texts += [span.status.description or "", repr(dict(span.attributes or {}))]
        texts += [repr(dict(event.attributes or {})) for event in span.events]
    for text in texts:
        assert "s3cr" not in text, text
    # Masked, not dropped: the error (a retry event's message, or the failed span's status) still names it.
    assert any("postgresql://app:***@db" in text for text in texts), texts


async def test_a_span_never_reports_the_previous_messages_error(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter
) -> None:
    from swarrow import RetryLater

    seen: list[str] = []

    async def work(message: Message) -> None:
        seen.append(message.message_id or "")
        if seen.count(message.message_id or "") == 1:
            if message.message_id == "a":
                raise RuntimeError("a failed")
            raise RetryLater(0.05, "b is not ready")

    await broker.declare_queue(queue_name)
    for message_id in ("a", "b"):
        await broker.publisher().publish(Message(b"x", message_id=message_id), queue_name)
    await RetryTopology(queue_name, [0.05]).declare(broker)
    provider = broker.provider(queue_name, prefetch=10)
    layers = default_stack(
        provider=provider, publisher=broker.publisher(), signals=False, log=False, otel=True,
        retry_attempts=1, retry_delays=[0.05], max_messages=4,
    )  # fmt: skip
    with anyio.fail_after(20):  # one worker: b follows a in the same task
        await Consumer(provider, Stack(*layers, callback=work), concurrency=1).run()
    process = [s for s in spans.get_finished_spans() if s.name == f"process {queue_name}"]
    first_b = next(s for s in process if dict(s.attributes or {})["messaging.message.id"] == "b")
    assert dict(first_b.attributes or {})["swarrow.outcome"] == "retried"
    for event in first_b.events:
        assert "a failed" not in str(dict(event.attributes or {})), "a's error on b's span"


async def test_an_acked_message_after_a_failed_one_in_the_same_worker_is_acked_on_its_span(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter
) -> None:
    # Without the metrics and logger layers nothing else resets the outcome between messages: b's span
    # said "dead_lettered", status ERROR. The retry test failed so when its second attempt happened to
    # land on the worker that ran the first ("retried" instead of "acked"): the race under load.
    async def work(message: Message) -> None:
        if message.message_id == "a":
            raise PermanentError("a is refused")

    await broker.declare_queue(queue_name)
    for message_id in ("a", "b"):
        await broker.publisher().publish(Message(b"x", message_id=message_id), queue_name)
    await RetryTopology(queue_name, [0.05]).declare(broker)
    provider = broker.provider(queue_name, prefetch=10)
    layers = default_stack(
        provider=provider, publisher=broker.publisher(), signals=False, log=False, metrics=False, otel=True,
        retry_attempts=1, retry_delays=[0.05], max_messages=2,
    )  # fmt: skip
    with anyio.fail_after(20):  # one worker: b follows a in the same task
        await Consumer(provider, Stack(*layers, callback=work), concurrency=1).run()
    by_id = {
        dict(s.attributes or {})["messaging.message.id"]: s
        for s in spans.get_finished_spans()
        if s.name == f"process {queue_name}"
    }
    assert dict(by_id["a"].attributes or {})["swarrow.outcome"] == "dead_lettered"
    assert dict(by_id["b"].attributes or {})["swarrow.outcome"] == "acked"
    assert by_id["b"].status.status_code is StatusCode.UNSET


async def test_a_follow_up_message_published_by_the_callback_is_not_linked_as_a_retry(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter
) -> None:
    # The first-attempt link is for copies of the message being processed (retry, dead letter); a new
    # message the callback publishes is the child of its span, and its own first attempt is its own.
    follow_ups = f"{queue_name}.next"
    await broker.declare_queue(follow_ups)
    own = TracingPublisher(broker.publisher())

    async def work(message: Message) -> None:
        await own.publish(Message(b"next", message_id="follow-up"), follow_ups)

    await broker.declare_queue(queue_name)
    await broker.publisher().publish(Message(b"x", message_id="m-parent"), queue_name)
    await _run(broker, queue_name, work, 1)
    try:
        got = await broker.get(follow_ups) if hasattr(broker, "get") else None
        if got is None:
            provider = broker.provider(follow_ups, prefetch=1)
            await provider.start()
            with anyio.fail_after(10):
                got = await provider.receive()
            await provider.close()
        assert got is not None
        assert FIRST_ATTEMPT_HEADER not in got.headers
        assert "traceparent" in got.headers
    finally:
        await broker.delete_queue(follow_ups)


async def test_a_replayed_dead_letter_goes_on_in_the_messages_trace(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter
) -> None:
    from swarrow.dead_letters import replay_dead_letters

    attempts: list[Message] = []

    async def refuse_once(message: Message) -> None:
        attempts.append(message)
        if len(attempts) == 1:
            raise PermanentError("no card yet")

    await broker.declare_queue(queue_name)
    await broker.publisher().publish(Message(b"x", message_id="m-replay"), queue_name)
    await _run(broker, queue_name, refuse_once, 1)
    result = await replay_dead_letters(broker, f"{queue_name}.dead", otel=True)
    assert result.replayed == 1
    await _run(broker, queue_name, refuse_once, 1)
    found = _by_name(spans)
    first, again = sorted(found[f"process {queue_name}"], key=lambda s: s.start_time or 0)
    (dead,) = found[f"send {queue_name}.dead"]
    (replay,) = found[f"send {queue_name}"]
    assert replay.kind is SpanKind.PRODUCER
    assert (
        first.context.trace_id == dead.context.trace_id == replay.context.trace_id == again.context.trace_id
    )
    assert replay.parent is not None and replay.parent.span_id == dead.context.span_id
    assert again.parent is not None and again.parent.span_id == replay.context.span_id
    assert [link.context.span_id for link in again.links] == [first.context.span_id]


async def test_without_an_sdk_the_layer_passes_messages_through_untouched(
    broker: Broker, queue_name: str, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    import opentelemetry.trace

    from swarrow import otel

    monkeypatch.setattr(opentelemetry.trace, "_TRACER_PROVIDER", None)  # as before any SDK is set up
    assert not otel.recording()
    done: list[Message] = []

    async def work(message: Message) -> None:
        done.append(message)

    await broker.declare_queue(queue_name)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await broker.publisher().publish(Message(b"x", headers={"traceparent": traceparent}), queue_name)
    await _run(broker, queue_name, work, 1)
    assert [m.headers["traceparent"] for m in done] == [traceparent]
    assert spans.get_finished_spans() == ()
