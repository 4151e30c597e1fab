"""`swarrow declare`: a queue, its retry queues and its dead-letter queue, idempotently."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import click

from swarrow.cli.bootstrap import connected, run_anyio
from swarrow.cli.errors import CliError, fail
from swarrow.cli.help import ENV_EPILOG, ManCommand, exit_epilog, option
from swarrow.cli.params import dead_letter_strategy_option, resolve_delays, retry_options, url_option
from swarrow.exits import EXIT_BROKER, EXIT_OK, EXIT_USAGE
from swarrow.swarrot import SwarrotTopology
from swarrow.topology import DeadLetterStrategy, RetryTopology

__all__ = ["DECLARE_EXITS", "declare"]


DECLARE_EXITS: Final[Mapping[int, str]] = {
    EXIT_OK: "every queue was created or found as asked",
    EXIT_USAGE: "usage: a bad flag or value (the message names it), or a queue that exists with other "
    "arguments (its name and RabbitMQ's reason)",
    EXIT_BROKER: "the broker is unreachable or refused the credentials",
}


@click.command(
    cls=ManCommand,
    no_args_is_help=True,
    short_help="Declare a queue with its retry and dead-letter queues.",
    epilog=f"{ENV_EPILOG}\n\n{exit_epilog(DECLARE_EXITS)}",
)
@option("--queue", "-q", section="General", required=True, metavar="QUEUE", help="Queue to declare.")
@url_option()
@option("--quorum", section="Connection", is_flag=True, help="Declare quorum queues (x-queue-type=quorum).")
@dead_letter_strategy_option()
@option(
    "--queue-delivery-limit",
    section="Connection",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Quorum only: the broker's x-delivery-limit on QUEUE; past N requeues it dead-letters into "
    "QUEUE.dead. Keep it above consume's --delivery-limit, which dead-letters first and says why.",
)
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
    dead_letter_strategy: DeadLetterStrategy,
    queue_delivery_limit: int | None,
    retry: bool,
    retry_attempts: int,
    retry_delays: tuple[float, ...] | None,
    retry_topology: str,
) -> None:
    """Declare QUEUE, its retry queues and QUEUE.dead, idempotently; print what was created or found.

    Each QUEUE.retry.N holds a failed message for the Nth delay (x-message-ttl), then the broker
    dead-letters it back to QUEUE. With --retry-topology swarrot: the layout of BlaBlaCar's
    rabbit-mq-admin-toolkit instead (exchanges retry, dl and unroutable, QUEUE_retry_<seconds>,
    QUEUE_dl), compatible with one the toolkit declared. Declaring again with the same options
    changes nothing; with other delays or queue type it fails (exit 2) naming the queue, since
    RabbitMQ cannot change a queue's arguments: delete the retry queues first.
    """
    delays = resolve_delays(ctx, retry_attempts, retry_delays) if retry else ()
    if not quorum and (dead_letter_strategy != "at-most-once" or queue_delivery_limit is not None):
        flag = "--queue-delivery-limit" if queue_delivery_limit is not None else "--dead-letter-strategy"
        raise CliError(f"{flag} needs --quorum: classic queues ignore it", EXIT_USAGE)
    if retry_topology == "swarrot" and retry:
        return _declare_swarrot(SwarrotTopology(queue, delays, quorum=quorum), url)
    topology = RetryTopology(
        queue,
        delays or (1.0,),
        quorum=quorum,
        dead_letter_strategy=dead_letter_strategy,
        delivery_limit=queue_delivery_limit,
    )
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
        fail(exc, crashed="declaring failed")
    for line in lines:
        click.echo(line)
    if url.lower().startswith("memory://"):
        from swarrow.cli.publish import MEMORY_WARNING

        click.echo(MEMORY_WARNING, err=True)


def _declare_swarrot(topology: SwarrotTopology, url: str) -> None:
    """The toolkit's layout: exchanges, queues, bindings, one line each."""

    async def go() -> list[str]:
        lines: list[str] = []
        async with connected(url) as broker:
            for name, kind, arguments in topology.exchanges():
                await broker.declare_exchange(name, kind, arguments=arguments or None)
                extra = f", alternate-exchange={arguments['alternate-exchange']}" if arguments else ""
                lines.append(f"exchange {name} ({kind}{extra})")
            for name, arguments in topology.queues():
                info = await broker.declare_queue(name, arguments=arguments or None)
                target = arguments.get("x-dead-letter-exchange")
                line = _describe(info.created, name, arguments, info.message_count, topology.queue)
                if name == topology.queue and target:
                    line += f" (dead letters → exchange {target})"
                lines.append(line)
            for exchange, queue, key in topology.bindings():
                await broker.bind_queue(queue, exchange, key)
                lines.append(f"bound {queue} to {exchange}" + (f" with {key!r}" if key else ""))
        return lines

    try:
        lines = run_anyio(go)
    except Exception as exc:
        fail(exc, crashed="declaring failed")
    for line in lines:
        click.echo(line)


def _describe(created: bool, name: str, arguments: dict[str, Any], count: int, queue: str) -> str:
    details = []
    if "x-message-ttl" in arguments:
        details.append(f"x-message-ttl={arguments['x-message-ttl']}ms → {queue}")
    if arguments.get("x-queue-type") == "quorum":
        details.append("quorum")
    if "x-dead-letter-strategy" in arguments:
        details.append(f"dead-lettering {arguments['x-dead-letter-strategy']}")
    if "x-delivery-limit" in arguments:
        details.append(f"x-delivery-limit={arguments['x-delivery-limit']} → {queue}.dead")
    if not created:
        details.append(f"{count} message{'' if count == 1 else 's'}")
    return f"{'created' if created else 'found'} {name}" + (f" ({', '.join(details)})" if details else "")
