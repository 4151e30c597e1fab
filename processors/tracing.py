"""A CONSUMER span per message: the producer's trace goes on through the worker, its retries and its reply."""

from __future__ import annotations

from typing import Any

from swarrow import otel
from swarrow.message import Message
from swarrow.outcome import (
    DEAD_LETTERED,
    FAILED,
    REJECTED,
    RETRIED,
    get_error,
    get_outcome,
    reset_error,
    reset_outcome,
)
from swarrow.processor import Processor

__all__ = ["TracingProcessor"]

_FAILED = frozenset({DEAD_LETTERED, FAILED, REJECTED})


class TracingProcessor:
    """Open `process {queue}` around the inner layers, in the trace the message's headers carry.

    The W3C context (`traceparent`, `tracestate`, baggage) in the headers is the span's parent, so
    the callback's own spans nest under it and a retry copy published inside continues the trace;
    a retried attempt also links to the message's first attempt (`x-swarrow-first-attempt`). The
    outcome the settling layers recorded becomes `swarrow.outcome`; a failure for good sets
    `error.type` and the span's status to ERROR, a retry adds a `swarrow.retry` event. Place it
    inside the signal handler and outside metrics (the default stack does, with `otel=True`).
    `server` fills `server.address` / `server.port`.
    """

    def __init__(self, inner: Processor, /, *, server: tuple[str, int] | None = None) -> None:
        otel.require_otel()
        self.inner = inner
        self.server = server
        self._tracer = otel.tracer()
        self._server_attributes = otel.server_attributes(server)
        self._dual = otel.dual_emission()

    async def __call__(self, message: Message, /) -> bool:
        if not otel.recording():
            # No SDK set up (the API's no-op tracer): no span would be recorded; the copies keep the
            # message's own trace headers. About 11 µs a message saved.
            return await self.inner(message)
        headers = message.headers
        parent = otel.extract(headers) if headers else None
        first = headers.get(otel.FIRST_ATTEMPT_HEADER) if headers else None
        link = otel.link_from_traceparent(first) if first is not None else None
        queue = message.queue
        attributes: dict[str, Any] = {
            "messaging.system": otel.SYSTEM,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            "messaging.consumer.group.name": queue,
            "messaging.rabbitmq.destination.routing_key": message.routing_key,
            **otel.message_attributes(message),
            **self._server_attributes,
        }
        if message.delivery_tag is not None:
            attributes["messaging.rabbitmq.message.delivery_tag"] = message.delivery_tag
        if self._dual:
            attributes["messaging.operation"] = "process"
        with self._tracer.start_as_current_span(
            f"process {queue}",
            context=parent,
            kind=otel.SpanKind.CONSUMER,
            attributes=attributes,
            links=[link] if link is not None else None,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            # A valid first-attempt header goes on to the copies; otherwise this attempt is the first.
            token = otel.first_attempt.set(
                (
                    message.message_id,
                    first if isinstance(first, str) and link is not None else span.get_span_context(),
                )
            )
            escaped = False
            # The settling layers record this message's outcome and error, never the previous one's:
            # without metrics or logger layers (which reset them too) nothing else would.
            reset_outcome()
            reset_error()
            try:
                keep_going = await self.inner(message)
            except Exception as exc:
                escaped = True
                otel.record_failure(span, exc)
                raise
            finally:
                otel.first_attempt.reset(token)
                outcome = get_outcome()
                if outcome is not None:
                    span.set_attribute("swarrow.outcome", outcome)
                error = get_error()
                if outcome in _FAILED and (error is not None or not escaped):
                    error_type = error[0] if error else "swarrow.Failed"
                    span.set_attribute("error.type", error_type)
                    reason = otel.masked(error[1]) if error else outcome
                    span.set_status(otel.Status(otel.StatusCode.ERROR, reason))
                elif outcome == RETRIED and error is not None:
                    span.add_event(
                        "swarrow.retry", {"error.type": error[0], "error.message": otel.masked(error[1])}
                    )
            return keep_going
