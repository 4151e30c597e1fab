import asyncio

from swarrow import open_broker
from swarrow.dead_letters import Selection, dead_letter_queue_name, list_dead_letters, replay_dead_letters


async def main(url: str = "amqp://guest:guest@127.0.0.1:5672/", queue: str = "emails") -> None:
    broker = open_broker(url)
    try:
        dead = dead_letter_queue_name(queue)  # "emails.dead"
        summary = await list_dead_letters(broker, dead)  # reads them all; every one stays in emails.dead
        for group in summary.groups:
            print(group.count, group.key, group.first_failed_at, group.last_failed_at)
        # After the fix is deployed: send one kind of failure back to `emails`, confirmed, then acked.
        only = Selection(error_types=["SMTPServerDisconnected"])
        result = await replay_dead_letters(broker, dead, selection=only)
        print(result.line())  # replayed N, kept M, failed K
    finally:
        await broker.close()


if __name__ == "__main__":
    asyncio.run(main())
