"""`swarrow declare`: a queue, its retry queues and its dead-letter queue, idempotently."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import click

from swarrow.cli.bootstrap import connected, run_anyio
from swarrow.cli.errors import CliError, fail
from swarrow.cli.help import ENV_EPILOG, ManCommand, exit_epilog, option
from swarrow.cli.params import dead_letter_strategy_option, resolve_delays, retry_options, url_option
from swarrow.errors import ConfigurationError
from swarrow.exits import EXIT_BROKER, EXIT_OK, EXIT_USAGE
from swarrow.ordering import HASH_EXCHANGE_TYPE, shard_exchange_name, shard_queue_name
from swarrow.swarrot import SwarrotTopology, swarrot_delays_needed
from swarrow.topology import DeadLetterStrategy, RetryTopology

__all__ = ["DECLARE_EXITS", "declare"]


DECLARE_EXITS: Final[Mapping[int, str]] = {
    EXIT_OK: "every queue was created or found as asked",
    EXIT_USAGE: "usage: a bad flag or value (the message names it), or a queue that exists with other "
    "arguments or that the user may not declare (its name and RabbitMQ's reason)",
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
    "--max-priority",
    section="Ordering",
    type=click.IntRange(1, 255),
    default=None,
    metavar="N",
    help="A priority queue (x-max-priority, classic queues only): messages published with --priority up "
    "to N are delivered highest first.",
)
@option(
    "--single-active-consumer",
    section="Ordering",
    is_flag=True,
    help="x-single-active-consumer: one consumer at a time gets QUEUE, the others stand by (serial groups "
    "across workers, strict order).",
)
@option(
    "--shards",
    section="Ordering",
    type=click.IntRange(2, 1024),
    default=None,
    metavar="N",
    help="Declare QUEUE.shard.1..N (each with its retry queues) behind the consistent-hash exchange "
    "QUEUE.shards: publish --exchange QUEUE.shards --serial-group G always reaches one shard. Needs "
    "RabbitMQ's rabbitmq_consistent_hash_exchange plugin.",
)
@option(
    "--retry/--no-retry",
    section="Retry",
    default=True,
    help="Also declare QUEUE.retry.N (one per delay) and QUEUE.dead.",
)
@retry_options
@option(
    "--add-retry-queues",
    section="Retry",
    is_flag=True,
    help="With --retry-topology swarrot: add retry queues to a QUEUE that exists (new or changed delays) "
    "after checking that no old QUEUE_retry_* queue is still bound to their routing keys; without it "
    "declare refuses, since AMQP cannot list bindings and a key bound twice delivers each retry twice.",
)
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
    max_priority: int | None,
    single_active_consumer: bool,
    shards: int | None,
    add_retry_queues: bool,
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
    if max_priority is not None and quorum:
        raise CliError(
            "--max-priority needs a classic queue: quorum queues have no priorities on RabbitMQ 3.10 "
            "(use several queues in order of preference instead)",
            EXIT_USAGE,
        )
    ordering: dict[str, Any] = {}
    if max_priority is not None:
        ordering["x-max-priority"] = max_priority
    if single_active_consumer:
        ordering["x-single-active-consumer"] = True
    if retry_topology == "swarrot" and (ordering or shards):
        raise CliError("--max-priority, --single-active-consumer and --shards go with swarrow's own "
                       "topology, not --retry-topology swarrot", EXIT_USAGE)  # fmt: skip
    if retry_topology == "swarrot" and retry:
        if retry_delays is None:
            raise CliError(swarrot_delays_needed(queue, "--retry-delays"), EXIT_USAGE)
        return _declare_swarrot(SwarrotTopology(queue, delays, quorum=quorum), url, add_retry_queues)
    if shards is not None:
        return _declare_shards(queue, shards, delays, quorum, ordering, retry, url)
    topology = RetryTopology(
        queue,
        delays or (1.0,),
        quorum=quorum,
        dead_letter_strategy=dead_letter_strategy,
        delivery_limit=queue_delivery_limit,
    )
    planned = topology.queues() if retry else topology.queues()[:1]
    if ordering:  # on QUEUE itself: its retry queues only hold copies for a while
        planned[0] = (planned[0][0], {**planned[0][1], **ordering})

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


def _declare_shards(
    queue: str,
    shards: int,
    delays: tuple[float, ...],
    quorum: bool,
    ordering: dict[str, Any],
    retry: bool,
    url: str,
) -> None:
    """QUEUE.shards (x-consistent-hash) and QUEUE.shard.1..N, each a work queue with its retry topology."""
    exchange = shard_exchange_name(queue)

    async def go() -> list[str]:
        lines: list[str] = []
        async with connected(url) as broker:
            try:
                await broker.declare_exchange(exchange, HASH_EXCHANGE_TYPE)
            except ConfigurationError as exc:
                raise ConfigurationError(
                    f"{exc} (is the plugin on? rabbitmq-plugins enable rabbitmq_consistent_hash_exchange)"
                ) from None
            lines.append(
                f"exchange {exchange} ({HASH_EXCHANGE_TYPE}: a serial group always reaches one shard)"
            )
            for k in range(1, shards + 1):
                shard = shard_queue_name(queue, k)
                planned = RetryTopology(shard, delays or (1.0,), quorum=quorum).queues()
                planned = planned if retry else planned[:1]
                planned[0] = (planned[0][0], {**planned[0][1], **ordering})
                for name, arguments in planned:
                    info = await broker.declare_queue(name, arguments=arguments or None)
                    lines.append(_describe(info.created, name, arguments, info.message_count, shard))
                await broker.bind_queue(shard, exchange, "1")  # the binding key is the shard's weight
                lines.append(f"bound {shard} to {exchange} (weight 1)")
        return lines

    try:
        lines = run_anyio(go)
    except Exception as exc:
        fail(exc, crashed="declaring failed")
    for line in lines:
        click.echo(line)


def _declare_swarrot(topology: SwarrotTopology, url: str, add_retry_queues: bool) -> None:
    """The toolkit's layout: exchanges, queues, bindings, one line each."""

    async def go() -> list[str]:
        lines: list[str] = []
        async with connected(url) as broker:
            if not add_retry_queues and (new := await topology.new_retry_bindings(broker)):
                raise ConfigurationError(topology.new_bindings_error(new))
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
    if "x-max-priority" in arguments:
        details.append(f"priorities 0-{arguments['x-max-priority']}")
    if arguments.get("x-single-active-consumer"):
        details.append("single active consumer")
    if "x-dead-letter-strategy" in arguments:
        details.append(f"dead-lettering {arguments['x-dead-letter-strategy']}")
    if "x-delivery-limit" in arguments:
        details.append(f"x-delivery-limit={arguments['x-delivery-limit']} → {queue}.dead")
    if not created:
        details.append(f"{count} message{'' if count == 1 else 's'}")
    return f"{'created' if created else 'found'} {name}" + (f" ({', '.join(details)})" if details else "")
