"""`swarrow publish`'s run: a window of concurrent confirmed publishes, and what became of each."""

from __future__ import annotations

import sys
import time
import uuid

import anyio
import click

from swarrow.cli.bootstrap import connected
from swarrow.errors import ConfigurationError, PublishError
from swarrow.message import Message

__all__ = ["Outcome", "Target", "publish_all"]


class Outcome:
    """What a run did: how many were confirmed, which ids were not, and whether to give up."""

    def __init__(self, window: int, give_up_after: float) -> None:
        self.window, self.give_up_after = window, give_up_after
        self.confirmed = 0
        self.failed: list[str] = []
        self.in_a_row = 0
        self.last_confirm = time.monotonic()
        self.gave_up = False

    def confirm(self) -> None:
        self.confirmed += 1
        self.in_a_row = 0
        self.last_confirm = time.monotonic()

    def fail(self, message_id: str) -> None:
        # A lost connection fails a whole window at once and the next node takes over: give up only
        # when failures go on and nothing was confirmed for a while (every node down).
        self.failed.append(message_id)
        self.in_a_row += 1
        if self.in_a_row >= self.window and time.monotonic() - self.last_confirm >= self.give_up_after:
            self.gave_up = True


class Target:
    """Where the messages go: a queue through the default exchange, or an exchange and a routing key."""

    def __init__(self, queue: str | None, exchange: str, routing_key: str) -> None:
        self.queue, self.exchange, self.routing_key = queue, exchange, routing_key

    def __str__(self) -> str:
        if self.queue is not None:
            return self.queue
        return f"exchange {self.exchange} (routing key {self.routing_key!r})"


def _numbered(text: str | None, n: int) -> str | None:
    return None if text is None else text.replace("{n}", str(n))


async def publish_all(
    url: str,
    target: Target,
    template: Message,
    message_id: str | None,
    count: int,
    window: int,
    show: bool,
    print_ids: bool,
    outcome: Outcome,
    otel: bool = False,
) -> float:
    """Publish `count` copies of `template` to `target`, `window` awaiting their confirm at once;
    return the seconds it took. Each message's fate goes to `outcome`."""
    run_id = uuid.uuid4().hex[:12]
    numbered = b"{n}" in template.body
    correlation_id = template.correlation_id
    queue = target.queue
    async with connected(url) as broker:
        if queue is not None and await broker.inspect_queue(queue) is None:
            raise ConfigurationError(
                f"queue {queue!r} does not exist on {broker.url}: "
                f"create it with `swarrow declare --queue {queue}`"
            )
        publisher = broker.publisher()
        if otel:
            from swarrow.otel import TracingPublisher

            publisher = TracingPublisher(publisher)
        next_n = 1
        bar = (
            click.progressbar(
                length=count,
                label=f"publishing to {target}",
                file=sys.stderr,
                update_min_steps=max(1, count // 200),
            )
            if show
            else None
        )

        async def worker() -> None:
            nonlocal next_n
            while next_n <= count and not outcome.gave_up:
                n = next_n
                next_n += 1
                body = template.body.replace(b"{n}", str(n).encode()) if numbered else template.body
                message = template.replace(
                    body=body,
                    message_id=_numbered(message_id, n) if message_id is not None else f"{run_id}-{n}",
                    correlation_id=_numbered(correlation_id, n),
                )
                try:
                    await publisher.publish(message, target.routing_key, target.exchange)
                except PublishError as exc:
                    if "NOT_FOUND - no exchange" in str(exc):  # RabbitMQ's 404 on the publish channel
                        raise ConfigurationError(
                            f"exchange {target.exchange!r} does not exist on {broker.url}"
                        ) from None
                    outcome.fail(message.message_id or "")
                    click.echo(f"not confirmed: {message.message_id} ({exc})", err=True)
                    continue
                outcome.confirm()
                if print_ids:
                    click.echo(message.message_id)  # confirmed: a script may poll its status from now on
                if bar is not None:
                    bar.update(1)

        started = time.perf_counter()
        outcome.last_confirm = time.monotonic()
        try:
            async with anyio.create_task_group() as group:
                for _ in range(min(window, count)):
                    group.start_soon(worker)
        finally:
            if bar is not None:
                bar.render_finish()
        return time.perf_counter() - started
