"""A callable that cannot take one message is refused at start, naming its signature."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from swarrow import CallbackProcessor, Message
from swarrow.callback import check_callback
from swarrow.runner import run


def two(a: Any, b: Any) -> None: ...


def none() -> None: ...


def keyword_only(*, message: Message) -> None: ...


async def two_async(a: Any, b: Any) -> None: ...


class Handler:
    def __call__(self, message: Message, extra: int = 0) -> None: ...


class Broken:
    def __call__(self, message: Message, required: int) -> None: ...


@pytest.mark.parametrize("callback", [two, none, keyword_only, two_async, Broken()])
def test_a_callable_that_cannot_take_one_message_is_refused(callback: Any) -> None:
    with pytest.raises(TypeError, match=r"cannot be called with one message .*one positional argument"):
        CallbackProcessor(callback)


def test_the_error_names_the_callable_and_its_signature() -> None:
    with pytest.raises(
        TypeError,
        match=r"^two\(a, b\) cannot be called with one message \(missing a required argument: 'b'\)",
    ):
        check_callback(two)


@pytest.mark.parametrize(
    "callback",
    [print, Handler(), functools.partial(two, 1), lambda m, *rest, **kw: None, Message.replace, len],
)
def test_callables_that_take_one_message_pass(callback: Any) -> None:
    check_callback(callback)


def test_run_refuses_it_before_connecting() -> None:
    # An unroutable URL: the signature is checked first, so the error is the signature's, not the broker's.
    with pytest.raises(TypeError, match="cannot be called with one message"):
        run(two, queue="jobs", url="amqp://guest:guest@127.0.0.1:1/")
