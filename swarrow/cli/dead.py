"""`swarrow dead list | show | replay | purge`: read, bring back or drop the dead letters of a queue.

Thin: parse, call `swarrow.dead_letters`, print, map errors to exit codes. Every command reads the
dead-letter queue without taking what it only looks at (see `swarrow.scan`).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from swarrow import dead_letters as dl
from swarrow.broker import Broker
from swarrow.cli._dead_output import describe_letter, letter_as_json, list_lines, safe
from swarrow.cli.bootstrap import run_anyio
from swarrow.cli.errors import CliError, fail
from swarrow.cli.help import ENV_EPILOG, EXIT_EPILOG, ManCommand, option
from swarrow.cli.params import Duration, ParamType, url_option
from swarrow.config import load_config
from swarrow.errors import ConfigurationError, SwarrowError
from swarrow.exits import EXIT_CRASH, EXIT_USAGE
from swarrow.factory import open_broker
from swarrow.topology import dead_letter_queue_name
from swarrow.units import parse_duration

__all__ = ["dead"]

T = TypeVar("T")
_EPILOG = (
    f"{ENV_EPILOG}\n\n{EXIT_EPILOG}\n"
    "  (for these commands, 4 also means the connection was lost mid-way: run the command again)"
)


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


def _instant(text: str) -> datetime:
    """An ISO-8601 date or time (UTC unless it says otherwise), or a duration ago (`2h`, `7d`)."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        pass
    else:
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use ISO-8601 (2026-01-31, 2026-01-31T12:00:00Z) "
            "or a duration ago (2h, 7d)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class _Instant(ParamType):
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return _instant(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _common(func: Callable[..., T]) -> Callable[..., T]:
    """--queue / --dead-queue, --url, --config: how every `dead` command finds its queue."""
    for decorator in reversed(
        [
            option(
                "--queue",
                "-q",
                section="General",
                default=None,
                metavar="QUEUE",
                help="The work queue: its dead letters are read from QUEUE.dead.",
            ),
            option(
                "--dead-queue",
                section="General",
                default=None,
                metavar="NAME",
                help="Read this dead-letter queue instead of QUEUE.dead (e.g. a DLX queue of your own).",
            ),
            url_option(),
            option(
                "--config",
                "config_path",
                section="Connection",
                default=None,
                metavar="FILE",
                type=click.Path(dir_okay=False),
                help="A swarrow.toml whose [connection] url is used without --url / SWARROW_URL.",
            ),
        ]
    ):
        func = decorator(func)
    return func


def _selection_options(func: Callable[..., T]) -> Callable[..., T]:
    for decorator in reversed(
        [
            option(
                "--error-type",
                "error_types",
                section="Selection",
                multiple=True,
                metavar="TYPE",
                help="Only letters with this error type (repeatable): a full name (myapp.errors.Boom), "
                "a class name (Boom), or x-death:REASON for the broker's own dead letters.",
            ),
            option(
                "--message-id",
                "message_ids",
                section="Selection",
                multiple=True,
                metavar="ID",
                help="Only letters with this message id (repeatable).",
            ),
        ]
    ):
        func = decorator(func)
    return func


def _queue(queue: str | None, dead_queue: str | None) -> str:
    if dead_queue:
        return dead_queue
    if not queue:
        raise click.UsageError(
            "give the work queue with --queue QUEUE (or a dead-letter queue with --dead-queue)"
        )
    return dead_letter_queue_name(queue)


def _url(ctx: click.Context, url: str, config_path: str | None) -> str:
    source = ctx.get_parameter_source("url")
    if config_path is None or source in (
        click.core.ParameterSource.COMMANDLINE,
        click.core.ParameterSource.ENVIRONMENT,
    ):
        return url
    try:
        configured = load_config(config_path).shared.get("url")
    except ConfigurationError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return str(configured) if configured else url


def _broker(url: str) -> Broker:
    try:
        return open_broker(url)
    except (ConfigurationError, ValueError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _call(url: str, operation: Callable[[Broker], Any]) -> Any:
    """Run `operation(broker)` on an event loop; every failure becomes one `Error:` line and its code."""
    broker = _broker(url)

    async def go() -> Any:
        try:
            return await operation(broker)
        finally:
            await broker.close()

    try:
        return run_anyio(go)
    except (SwarrowError, click.ClickException, BaseExceptionGroup) as exc:
        fail(exc)  # broker unreachable or lost: 4; a missing queue, bad configuration: 2
    except Exception as exc:
        raise CliError(f"the dead-letter command failed: {type(exc).__name__}: {exc}", EXIT_CRASH) from None


def _can_ask() -> bool:
    """True when a person can answer a question on stdin."""
    return sys.stdin.isatty()


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@dead.command("list", cls=ManCommand, epilog=_EPILOG)
@_common
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
    name = _queue(queue, dead_queue)
    summary: dl.DeadLetterSummary = _call(
        _url(ctx, url, config_path), lambda b: dl.list_dead_letters(b, name, group_by=group_by)
    )
    if as_json:
        _echo_json(summary.as_dict())
        return
    for line in list_lines(summary):
        click.echo(line)


@dead.command(cls=ManCommand, epilog=_EPILOG)
@_common
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
    name = _queue(queue, dead_queue)
    letters: list[dl.DeadLetter] = _call(
        _url(ctx, url, config_path),
        lambda b: dl.show_dead_letters(b, name, message_id=message_id, limit=limit),
    )
    if as_json:
        _echo_json([letter_as_json(x, body=show_body, body_limit=body_limit) for x in letters])
        return
    if not letters:
        what = f"with message id {safe(message_id)}" if message_id is not None else "at all"
        click.echo(f"no dead letters {what} in {safe(name)}")
        return
    for letter in letters:
        for line in describe_letter(letter, body=show_body, body_limit=body_limit):
            click.echo(line)


def _selection(
    error_types: Sequence[str],
    message_ids: Sequence[str],
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> dl.Selection:
    if since is not None and until is not None and since >= until:
        raise click.BadParameter(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    return dl.Selection(tuple(error_types), tuple(message_ids), since, until, limit)


@dead.command(cls=ManCommand, epilog=_EPILOG)
@_common
@option(
    "--to",
    section="General",
    default=None,
    metavar="QUEUE",
    help="Publish every copy to this queue instead of each letter's original queue.",
)
@_selection_options
@option(
    "--since",
    section="Selection",
    type=_Instant(),
    default=None,
    help="Only letters that failed at or after TIME (ISO-8601, or a duration ago: 2h, 7d).",
)
@option(
    "--until",
    section="Selection",
    type=_Instant(),
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
    name = _queue(queue, dead_queue)
    if to is not None and to == name:
        raise click.BadParameter(f"cannot replay {name!r} into itself", param_hint="--to")
    selection = _selection(error_types, message_ids, since, until, limit)
    show_bar = progress if progress is not None else sys.stderr.isatty() and not as_json
    bar: Any = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(
                length=max(total, 1),
                label=f"replaying {safe(name)}",
                file=sys.stderr,
                update_min_steps=max(1, total // 200),
            )
        bar.update(done - bar.pos)

    async def operation(broker: Broker) -> dl.ReplayResult:
        return await dl.replay_dead_letters(
            broker,
            name,
            to=to,
            selection=selection,
            fallback_queue=queue,
            dry_run=dry_run,
            progress=on_progress if show_bar else None,
        )

    try:
        result: dl.ReplayResult = _call(_url(ctx, url, config_path), operation)
    finally:
        if bar is not None:
            bar.render_finish()
    _report(result.as_dict(), as_json, result.line(), result.targets, result.failures, result.elapsed)
    if result.failed:
        raise CliError(f"{result.failed} selected dead letter(s) not replayed: still in {name}", EXIT_CRASH)


def _report(
    data: dict[str, Any],
    as_json: bool,
    line: str,
    targets: dict[str, int],
    failures: dict[str, int],
    elapsed: float,
) -> None:
    if as_json:
        _echo_json(data)
        return
    for target, count in sorted(targets.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {count:>8}  → {safe(target)}")
    for reason, count in sorted(failures.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {count:>8}  failed: {safe(reason)}")
    rate = f", {data['replayed'] / elapsed:,.0f} msg/s" if elapsed > 0 and data["replayed"] else ""
    click.echo(f"took {elapsed:.2f} s{rate}")
    click.echo(line)  # the closing line, alone: `replayed N, kept M, failed K`


@dead.command(cls=ManCommand, epilog=_EPILOG)
@_common
@option(
    "--older-than",
    section="Selection",
    type=Duration(allow_zero=True),
    default=None,
    metavar="DURATION",
    help="Only letters that failed longer ago than this (14d, 12h); those without a failure time stay.",
)
@_selection_options
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

    Asks first, unless --yes; refuses without --yes when stdin is not a terminal (exit 2).
    """
    name = _queue(queue, dead_queue)
    selection = _selection(error_types, message_ids)
    target = _url(ctx, url, config_path)
    run = functools.partial(dl.purge_dead_letters, queue=name, selection=selection, older_than=older_than)
    if not yes and not dry_run:
        if not _can_ask():
            raise CliError("refusing to purge without --yes: stdin is not a terminal to ask on", EXIT_USAGE)
        counted: dl.PurgeResult = _call(target, lambda b: run(b, dry_run=True))
        if counted.purged == 0:
            click.echo(f"nothing to purge in {safe(name)} ({counted.kept} kept)")
            return
        click.confirm(
            f"Drop {counted.purged} dead letter(s) from {safe(name)} for good (keep {counted.kept})?",
            abort=True,
            err=True,
        )
    result: dl.PurgeResult = _call(target, lambda b: run(b, dry_run=dry_run))
    if as_json:
        _echo_json(result.as_dict())
        return
    click.echo(f"took {result.elapsed:.2f} s")
    click.echo(result.line())
