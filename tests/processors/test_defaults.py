"""default_stack: the DESIGN order, disabled layers left out, clear errors for options that cannot work."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from processors.ack import AckProcessor
from processors.defaults import default_stack
from processors.delivery_limit import DeliveryLimitProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.logger import LoggerProcessor
from processors.max_messages import MaxMessagesProcessor
from processors.max_runtime import MaxRuntimeProcessor
from processors.memory_limit import MemoryLimitProcessor
from processors.metrics import MetricsProcessor
from processors.reply import ReplyProcessor
from processors.retry import RetryProcessor
from processors.signal_handler import SignalHandlerProcessor
from processors.stop_when_idle import StopWhenIdleProcessor
from processors.time_limit import TimeLimitProcessor
from swarrow import ConfigurationError, Consumer, Layer, MemoryBroker, Message, Stack
from swarrow.topology import RetryTopology


@pytest.fixture
def broker() -> MemoryBroker:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    return broker


def _factories(layers: list[Layer[Any]]) -> list[object]:
    return [layer.factory for layer in layers]


def test_full_options_give_the_design_order(broker: MemoryBroker) -> None:
    registry = CollectorRegistry()
    provider = broker.provider("q")
    layers = default_stack(
        provider=provider,
        publisher=broker.publisher(),
        max_runtime=60,
        max_messages=100,
        memory_limit=512,
        stop_when_idle=5,
        metrics=True,
        registry=registry,
        delivery_limit=5,
        time_limit=30,
    )
    assert _factories(layers) == [
        SignalHandlerProcessor,
        MaxRuntimeProcessor,
        MaxMessagesProcessor,
        MemoryLimitProcessor,
        StopWhenIdleProcessor,
        MetricsProcessor,
        LoggerProcessor,
        ExceptionCatcherProcessor,
        ReplyProcessor,
        AckProcessor,
        DeliveryLimitProcessor,
        RetryProcessor,
        TimeLimitProcessor,
    ]
    options = {layer.factory: layer.kwargs for layer in layers}
    assert options[MaxMessagesProcessor] == {"limit": 100}
    assert options[MaxRuntimeProcessor] == {"seconds": 60}
    assert options[MemoryLimitProcessor] == {"megabytes": 512}
    assert options[MetricsProcessor] == {"registry": registry, "provider": provider, "address": None}
    assert options[DeliveryLimitProcessor]["max_deliveries"] == 5
    assert options[TimeLimitProcessor] == {"seconds": 30}


def test_a_metrics_address_adds_the_metrics_layer_serving_there(broker: MemoryBroker) -> None:
    provider = broker.provider("q")
    layers = default_stack(provider=provider, retry=False, metrics_address=("127.0.0.1", 9100))
    (metrics,) = [layer for layer in layers if layer.factory is MetricsProcessor]
    assert metrics.kwargs == {"registry": None, "provider": provider, "address": ("127.0.0.1", 9100)}


def test_defaults_leave_out_disabled_layers(broker: MemoryBroker) -> None:
    layers = default_stack(provider=broker.provider("q"), publisher=broker.publisher())
    assert _factories(layers) == [
        SignalHandlerProcessor,
        LoggerProcessor,
        ExceptionCatcherProcessor,
        ReplyProcessor,
        AckProcessor,
        RetryProcessor,
    ]


def test_everything_off_leaves_only_ack(broker: MemoryBroker) -> None:
    layers = default_stack(
        provider=broker.provider("q"),
        signals=False,
        log=False,
        catch=False,
        retry=False,
        requeue_on_error=True,
    )
    assert _factories(layers) == [AckProcessor]
    assert layers[0].kwargs["requeue_on_error"] is True


def test_retry_options_are_passed_on(broker: MemoryBroker) -> None:
    publisher = broker.publisher()
    layers = default_stack(
        provider=broker.provider("q"),
        publisher=publisher,
        retry_attempts=2,
        retry_delays=[1, 5],
        quorum=True,
        log_body=True,
        retry_topology="swarrot",
    )
    options = {layer.factory: layer.kwargs for layer in layers}
    assert options[RetryProcessor] == {
        "publisher": publisher,
        "attempts": 2,
        "delays": [1, 5],
        "quorum": True,
        "retry_topology": "swarrot",
    }
    assert options[LoggerProcessor] == {"log_body": True}


def test_retry_without_a_publisher_is_a_configuration_error(broker: MemoryBroker) -> None:
    with pytest.raises(ConfigurationError, match="retry republish messages and need a publisher"):
        default_stack(provider=broker.provider("q"))
    with pytest.raises(ConfigurationError, match=r"delivery_limit .*need a publisher"):
        default_stack(provider=broker.provider("q"), retry=False, delivery_limit=3)
    assert default_stack(provider=broker.provider("q"), retry=False)  # fine without retry


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("max_messages", 0, "max_messages must be an integer >= 1, got 0"),
        ("max_messages", 2.5, "max_messages"),
        ("max_runtime", -1, "max_runtime must be a finite number of seconds > 0, got -1"),
        ("memory_limit", 0, "memory_limit must be a finite number of megabytes > 0"),
        ("delivery_limit", True, "delivery_limit"),
        ("time_limit", float("inf"), "time_limit"),
        ("stop_when_idle", float("nan"), "stop_when_idle"),
        ("retry_attempts", 0, "retry_attempts"),
        ("retry_delays", [1, 2], r"one delay per retry attempt \(3\)"),
        ("retry_delays", [1, 2, 0], "retry_delays"),
    ],
)
def test_bad_numbers_are_configuration_errors(
    broker: MemoryBroker, option: str, value: Any, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        default_stack(provider=broker.provider("q"), publisher=broker.publisher(), **{option: value})


@pytest.mark.anyio
async def test_the_default_stack_consumes_retries_and_stops_at_max_messages(broker: MemoryBroker) -> None:
    delays = (0.05, 0.05, 0.05)
    await RetryTopology("q", delays).declare(broker)
    for i in range(3):
        broker.publish_nowait(Message(str(i).encode(), message_id=str(i)), "q")
    provider = broker.provider("q")
    calls: list[bytes] = []

    async def handle(message: Message) -> None:
        calls.append(message.body)
        if message.body == b"1" and calls.count(b"1") == 1:
            raise RuntimeError("fails once, then the broker-delayed retry succeeds")

    layers = default_stack(
        provider=provider,
        publisher=broker.publisher(),
        max_messages=4,  # three messages plus the failed first try of "1" (retried = finished)
        metrics=True,
        registry=CollectorRegistry(),
        retry_delays=delays,
    )
    with anyio.fail_after(5):
        reason = await Consumer(provider, Stack(*layers, callback=handle)).run()
    assert reason.code == "max_messages"
    assert sorted(calls) == [b"0", b"1", b"1", b"2"]
    assert len(provider.acked) == 4
    assert broker.message_count("q.dead") == 0


class _Tag:
    """A processor of one's own: records that it saw the message, then passes it on."""

    def __init__(self, inner: Any, /, *, name: str = "tag") -> None:
        self.inner, self.name = inner, name

    async def __call__(self, message: Message, /) -> bool:
        seen.append(self.name)
        return bool(await self.inner(message))


seen: list[str] = []


def test_custom_layers_go_innermost_around_the_callback_in_order(broker: MemoryBroker) -> None:
    layers = default_stack(
        provider=broker.provider("q"), publisher=broker.publisher(), time_limit=5,
        layers=[_Tag, Layer(_Tag, name="second")],
    )  # fmt: skip
    assert _factories(layers)[-3:] == [TimeLimitProcessor, _Tag, _Tag]
    assert layers[-1].kwargs == {"name": "second"}


@pytest.mark.parametrize("bad", [42, lambda inner, required: inner])
def test_a_custom_layer_that_cannot_wrap_the_inner_processor_alone_is_refused(
    broker: MemoryBroker, bad: Any
) -> None:
    with pytest.raises(ConfigurationError, match="layer"):
        default_stack(provider=broker.provider("q"), retry=False, layers=[bad])
