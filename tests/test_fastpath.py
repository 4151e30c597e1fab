"""The quarantined aiormq fast path: gated, logged once when off; an unexpected frame closes the channel."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from swarrow.amqp import fastpath
from swarrow.amqp.fastpath import FastPath, apply_fast_path, is_inline

pytestmark = pytest.mark.anyio


class FakeChannel:
    """What the fast path touches on an aiormq 7 channel: its frame queue, `_on_deliver_frame`, `close`."""

    def __init__(self, maxsize: int = 10) -> None:
        self.frames: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=maxsize)
        self.closed_with: list[BaseException | None] = []

    async def _on_deliver_frame(self, frame: Any) -> None:
        raise AssertionError("aiormq's own handler must have been replaced")

    async def close(self, exc: BaseException | None = None) -> None:
        self.closed_with.append(exc)


def _deliver(tag: int = 1) -> Basic.Deliver:
    return Basic.Deliver("ctag", tag, False, "", "q")


async def _deliver_frames(*frames: Any) -> tuple[FakeChannel, list[tuple[Any, bytes]]]:
    channel = FakeChannel()
    taken: list[tuple[Any, bytes]] = []
    state = apply_fast_path(
        channel,  # type: ignore[arg-type]
        lambda d, p, body, ch: taken.append((d, body)),
        "q",
        take_decoded=lambda *_: None,
    )
    assert state == FastPath(reader_unbounded=True, inline_delivery=True)
    for frame in frames:
        channel.frames.put_nowait((0, frame))
    await channel._on_deliver_frame(_deliver())
    await asyncio.sleep(0)  # let the close task run
    await asyncio.sleep(0)
    return channel, taken


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_delivery_split_over_body_frames_is_taken_whole() -> None:
    channel, taken = await _deliver_frames(
        ContentHeader(body_size=6), ContentBody(b"abc"), ContentBody(b"def")
    )
    assert [body for _, body in taken] == [b"abcdef"]
    assert channel.closed_with == []
    assert is_inline(channel)  # type: ignore[arg-type]
    assert channel.frames.maxsize == 0


async def test_a_missing_content_header_closes_the_channel_without_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel, taken = await _deliver_frames(Basic.Ack(1))
    assert taken == []
    assert len(channel.closed_with) == 1
    assert "instead of a content header" in str(channel.closed_with[0])
    assert "closing the channel consuming q" in caplog.text


async def test_a_body_shorter_than_announced_closes_the_channel() -> None:
    channel, taken = await _deliver_frames(ContentHeader(body_size=10), ContentBody(b"12345"), _deliver(2))
    assert taken == []
    assert "after 5 of 10 body bytes" in str(channel.closed_with[0])


async def test_a_body_longer_than_announced_closes_the_channel() -> None:
    channel, taken = await _deliver_frames(
        ContentHeader(body_size=3), ContentBody(b"12"), ContentBody(b"345")
    )
    assert taken == []
    assert "5 body bytes where the header announced 3" in str(channel.closed_with[0])


async def test_a_missing_body_frame_closes_the_channel() -> None:
    channel, taken = await _deliver_frames(ContentHeader(body_size=3), _deliver(2))
    assert taken == []
    assert "instead of a content body" in str(channel.closed_with[0])


async def test_an_unsupported_aiormq_turns_both_tricks_off_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fastpath, "SUPPORTED", False)
    monkeypatch.setattr(fastpath, "_reported_off", set())
    caplog.set_level(logging.WARNING, logger="swarrow.amqp.fastpath")
    first, second = FakeChannel(), FakeChannel()
    for channel in (first, second):
        state = apply_fast_path(channel, lambda *_: None, "q", take_decoded=lambda *_: None)  # type: ignore[arg-type]
        assert state == FastPath(reader_unbounded=False, inline_delivery=False)
        assert channel.frames.maxsize == 10
        assert not is_inline(channel)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records if r.name == "swarrow.amqp.fastpath"]
    assert len(lines) == 3  # one per trick (reader, inline, bulk intake), not one per channel
    assert all("is off on aiormq" in line for line in lines)


async def test_a_channel_without_the_internals_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    state = apply_fast_path(object(), lambda *_: None, "q", take_decoded=lambda *_: None, inline=False)  # type: ignore[arg-type]
    assert state == FastPath(reader_unbounded=False, inline_delivery=False)


@pytest.mark.parametrize(
    ("release", "supported"),
    [
        ("7.0.0", False),
        ("7.2.0", False),
        ("7.2.1", True),
        ("7.2.4", True),
        ("7.10.0", True),
        ("8.0.0", False),
    ],
)
def test_the_version_gate_admits_only_readers_that_look_the_handler_up_per_frame(
    release: str, supported: bool
) -> None:
    low, high = fastpath._SUPPORTED_RANGE
    assert (low <= fastpath._release(release) < high) is supported
