"""The default stack in your own code (README "The default stack"): `python examples/default_stack.py`."""

from __future__ import annotations

import asyncio

from processors import default_stack
from swarrow import Consumer, Message, Stack, open_broker


async def send_email(message: Message) -> None:
    print("e-mailing", message.body.decode())


async def main(url: str = "amqp://guest:guest@127.0.0.1:5672/", queue: str = "emails") -> None:
    broker = open_broker(url)
    try:
        await broker.connect()
        provider = broker.provider(queue, prefetch=100)
        layers = default_stack(provider=provider, publisher=broker.publisher(), max_messages=1000, memory_limit=512)
        await Consumer(provider, Stack(*layers, callback=send_email), concurrency=10).run()
    finally:
        await broker.close()


if __name__ == "__main__":
    asyncio.run(main())
