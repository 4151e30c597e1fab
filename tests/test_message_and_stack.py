"""Message as pure data, the stack's order and lifespans, URL masking."""

from __future__ import annotations

import dataclasses

import anyio
import pytest

from swarrow import Layer, Message, Processor, Stack
from swarrow.callback import CallbackProcessor
from swarrow.urls import mask_url

pytestmark = pytest.mark.anyio


def test_message_is_frozen_and_slotted() -> None:
    message = Message(b"x", message_id="1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.body = b"y"  # type: ignore[misc]
    assert not hasattr(message, "__dict__")


def test_for_publishing_drops_delivery_fields_and_merges_headers() -> None:
    delivered = Message(
        b"x",
        headers={"a": 1},
        delivery_tag=7,
        consumer_tag="c",
        redelivered=True,
        exchange="e",
        routing_key="r",
        queue="q",
        delivery_mode=2,
    )
    copy = delivered.for_publishing(b=2)
    assert copy.headers == {"a": 1, "b": 2}
    assert (copy.delivery_tag, copy.consumer_tag, copy.redelivered, copy.queue) == (None, None, False, "")
    assert copy.persistent
    assert delivered.headers == {"a": 1}


class Tag:
    def __init__(self, inner: Processor, /, *, name: str, trail: list[str]) -> None:
        self.inner, self.name, self.trail = inner, name, trail

    async def __call__(self, message: Message, /) -> bool:
        self.trail.append(self.name)
        return await self.inner(message)


async def test_first_layer_is_outermost() -> None:
    trail: list[str] = []

    async def handle(message: Message) -> None:
        trail.append("callback")

    built = Stack(
        Layer(Tag, name="outer", trail=trail), Layer(Tag, name="inner", trail=trail), callback=handle
    ).build()
    assert await built.processor(Message()) is True
    assert trail == ["outer", "inner", "callback"]
    assert isinstance(built.processors[-1], CallbackProcessor)
    assert len(built.processors) == 3


async def test_plain_callables_are_layers_too_and_false_stops() -> None:
    async def handle(message: Message) -> bool:
        return False

    built = Stack(lambda inner: inner, callback=handle).build()
    assert await built.processor(Message()) is False


def test_layer_repr_names_the_class_and_options() -> None:
    assert repr(Layer(Tag, name="x", trail=[])) == "Layer(Tag, name='x', trail=[])"


def test_bad_layers_are_refused() -> None:
    with pytest.raises(TypeError, match="stack layer"):
        Stack(42, callback=lambda m: None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:secret@127.0.0.1:5672/vh", "amqp://guest:***@127.0.0.1:5672/vh"),
        ("amqps://u:p%40ss@host/", "amqps://u:***@host/"),
        ("amqp://127.0.0.1/", "amqp://127.0.0.1/"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked


async def test_current_control_is_the_runs_inside_the_stack_lifespan_and_none_outside() -> None:
    from swarrow import ConsumerControl, current_control

    seen: list[object] = []

    async def handle(message: Message) -> None:
        seen.append(current_control())

    built = Stack(callback=handle).build()
    control = ConsumerControl(queue_name="q", concurrency=1)
    assert current_control() is None
    async with built.lifespan(control):
        await built.processor(Message(b"x"))
        async with anyio.create_task_group() as tg:  # tasks started in the run (the workers) see it too
            tg.start_soon(built.processor, Message(b"y"))
    assert seen == [control, control]
    assert current_control() is None
