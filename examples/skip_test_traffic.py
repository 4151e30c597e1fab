"""A processor of your own (README "Writing your own"); add it with `--layer examples.skip_test_traffic:SkipTestTraffic`."""

from __future__ import annotations

from swarrow import Message, Processor

__all__ = ["SkipTestTraffic"]


class SkipTestTraffic:
    """Ack and drop messages tagged as synthetic, without running the callback."""

    def __init__(self, inner: Processor, /, *, header: str = "x-synthetic") -> None:
        self.inner, self.header = inner, header

    async def __call__(self, message: Message, /) -> bool:
        if message.headers.get(self.header):
            return True  # the outer AckProcessor acks it
        return await self.inner(message)
