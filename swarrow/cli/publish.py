"""`swarrow publish`: test messages with publisher confirms, and the confirmed rate."""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Final

import click

from swarrow.cli.bootstrap import read_body, run_anyio
from swarrow.cli.errors import CliError, fail
from swarrow.cli.help import ENV_EPILOG, ManCommand, exit_epilog, option
from swarrow.cli.params import Duration, Header, url_option
from swarrow.cli.publish_run import Outcome, Target, publish_all
from swarrow.exits import EXIT_BROKER, EXIT_CRASH, EXIT_OK, EXIT_USAGE
from swarrow.message import Message
from swarrow.ordering import SERIAL_HEADER

__all__ = ["MEMORY_WARNING", "PUBLISH_EXITS", "publish"]

PUBLISH_EXITS: Final[Mapping[int, str]] = {
    EXIT_OK: "every message was published and confirmed by the broker",
    EXIT_CRASH: "the broker nacked or returned a message (unroutable); says how many were confirmed",
    EXIT_USAGE: "usage: a bad flag or value (the message names it), or a queue that does not exist",
    EXIT_BROKER: "the broker is unreachable or refused the credentials",
}
_PROPERTIES = "Properties"
MEMORY_WARNING: Final = (
    "warning: memory:// lives inside one process: what this command made is gone when it exits; "
    "use an amqp:// URL to reach another process (memory:// is for swarrow.run, tests and the demo)"
)
_EXAMPLES = (
    "\b\nExamples:\n"
    "  swarrow publish -q jobs --body 'job {n}' --count 1000 --persistent\n"
    "  swarrow publish --exchange events --routing-key order.created -f order.json "
    "--content-type application/json\n"
    "  swarrow publish -q rpc --body ping --reply-to replies --correlation-id 'c-{n}' --expiration 30s"
)


@click.command(
    cls=ManCommand,
    no_args_is_help=True,
    short_help="Publish test messages with publisher confirms.",
    epilog=f"{_EXAMPLES}\n\n{ENV_EPILOG}\n\n{exit_epilog(PUBLISH_EXITS)}",
)
@click.argument("stdin", required=False, metavar="[-]")
@option(
    "--queue",
    "-q",
    section="General",
    default=None,
    metavar="QUEUE",
    help="Queue to publish to through the default exchange (checked to exist first); "
    "required unless --exchange is given.",
)
@option(
    "--exchange",
    "-e",
    section="General",
    default=None,
    metavar="NAME",
    help="Publish to this exchange instead of the default one (with --routing-key).",
)
@option(
    "--routing-key",
    "-k",
    section="General",
    default=None,
    metavar="KEY",
    show_default="QUEUE, or empty with --exchange",
    help="The routing key; with the default exchange it is the queue's name.",
)
@option(
    "--body",
    "-b",
    section="General",
    default=None,
    metavar="TEXT",
    help="Message body; {n} is replaced by the message's number (1..N).",
)
@option(
    "--file",
    "-f",
    "file",
    section="General",
    type=click.File("rb"),
    default=None,
    help="Read the body from a file ('-' for stdin).",
)
@option(
    "--count", "-n", section="General", type=click.IntRange(min=1), default=1, help="Messages to publish."
)
@option(
    "--header",
    "-H",
    "headers",
    section="General",
    type=Header(),
    multiple=True,
    help="Add a header (repeatable).",
)
@option(
    "--persistent/--transient",
    section="General",
    default=False,
    help="Delivery mode 2: stored on disk by durable queues.",
)
@option(
    "--content-type",
    section=_PROPERTIES,
    default=None,
    help="The content_type property (e.g. application/json).",
)
@option(
    "--message-id",
    section=_PROPERTIES,
    default=None,
    metavar="ID",
    show_default="RUN-N, unique per message",
    help="The message_id property; {n} is the message's number (required with --count > 1).",
)
@option(
    "--correlation-id",
    section=_PROPERTIES,
    default=None,
    metavar="ID",
    help="The correlation_id property; {n} is the message's number.",
)
@option("--reply-to", section=_PROPERTIES, default=None, metavar="QUEUE", help="The reply_to property.")
@option(
    "--expiration",
    section=_PROPERTIES,
    type=Duration(),
    default=None,
    help="Per-message TTL (the expiration property, sent in milliseconds): 500ms, 30s, 5m.",
)
@option("--type", "type_", section=_PROPERTIES, default=None, metavar="TYPE", help="The type property.")
@option("--app-id", section=_PROPERTIES, default=None, metavar="ID", help="The app_id property.")
@option(
    "--priority",
    section=_PROPERTIES,
    type=click.IntRange(0, 255),
    default=None,
    help="The priority property, 0-255 (honoured by queues declared with x-max-priority).",
)
@option(
    "--serial-group",
    section=_PROPERTIES,
    default=None,
    metavar="GROUP",
    help="Put the message in a serial group: the header x-serial-group (consume --serial-header runs a "
    "group's messages one at a time, in order) and, with --exchange (a --shards exchange), the routing "
    "key, so a group always reaches the same shard.",
)
@option(
    "--otel",
    section="General",
    is_flag=True,
    help="A PRODUCER span per message, its trace context in the headers (pip install 'swarrow[otel]'; "
    "the SDK from OTEL_* variables as for consume; OTEL_TRACES_EXPORTER=console prints them on stderr, so "
    "stdout keeps only what --print-ids prints).",
)
@url_option()
@option(
    "--give-up-after",
    section="Concurrency",
    type=Duration(allow_zero=True),
    default="60s",
    show_default=True,
    help="Give up once --window publishes in a row failed and none was confirmed for this long.",
)
@option(
    "--window",
    section="Concurrency",
    type=click.IntRange(min=1),
    default=100,
    help="Publishes awaiting their confirm at once.",
)
@option(
    "--print-ids",
    section="Observability",
    is_flag=True,
    help="Print each confirmed message's id on stdout, one per line (the summary goes to stderr), "
    "e.g. for `swarrow jobs status -`.",
)
@option(
    "--progress/--no-progress",
    section="Observability",
    default=None,
    show_default="when --count >= 1000 and stderr is a terminal",
    help="Show a progress bar on stderr.",
)
def publish(
    stdin: str | None,
    queue: str | None,
    exchange: str | None,
    routing_key: str | None,
    body: str | None,
    file: IO[bytes] | None,
    count: int,
    headers: Sequence[tuple[str, str]],
    persistent: bool,
    content_type: str | None,
    message_id: str | None,
    correlation_id: str | None,
    reply_to: str | None,
    expiration: float | None,
    type_: str | None,
    app_id: str | None,
    priority: int | None,
    serial_group: str | None,
    url: str,
    give_up_after: float,
    window: int,
    progress: bool | None,
    print_ids: bool,
    otel: bool,
) -> None:
    """Publish messages to QUEUE (or an exchange) with publisher confirms and report the confirmed rate.

    The body comes from --body, --file, or '-' (stdin). Each message gets a unique message_id
    unless --message-id says otherwise. A queue that does not exist is an error (exit 2). A message
    the broker does not confirm (a nack, an unroutable return, a connection lost before the confirm,
    e.g. a cluster node dying: the next node takes over) is reported on stderr as `not confirmed: ID
    (why)` and the others go on; the run then exits 1. Such a message may or may not have arrived; a
    confirmed one did. It gives up on the rest once --window publishes in a row failed and nothing
    was confirmed for --give-up-after. With memory:// the messages live in this process only.
    """
    if serial_group is not None:
        if not serial_group:
            raise click.BadParameter("must not be empty", param_hint="'--serial-group'")
        headers = [*headers, (SERIAL_HEADER, serial_group)]
        if exchange is not None and routing_key is None:
            routing_key = serial_group  # a consistent-hash exchange routes a group to one shard
    if exchange is None:
        if queue is None:
            raise click.UsageError("give --queue QUEUE (or --exchange NAME with --routing-key KEY)")
        if routing_key is not None and routing_key != queue:
            raise click.BadParameter(
                "the default exchange routes by queue name: use --queue, or give --exchange",
                param_hint="'--routing-key'",
            )
    elif queue is not None:
        raise click.BadParameter(
            "--queue publishes through the default exchange: with --exchange, use --routing-key",
            param_hint="'--queue'",
        )
    if expiration is not None and round(expiration * 1000) < 1:
        raise click.BadParameter(
            "must be at least 1ms (RabbitMQ counts it in milliseconds)", param_hint="'--expiration'"
        )
    for name, value in (("--message-id", message_id), ("--correlation-id", correlation_id)):
        if value is not None and not value:
            raise click.BadParameter("must not be empty", param_hint=f"'{name}'")
    if message_id is not None and count > 1 and "{n}" not in message_id:
        raise click.BadParameter(
            f"{count} messages would share the id {message_id!r}: put {{n}} in it (e.g. {message_id}-{{n}})",
            param_hint="'--message-id'",
        )
    sources = [s for s in (body is not None, file is not None, stdin is not None) if s]
    if stdin is not None and stdin != "-":
        raise click.BadParameter(f"only '-' (stdin) is accepted here, got {stdin!r}", param_hint="[-]")
    if len(sources) != 1:
        raise click.UsageError("give the body with exactly one of --body TEXT, --file FILE or - (stdin)")
    payload = body.encode() if body is not None else read_body(file)
    template = Message(
        payload,
        headers=dict(headers),
        content_type=content_type,
        delivery_mode=2 if persistent else None,
        correlation_id=correlation_id,
        reply_to=reply_to,
        expiration=None if expiration is None else str(max(0, round(expiration * 1000))),
        type=type_,
        app_id=app_id,
        priority=priority,
    )
    target = Target(queue, exchange or "", routing_key if routing_key is not None else (queue or ""))
    show = progress if progress is not None else count >= 1000 and sys.stderr.isatty()
    sdk = None
    outcome = Outcome(window, give_up_after)
    try:
        if otel:
            from swarrow.otel import configure_sdk

            sdk = configure_sdk(console=sys.stderr)  # stdout: the ids of --print-ids
        elapsed = run_anyio(
            functools.partial(
                publish_all, url, target, template, message_id, count, window, show, print_ids, outcome, otel
            )
        )
    except Exception as exc:
        fail(exc, crashed="publishing failed")
    finally:
        if sdk is not None:
            from swarrow.otel import shutdown_sdk

            shutdown_sdk(sdk)
    rate = outcome.confirmed / elapsed if elapsed > 0 else float("inf")
    plural = "" if count == 1 else "s"
    if url.lower().startswith("memory://"):
        click.echo(MEMORY_WARNING, err=True)
    of = f"{outcome.confirmed} of " if outcome.failed else ""
    click.echo(
        f"published {of}{count} message{plural} to {target} in {elapsed:.2f} s "
        f"({rate:,.0f} msg/s, confirmed)",
        err=print_ids,
    )
    if outcome.failed:
        unsent = count - outcome.confirmed - len(outcome.failed)
        detail = (
            f"; gave up after {outcome.in_a_row} failures in a row and nothing confirmed for "
            f"{give_up_after:g} s, {unsent} not sent"
            if unsent
            else ""
        )
        raise CliError(
            f"{len(outcome.failed)} message(s) not confirmed (listed above: they may or may not have "
            f"arrived){detail}",
            EXIT_CRASH,
        )
