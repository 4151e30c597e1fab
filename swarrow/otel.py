"""OpenTelemetry for swarrow: messaging spans, trace context in the headers, and the CLI's SDK set-up.

Follows OpenTelemetry's messaging semantic conventions for RabbitMQ as shipped in
opentelemetry-semantic-conventions 0.66b2 (schema https://opentelemetry.io/schemas/1.44.0): spans
`send {destination}` (PRODUCER) and `process {queue}` (CONSUMER) with `messaging.system=rabbitmq`,
`messaging.operation.name` / `.type`, `messaging.destination.name`,
`messaging.rabbitmq.destination.routing_key`, `messaging.rabbitmq.message.delivery_tag`,
`messaging.message.id`, `messaging.message.conversation_id`, `messaging.consumer.group.name`,
`server.address` / `server.port` and `error.type`. `OTEL_SEMCONV_STABILITY_OPT_IN=messaging/dup`
adds the older names too (`messaging.operation`, `net.peer.name`, `net.peer.port`) for
dashboards built on them. Only the API is used here; `configure_sdk` is for the CLI (an application).
Needs `pip install swarrow[otel]`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from contextvars import ContextVar
from typing import IO, Any, Final

from swarrow.errors import ConfigurationError
from swarrow.message import Message
from swarrow.publisher import Publisher
from swarrow.urls import mask_text

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, Tracer

    _NO_OP_PROVIDERS: Final = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
except ImportError:  # pragma: no cover - without the [otel] extra: require_otel() says what to install
    trace = None  # type: ignore[assignment]

__all__ = [
    "FIRST_ATTEMPT_HEADER",
    "SYSTEM",
    "SpanKind",
    "Status",
    "StatusCode",
    "TracingPublisher",
    "configure_sdk",
    "dual_emission",
    "require_otel",
    "shutdown_sdk",
    "tracer",
]

logger = logging.getLogger(__name__)

SYSTEM: Final = "rabbitmq"
FIRST_ATTEMPT_HEADER: Final = "x-swarrow-first-attempt"
"""The `traceparent` of a message's first `process` span, on its retry copies: later attempts link to it."""
_VERSION: Final = "0.1.0"
# Reply addresses: RabbitMQ's direct reply-to, server-named queues, the in-memory RPC client's queues.
_TEMPORARY_PREFIXES: Final = ("amq.rabbitmq.reply-to", "amq.gen-", "swarrow.reply.")

# The message being processed: its id and its first attempt (a traceparent, or this attempt's span
# context, formatted only if a copy is published), for the copies of it its layers publish.
first_attempt: ContextVar[tuple[str | None, str | SpanContext] | None] = ContextVar(
    "swarrow_first_attempt", default=None
)


def require_otel() -> None:
    """Raise `ConfigurationError` with the install line when the OpenTelemetry API is missing."""
    if trace is None:
        raise ConfigurationError("tracing needs OpenTelemetry: pip install 'swarrow[otel]'")


def tracer() -> Tracer:
    """swarrow's tracer from the global tracer provider (a no-op one until an SDK is set up)."""
    require_otel()
    return trace.get_tracer("swarrow", _VERSION, schema_url="https://opentelemetry.io/schemas/1.44.0")


def recording() -> bool:
    """False while no tracer provider is set up (the API's no-op one): nothing would be recorded."""
    return not isinstance(trace.get_tracer_provider(), _NO_OP_PROVIDERS)


def dual_emission() -> bool:
    """True when OTEL_SEMCONV_STABILITY_OPT_IN asks for the old messaging attribute names too."""
    values = {v.strip() for v in os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")}
    return "messaging/dup" in values


def server_attributes(server: tuple[str, int] | None) -> dict[str, Any]:
    """`server.address` / `server.port` (and the old `net.peer.*` under dual emission)."""
    if server is None:
        return {}
    host, port = server
    attributes: dict[str, Any] = {"server.address": host, "server.port": port}
    if dual_emission():
        attributes.update({"net.peer.name": host, "net.peer.port": port})
    return attributes


def message_attributes(message: Message) -> dict[str, Any]:
    """The message's own attributes: id and conversation (correlation) id, when it has them."""
    attributes: dict[str, Any] = {}
    if message.message_id is not None:
        attributes["messaging.message.id"] = message.message_id
    if message.correlation_id is not None:
        attributes["messaging.message.conversation_id"] = message.correlation_id
    return attributes


def traceparent_of(span_context: SpanContext) -> str:
    """A span context in W3C `traceparent` form."""
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


_MAX_CONTEXT_HEADER: Final = 8192
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def link_from_traceparent(value: object) -> Link | None:
    """A link to the span a W3C `traceparent` string names, or None when it is not a valid one.

    Strict (55 characters, lowercase hex, non-zero ids, version not ff): a trace id wider than 128
    bits made the OTLP exporter fail the whole batch the span was in.
    """
    if not isinstance(value, str) or len(value) != 55:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None or match[1] == "ff":
        return None
    trace_id, span_id, flags = int(match[2], 16), int(match[3], 16), int(match[4], 16)
    if not trace_id or not span_id:
        return None
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(flags))
    return Link(context, {"swarrow.link": "first_attempt"})


class TracingPublisher:
    """Wraps a publisher: each publish is a PRODUCER span `send {destination}`, its context in the headers.

    Retry, dead-letter and reply copies, RPC requests, `swarrow publish --otel` and your own
    publishes (wrap `broker.publisher()`) go through it when tracing is on. A copy of the message
    being processed (same message id) also carries that message's first-attempt span
    (`x-swarrow-first-attempt`), so a retried attempt links to the first one and a message's whole
    life is one trace.
    """

    def __init__(self, inner: Publisher, *, server: tuple[str, int] | None = None) -> None:
        require_otel()
        self.inner = inner
        self.server = server
        self._tracer = tracer()

    async def publish(
        self, message: Message, routing_key: str, exchange: str = "", *, mandatory: bool = True
    ) -> None:
        """Publish inside a `send` span; the span fails (`error.type`) when the publish raises."""
        destination = exchange or routing_key
        temporary = not exchange and routing_key.startswith(_TEMPORARY_PREFIXES)
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": destination,
            "messaging.rabbitmq.destination.routing_key": routing_key,
            **message_attributes(message),
            **server_attributes(self.server),
        }
        if temporary:
            # A reply address (direct reply-to, a generated queue): one per caller, so not in the span's
            # name, which must stay low-cardinality.
            attributes["messaging.destination.temporary"] = True
            attributes["messaging.destination.anonymous"] = True
        if dual_emission():
            attributes["messaging.operation"] = "publish"
        name = "send" if temporary else f"send {destination or '(default)'}"
        with self._tracer.start_as_current_span(
            name,
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            headers: dict[str, Any] = dict(message.headers)
            propagate.inject(headers)
            current = first_attempt.get()
            # Only on copies of the message being processed (same id: retry, dead letter); a new message
            # the callback publishes is this span's child, with a first attempt of its own.
            if current is not None and current[0] == message.message_id:
                first = current[1]
                if isinstance(first, str):
                    headers[FIRST_ATTEMPT_HEADER] = first
                elif first.is_valid:
                    headers[FIRST_ATTEMPT_HEADER] = traceparent_of(first)
            try:
                await self.inner.publish(
                    message.replace(headers=headers), routing_key, exchange, mandatory=mandatory
                )
            except Exception as exc:
                span.set_attribute("error.type", _error_type(exc))
                span.set_status(Status(StatusCode.ERROR, masked(str(exc))))
                raise

    async def close(self) -> None:
        """Close the wrapped publisher."""
        await self.inner.close()


def start_send_spans(copies: list[tuple[Message, str]]) -> tuple[list[tuple[Message, str]], list[Any]]:
    """Open a `send {queue}` span per (message, queue) published as one batch, each in the trace its
    message's headers carry; return the messages with their span's context injected, and the spans."""
    tracer_ = tracer()
    out: list[tuple[Message, str]] = []
    spans: list[Any] = []
    for message, queue in copies:
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": queue,
            "messaging.rabbitmq.destination.routing_key": queue,
            **message_attributes(message),
        }
        span = tracer_.start_span(
            f"send {queue}", context=extract(message.headers), kind=SpanKind.PRODUCER, attributes=attributes
        )
        headers: dict[str, Any] = dict(message.headers)
        propagate.inject(headers, context=trace.set_span_in_context(span))
        out.append((message.replace(headers=headers), queue))
        spans.append(span)
    return out, spans


def end_send_spans(spans: list[Any], outcomes: list[Exception | None], error: Exception | None) -> None:
    """End what `start_send_spans` opened: failed (`error.type`) where the batch or its copy failed."""
    for n, span in enumerate(spans):
        failure = error if error is not None else (outcomes[n] if n < len(outcomes) else None)
        if failure is not None:
            span.set_attribute("error.type", _error_type(failure))
            span.set_status(Status(StatusCode.ERROR, masked(str(failure))))
        span.end()


def masked(text: str) -> str:
    """An error message fit for a span: URL passwords masked (as in the logs), cut to 200 characters."""
    return mask_text(text)[:200]


def record_failure(span: Any, exc: BaseException) -> None:
    """Mark `span` failed by `exc` with its `exception` event, URL passwords masked in message and trace."""
    import traceback

    span.set_attribute("error.type", _error_type(exc))
    span.set_status(Status(StatusCode.ERROR, masked(str(exc))))
    span.add_event(
        "exception",
        {
            "exception.type": _error_type(exc),
            "exception.message": mask_text(str(exc)),
            "exception.stacktrace": mask_text("".join(traceback.format_exception(exc))),
        },
    )


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def extract(headers: Mapping[str, Any]) -> Any:
    """The trace context (W3C traceparent, tracestate, baggage) a message's headers carry.

    A header that is not valid text (RabbitMQ hands a non-UTF-8 string over as bytes) is left out and
    a propagator that fails on odd input gives no context: a bad header never fails the message.
    """
    carrier: dict[str, str] = {}
    for key, value in headers.items():
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError:
                continue
        # Longer than W3C allows (baggage and tracestate: 8192): left out here, or the SDK would log
        # the whole header (up to the 128 kB AMQP allows) for each such message.
        if isinstance(value, str) and len(value) <= _MAX_CONTEXT_HEADER:
            carrier[key] = value
    try:
        return propagate.extract(carrier)
    except Exception as exc:
        logger.debug("trace context not extracted from the headers: %r", exc)
        return None


def configure_sdk(*, console: IO[str] | None = None) -> Any:
    """Set up the SDK from the standard `OTEL_*` variables unless the application already did; return it.

    Used by the CLI (`--otel`). Honours OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (the resource)
    and OTEL_TRACES_EXPORTER (`otlp`, the default, over HTTP to OTEL_EXPORTER_OTLP_ENDPOINT;
    `console`; `none`; a comma-separated list). Under `opentelemetry-instrument`, or when a tracer
    provider is already installed, it changes nothing and returns None. Call `.shutdown()` on
    what it returns at exit: that flushes the spans. `console`: where the console exporter
    writes (stdout unless given; `swarrow call` keeps stdout for the reply).
    """
    require_otel()
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError:
        raise ConfigurationError("--otel needs the OpenTelemetry SDK: pip install 'swarrow[otel]'") from None
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "swarrow")})
    )
    names = [
        n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()
    ]
    for name in names:
        if name == "none":
            continue
        if name == "console":
            exporter = ConsoleSpanExporter() if console is None else ConsoleSpanExporter(out=console)
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                raise ConfigurationError(
                    "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: pip install 'swarrow[otel]'"
                ) from None
            otlp = OTLPSpanExporter(endpoint=_otlp_traces_endpoint())
            provider.add_span_processor(BatchSpanProcessor(otlp))
        else:
            raise ConfigurationError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)"
            )
    trace.set_tracer_provider(provider)
    return provider


def _otlp_traces_endpoint() -> str | None:
    """The OTLP traces endpoint from the environment, its credentials percent-encoded; None: the SDK's.

    A password holding `/ ? #` unencoded was cut there by the HTTP client, which then logged
    "Failed to parse: 'user:<start of the password>'" at every export.
    """
    from swarrow.urls import encode_credentials

    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint:
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if not base:
            return None
        endpoint = base.removesuffix("/") + "/v1/traces"  # as the SDK appends it
    encoded = encode_credentials(endpoint)
    return None if encoded == endpoint else encoded


FLUSH_TIMEOUT: Final = 5.0
"""Seconds a stop waits for the last spans to be exported unless OTEL_BSP_EXPORT_TIMEOUT (ms) says."""


def shutdown_sdk(sdk: Any) -> None:
    """Flush and shut down what `configure_sdk` returned, waiting at most the flush budget.

    An OTLP endpoint that is down or never answers would otherwise hold the exit 10 s (the request's
    timeout) per batch left, 30 s and more: the spans still queued then are given up, with a warning.
    """
    if sdk is None:
        return
    try:
        budget = float(os.environ["OTEL_BSP_EXPORT_TIMEOUT"]) / 1000
    except (KeyError, ValueError):
        budget = FLUSH_TIMEOUT
    # The SDK's shutdown takes no timeout (its batch processor waits 30 s): run it aside and stop
    # waiting at the budget; its thread is a daemon, the exporter's threads too.
    done = threading.Thread(target=sdk.shutdown, name="swarrow-otel-shutdown", daemon=True)
    done.start()
    done.join(max(0.0, budget))
    if done.is_alive():
        logger.warning(
            "tracing: spans not exported within %gs at exit were dropped (is the OTLP endpoint up?)",
            budget,
        )
