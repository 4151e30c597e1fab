"""`swarrow declare`: a queue, its retry queues and its dead-letter queue, idempotently."""

from __future__ import annotations

from typing import Any

import click

from swarrow.cli.bootstrap import connected, run_anyio
from swarrow.cli.errors import fail
from swarrow.cli.help import ENV_EPILOG, EXIT_EPILOG, ManCommand, option
from swarrow.cli.params import resolve_delays, retry_options, url_option
from swarrow.topology import RetryTopology

__all__ = ["declare"]


@click.command(cls=ManCommand, no_args_is_help=True, epilog=f"{ENV_EPILOG}\n\n{EXIT_EPILOG}")
@option("--queue", "-q", section="General", required=True, metavar="QUEUE", help="Queue to declare.")
@url_option()
@option("--quorum", section="Connection", is_flag=True, help="Declare quorum queues (x-queue-type=quorum).")
@option(
    "--retry/--no-retry",
    section="Retry",
    default=True,
    help="Also declare QUEUE.retry.N (one per delay) and QUEUE.dead.",
)
@retry_options
@click.pass_context
def declare(
    ctx: click.Context,
    /,
    queue: str,
    url: str,
    quorum: bool,
    retry: bool,
    retry_attempts: int,
    retry_delays: tuple[float, ...] | None,
) -> None:
    """Declare QUEUE, its retry queues and QUEUE.dead, idempotently; print what was created or found.

    Each QUEUE.retry.N holds a failed message for the Nth delay (x-message-ttl), then the broker
    dead-letters it back to QUEUE. Declaring again with the same options changes nothing; with
    other delays or queue type it fails (exit 2) naming the queue, since RabbitMQ cannot change a
    queue's arguments: delete the retry queues first.
    """
    delays = resolve_delays(ctx, retry_attempts, retry_delays) if retry else ()
    topology = RetryTopology(queue, delays or (1.0,), quorum=quorum)
    planned = topology.queues() if retry else topology.queues()[:1]

    async def go() -> list[str]:
        lines: list[str] = []
        async with connected(url) as broker:
            for name, arguments in planned:
                info = await broker.declare_queue(name, arguments=arguments or None)
                lines.append(_describe(info.created, name, arguments, info.message_count, queue))
        return lines

    try:
        lines = run_anyio(go)
    except Exception as exc:
        fail(exc)
    for line in lines:
        click.echo(line)


def _describe(created: bool, name: str, arguments: dict[str, Any], count: int, queue: str) -> str:
    details = []
    if "x-message-ttl" in arguments:
        details.append(f"x-message-ttl={arguments['x-message-ttl']}ms → {queue}")
    if arguments.get("x-queue-type") == "quorum":
        details.append("quorum")
    if not created:
        details.append(f"{count} message{'' if count == 1 else 's'}")
    return f"{'created' if created else 'found'} {name}" + (f" ({', '.join(details)})" if details else "")
