import asyncio

from processors import AckProcessor, ExceptionCatcherProcessor, MaxMessagesProcessor, RetryProcessor
from swarrow import Consumer, Layer, Message, Stack, open_broker
from swarrow.topology import RetryTopology, exponential_delays


async def send_email(message: Message) -> None:
    print("e-mailing", message.body.decode())


async def main(url: str = "amqp://guest:guest@127.0.0.1:5672/", queue: str = "emails") -> None:
    async with open_broker(url) as broker:  # or "memory://" for tests and demos; closed whatever happens
        await RetryTopology(queue, exponential_delays(3)).declare(broker)  # emails, emails.retry.1..3, .dead
        provider, publisher = broker.provider(queue, prefetch=100), broker.publisher()
        stack = Stack(
            Layer(MaxMessagesProcessor, limit=1000),  # first listed = outermost
            Layer(ExceptionCatcherProcessor),
            Layer(AckProcessor, provider=provider),
            Layer(RetryProcessor, publisher=publisher, attempts=3),
            callback=send_email,
        )
        reason = await Consumer(provider, stack, concurrency=10, grace_period=30).run()
        print("stopped:", reason)  # why it stopped


if __name__ == "__main__":
    asyncio.run(main())
