import asyncio
import functools
import json

import anyio

from swarrow import Message, PermanentError, RemoteError, RpcClient, consume, open_broker


async def quote(message: Message) -> dict[str, float]:
    order = json.loads(message.body)
    if not order["items"]:
        raise PermanentError("an empty order has no price")  # the caller gets a RemoteError
    return {"total": round(sum(order["items"]) * 1.2, 2)}  # the caller gets this, as JSON


async def main(url: str = "amqp://guest:guest@127.0.0.1:5672/", queue: str = "quotes") -> None:
    broker = open_broker(url)
    try:
        await broker.declare_queue(queue)  # a call to a queue that does not exist fails at once
        async with anyio.create_task_group() as workers:
            # A worker: the default stack answers every message that carries reply_to.
            worker = functools.partial(consume, quote, queue=queue, url=url, declare=True, max_messages=2)
            workers.start_soon(worker)
            async with RpcClient(broker) as client:  # any number of tasks may call at once
                reply = await client.call(queue, {"items": [10, 20]}, timeout=10)
                print("total:", reply.json()["total"])
                try:
                    await client.call(queue, {"items": []}, timeout=10)
                except RemoteError as error:
                    print("refused:", error.error_type, error.error_message)
    finally:
        await broker.close()


if __name__ == "__main__":
    asyncio.run(main())
