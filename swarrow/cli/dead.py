"""`swarrow dead list | show | replay | purge`: read, bring back or drop the dead letters of a queue.

Thin: parse, call `swarrow.dead_letters`, print, map errors to exit codes. Every command reads the
dead-letter queue without taking what it only looks at (see `swarrow.scan`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

import click

from swarrow import dead_letters as dl
from swarrow.broker import Broker
from swarrow.cli._dead_output import describe_letter, letter_as_json, list_lines, safe
from swarrow.cli._dead_params import (
    Instant,
    call,
    check_age,
    common_options,
    echo_json,
    queue_to_read,
    resolve_url,
    selection,
    selection_options,
)
from swarrow.cli._jobs_store import check_store, config_store, record_replays
from swarrow.cli.errors import CliError, fail
from swarrow.cli.help import ENV_EPILOG, ManCommand, exit_epilog, option
from swarrow.cli.params import Duration
from swarrow.exits import EXIT_BROKER, EXIT_CRASH, EXIT_OK, EXIT_USAGE
from swarrow.jobs import JobRecord, replayed_job
from swarrow.message import Message

__all__ = ["dead"]

T = TypeVar("T")
DEAD_EXITS: Final[Mapping[int, str]] = {
    EXIT_OK: "done (a dry run or an empty selection too)",
    EXIT_CRASH: "replay: selected letters not replayed, still in the dead-letter queue; purge: not confirmed",
    EXIT_USAGE: "usage: a bad flag or value, a queue that does not exist, purge without --yes off a terminal",
    EXIT_BROKER: "the broker is unreachable, refused the credentials, or the connection was lost mid-way "
    "(nothing acked is lost: run the command again)",
}
_EPILOG = f"{ENV_EPILOG}\n\n{exit_epilog(DEAD_EXITS)}"


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    short_help="Inspect, replay and purge dead letters (QUEUE.dead).",
)
def dead() -> None:
    """Inspect, replay and purge dead letters without losing any.

    Every command reads the dead-letter queue with manual acks and never acks what it only looks
    at: whatever happens (an error, kill -9, a broker restart), unread and unselected letters stay
    in QUEUE.dead, in their order.
    """
    # The commands report a lost or refused connection in one line of their own (exit 4); the AMQP
    # libraries' tracebacks about the same event would only bury it.
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _can_ask() -> bool:
    """True when a person can answer a question on stdin."""
    return sys.stdin.isatty()


@dead.command("list", cls=ManCommand, epilog=_EPILOG)
@common_options
@option(
    "--group-by",
    section="Output",
    type=click.Choice(dl.GROUP_BY),
    default="error-type",
    help="Group by error type, error message (type + first 200 characters) or day failed (UTC).",
)
@option("--json", "as_json", section="Output", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def list_(
    ctx: click.Context,
    /,
    queue: str | None,
    dead_queue: str | None,
    url: str,
    config_path: str | None,
    group_by: dl.GroupBy,
    as_json: bool,
) -> None:
    """Count the dead letters, grouped, with the first and last failure time of each group.

    Every letter read goes back to the queue, in its order; memory stays small however many there are.
    """
    read = queue_to_read(queue, dead_queue)
    summary: dl.DeadLetterSummary = call(
        resolve_url(ctx, url, config_path, read),
        lambda b: dl.list_dead_letters(b, read.name, group_by=group_by),
        read,
    )
    if as_json:
        echo_json(summary.as_dict())
        return
    for line in list_lines(summary):
        click.echo(line)


@dead.command(cls=ManCommand, epilog=_EPILOG)
@common_options
@option(
    "--message-id",
    section="Selection",
    default=None,
    metavar="ID",
    help="Show the letters with this message id.",
)
@option(
    "--limit",
    "-n",
    section="Selection",
    type=click.IntRange(min=1),
    default=10,
    help="Show at most N letters (from the head of the queue).",
)
@option(
    "--body",
    "show_body",
    section="Output",
    is_flag=True,
    help="Also print each body: text if it is printable UTF-8, else hex.",
)
@option(
    "--body-limit",
    section="Output",
    type=click.IntRange(min=0),
    default=2048,
    metavar="BYTES",
    help="Cut each printed body after this many bytes (0: the whole body).",
)
@option(
    "--json", "as_json", section="Output", is_flag=True, help="Print a JSON list (bodies as text or base64)."
)
@click.pass_context
def show(
    ctx: click.Context,
    /,
    queue: str | None,
    dead_queue: str | None,
    url: str,
    config_path: str | None,
    message_id: str | None,
    limit: int,
    show_body: bool,
    body_limit: int,
    as_json: bool,
) -> None:
    """Print dead letters in full: error, attempts, failure time, original queue, x-death, all headers."""
    read = queue_to_read(queue, dead_queue)
    letters: list[dl.DeadLetter] = call(
        resolve_url(ctx, url, config_path, read),
        lambda b: dl.show_dead_letters(b, read.name, message_id=message_id, limit=limit),
        read,
    )
    if as_json:
        echo_json([letter_as_json(x, body=show_body, body_limit=body_limit) for x in letters])
        return
    if not letters:
        what = f"with message id {safe(message_id)}" if message_id is not None else "at all"
        click.echo(f"no dead letters {what} in {safe(read.name)}")
        return
    for letter in letters:
        for line in describe_letter(letter, body=show_body, body_limit=body_limit):
            click.echo(line)


@dead.command(cls=ManCommand, epilog=_EPILOG)
@common_options
@option(
    "--to",
    section="General",
    default=None,
    metavar="QUEUE",
    help="Publish every copy to this queue instead of each letter's original queue.",
)
@selection_options
@option(
    "--since",
    section="Selection",
    type=Instant(),
    default=None,
    help="Only letters that failed at or after TIME (ISO-8601, or a duration ago: 2h, 7d).",
)
@option(
    "--until",
    section="Selection",
    type=Instant(),
    default=None,
    help="Only letters that failed before TIME.",
)
@option(
    "--limit",
    "-n",
    section="Selection",
    type=click.IntRange(min=1),
    default=None,
    help="Replay at most N letters (the first selected, from the head).",
)
@option(
    "--dry-run", section="General", is_flag=True, help="Say what would be replayed and where; change nothing."
)
@option(
    "--progress/--no-progress",
    section="Output",
    default=None,
    show_default="when stderr is a terminal",
    help="Show a progress bar on stderr.",
)
@option("--json", "as_json", section="Output", is_flag=True, help="Print the result as JSON.")
@option(
    "--track-jobs",
    section="General",
    metavar="URL",
    envvar="SWARROW_TRACK_JOBS",
    default=None,
    help="The job store consumers track into (env SWARROW_TRACK_JOBS; with --config, the track_jobs of the "
    "consumer of that queue, else [jobs] store): record each replayed job as retrying, waiting in its queue "
    "again (best-effort).",
)
@option(
    "--otel",
    section="General",
    is_flag=True,
    help="A PRODUCER span per replayed copy, in the trace its dead letter carries, its context in the "
    "copy's headers (pip install 'swarrow[otel]'; the SDK from OTEL_* variables as for consume; "
    "console spans on stderr).",
)
@click.pass_context
def replay(
    ctx: click.Context,
    /,
    queue: str | None,
    dead_queue: str | None,
    url: str,
    config_path: str | None,
    to: str | None,
    error_types: Sequence[str],
    message_ids: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    limit: int | None,
    dry_run: bool,
    progress: bool | None,
    as_json: bool,
    track_jobs: str | None,
    otel: bool,
) -> None:
    """Publish selected dead letters back to their original queue (or --to), confirmed, then ack them.

    \b
    Each copy keeps the body and properties byte for byte; its attempt, error and x-death headers
    are dropped (retries count afresh) and it carries x-swarrow-replayed-at and x-swarrow-replay-count.
    A letter is acked in the dead-letter queue only after the broker confirmed its copy: a crash or
    a broker restart never loses one (at worst it is in both queues); run the command again to finish.
    Letters not selected stay where they are, in order. Ends with `replayed N, kept M, failed K`
    (failed: selected but still in the dead-letter queue, e.g. no such target queue; exit 1).
    """
    read = queue_to_read(queue, dead_queue)
    if to is not None and to in (read.name, read.swarrot):
        raise click.BadParameter(f"cannot replay {to!r} into itself", param_hint="--to")
    chosen = selection(error_types, message_ids, since, until, limit)
    dead_queues = tuple(q for q in (read.name, read.swarrot) if q)
    store = check_store(track_jobs, "--track-jobs") if track_jobs else config_store(config_path, dead_queues)
    records: list[JobRecord] = []

    def on_replayed(copy: Message, target: str) -> None:
        record = replayed_job(copy, target, time.time())
        if record is not None:
            records.append(record)

    show_bar = progress if progress is not None else sys.stderr.isatty() and not as_json
    bar: Any = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(
                length=max(total, 1),
                label=f"replaying {safe(read.name)}",
                file=sys.stderr,
                update_min_steps=max(1, total // 200),
            )
        bar.update(done - bar.pos)

    async def operation(broker: Broker) -> dl.ReplayResult:
        return await dl.replay_dead_letters(
            broker,
            read.name,
            to=to,
            selection=chosen,
            fallback_queue=queue,
            dry_run=dry_run,
            progress=on_progress if show_bar else None,
            on_replayed=on_replayed if store and not dry_run else None,
            otel=otel,
        )

    sdk = None
    if otel:
        from swarrow.otel import configure_sdk

        try:
            sdk = configure_sdk(console=sys.stderr)  # stdout: the report (--json)
        except Exception as exc:
            fail(exc)
    try:
        result: dl.ReplayResult = call(resolve_url(ctx, url, config_path, read), operation, read)
    finally:
        if sdk is not None:
            from swarrow.otel import shutdown_sdk

            shutdown_sdk(sdk)
        if bar is not None:
            bar.render_finish()
        if store and records:  # what was replayed, also when the connection was lost mid-way
            record_replays(store, records)
    _report(result.as_dict(), as_json, result.line(), result.targets, result.failures, result.elapsed)
    if result.failed:
        raise CliError(
            f"{result.failed} selected dead letter(s) not replayed: still in {read.name}", EXIT_CRASH
        )


def _report(
    data: dict[str, Any],
    as_json: bool,
    line: str,
    targets: dict[str, int],
    failures: dict[str, int],
    elapsed: float,
) -> None:
    if as_json:
        echo_json(data)
        return
    for target, count in sorted(targets.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {count:>8}  → {safe(target)}")
    for reason, count in sorted(failures.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {count:>8}  failed: {safe(reason)}")
    rate = f", {data['replayed'] / elapsed:,.0f} msg/s" if elapsed > 0 and data["replayed"] else ""
    click.echo(f"took {elapsed:.2f} s{rate}")
    click.echo(line)  # the closing line, alone: `replayed N, kept M, failed K`


@dead.command(cls=ManCommand, epilog=_EPILOG)
@common_options
@option(
    "--older-than",
    section="Selection",
    type=Duration(allow_zero=True),
    default=None,
    metavar="DURATION",
    help="Only letters that failed longer ago than this (14d, 12h); those without a failure time stay.",
)
@selection_options
@option(
    "--yes", "-y", section="General", is_flag=True, help="Do not ask; required when stdin is not a terminal."
)
@option("--dry-run", section="General", is_flag=True, help="Count what would be dropped; change nothing.")
@option("--json", "as_json", section="Output", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def purge(
    ctx: click.Context,
    /,
    queue: str | None,
    dead_queue: str | None,
    url: str,
    config_path: str | None,
    older_than: float | None,
    error_types: Sequence[str],
    message_ids: Sequence[str],
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Drop the selected dead letters for good (all of them without a filter); the others stay, in order.

    Asks first, unless --yes (then drops at most the number it asked about, head first); refuses
    without --yes when stdin is not a terminal (exit 2).
    """
    read = queue_to_read(queue, dead_queue)
    older_than = check_age(older_than)
    chosen = selection(error_types, message_ids)
    target = resolve_url(ctx, url, config_path, read)
    selected = chosen

    async def run(broker: Broker, *, dry_run: bool) -> dl.PurgeResult:
        return await dl.purge_dead_letters(
            broker, read.name, selection=selected, older_than=older_than, dry_run=dry_run
        )

    if not yes and not dry_run:
        if not _can_ask():
            raise CliError("refusing to purge without --yes: stdin is not a terminal to ask on", EXIT_USAGE)
        counted: dl.PurgeResult = call(target, lambda b: run(b, dry_run=True), read)
        if counted.purged == 0:
            click.echo(f"nothing to purge in {safe(read.name)} ({counted.kept} kept)")
            return
        click.confirm(
            f"Drop {counted.purged} dead letter(s) from {safe(read.name)} for good (keep {counted.kept})?",
            abort=True,
            err=True,
        )
        # What was agreed to, no more: letters that failed meanwhile (a worker still dead-lettering) stay.
        selected = dl.Selection(chosen.error_types, chosen.message_ids, limit=counted.purged)
    result: dl.PurgeResult = call(target, lambda b: run(b, dry_run=dry_run), read)
    if as_json:
        echo_json(result.as_dict())
        return
    click.echo(f"took {result.elapsed:.2f} s")
    click.echo(result.line())
