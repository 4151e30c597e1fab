"""Shared options and plumbing of the `swarrow dead` commands: queue and URL, time values, running one."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from swarrow import dead_letters as dl
from swarrow.broker import Broker
from swarrow.cli.bootstrap import run_anyio
from swarrow.cli.errors import CliError, fail
from swarrow.cli.help import option
from swarrow.cli.params import ParamType, url_option
from swarrow.config import load_config, queue_names
from swarrow.errors import ConfigurationError, SwarrowError
from swarrow.exits import EXIT_CRASH, EXIT_USAGE
from swarrow.factory import open_broker
from swarrow.swarrot import swarrot_dead_letter_queue_name
from swarrow.topology import dead_letter_queue_name
from swarrow.units import parse_duration

__all__ = [
    "DeadQueue",
    "Instant",
    "call",
    "check_age",
    "common_options",
    "echo_json",
    "queue_to_read",
    "resolve_url",
    "selection",
    "selection_options",
]

T = TypeVar("T")


def _ago(text: str, seconds: float) -> datetime:
    """Now minus `seconds`; a ValueError naming `text` when that is before year 1."""
    try:
        return datetime.now(UTC) - timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {text!r} is out of range (it reaches back before year 1)") from None


def check_age(value: float | None) -> float | None:
    """`--older-than`: a duration that now minus it can still be a date, or a usage error."""
    if value is not None:
        try:
            _ago(f"{value:g}s", value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--older-than'") from None
    return value


def _instant(text: str) -> datetime:
    """An ISO-8601 date or time (UTC unless it says otherwise), or a duration ago (`2h`, `7d`)."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        pass
    else:
        return _ago(text, seconds)
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use ISO-8601 (2026-01-31, 2026-01-31T12:00:00Z) "
            "or a duration ago (2h, 7d)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class Instant(ParamType):
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return _instant(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def common_options(func: Callable[..., T]) -> Callable[..., T]:
    """--queue / --dead-queue, --url, --config: how every `dead` command finds its queue."""
    for decorator in reversed(
        [
            option(
                "--queue",
                "-q",
                section="General",
                default=None,
                metavar="QUEUE",
                help="The work queue: its dead letters are read from QUEUE.dead (or swarrot's QUEUE_dl "
                "when only that one exists).",
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
                help="A swarrow.toml: without --url / SWARROW_URL, the url of the consumer of that queue, "
                "else its [connection] url.",
            ),
        ]
    ):
        func = decorator(func)
    return func


def selection_options(func: Callable[..., T]) -> Callable[..., T]:
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


@dataclass(slots=True)
class DeadQueue:
    """The dead-letter queue a command reads: --dead-queue, or QUEUE.dead — or QUEUE_dl, swarrot's name
    for it, when only that one exists (`name` is updated once the command found out)."""

    name: str
    swarrot: str | None = None

    def missing(self, exc: BaseException) -> bool:
        """True when `exc` says this queue does not exist."""
        text = f"queue {self.name!r} does not exist"
        return isinstance(exc, ConfigurationError) and str(exc).startswith(text)


def queue_to_read(queue: str | None, dead_queue: str | None) -> DeadQueue:
    if dead_queue:
        return DeadQueue(dead_queue)
    if not queue:
        raise click.UsageError(
            "give the work queue with --queue QUEUE (or a dead-letter queue with --dead-queue)"
        )
    return DeadQueue(dead_letter_queue_name(queue), swarrot_dead_letter_queue_name(queue))


def resolve_url(ctx: click.Context, url: str, config_path: str | None, read: DeadQueue | None = None) -> str:
    """--url or SWARROW_URL; else the config file's: the URL of the consumer of that queue, its
    [connection] url, or the one URL its consumers share; else the default."""
    source = ctx.get_parameter_source("url")
    if config_path is None or source in (
        click.core.ParameterSource.COMMANDLINE,
        click.core.ParameterSource.ENVIRONMENT,
    ):
        return url
    try:
        config = load_config(config_path)
    except ConfigurationError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    consumers = [c.values for c in config.consumers.values()]
    if read is not None:  # consume --config runs this queue's consumer with its own url (over [connection])
        for values in consumers:
            if values.get("url") and any(
                read.name in (dead_letter_queue_name(queue), swarrot_dead_letter_queue_name(queue))
                for queue in queue_names(values)
            ):
                return str(values["url"])
    if config.shared.get("url"):
        return str(config.shared["url"])
    urls = {str(values["url"]) for values in consumers if values.get("url")}
    return urls.pop() if len(urls) == 1 else url


def _broker(url: str) -> Broker:
    try:
        return open_broker(url)
    except (ConfigurationError, ValueError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def call(url: str, operation: Callable[[Broker], Any], queue: DeadQueue | None = None) -> Any:
    """Run `operation(broker)` on an event loop; every failure becomes one `Error:` line and its code.

    With `queue`: when QUEUE.dead does not exist, run it again on swarrot's QUEUE_dl if that exists.
    """
    broker = _broker(url)

    async def attempt() -> Any:
        try:
            return await operation(broker)
        except ConfigurationError as exc:
            if queue is None or queue.swarrot is None or not queue.missing(exc):
                raise
            first, queue.name = queue.name, queue.swarrot
            try:
                result = await operation(broker)
            except ConfigurationError as again:
                if queue.missing(again):
                    queue.name = first
                    raise exc from None
                raise
            click.echo(f"{first!r} does not exist: reading {queue.name!r} (swarrot's layout)", err=True)
            return result

    async def go() -> Any:
        try:
            return await attempt()
        finally:
            await broker.close()

    try:
        return run_anyio(go)
    except (SwarrowError, click.ClickException, BaseExceptionGroup) as exc:
        fail(exc)  # broker unreachable or lost: 4; a missing queue, bad configuration: 2
    except Exception as exc:
        raise CliError(f"the dead-letter command failed: {type(exc).__name__}: {exc}", EXIT_CRASH) from None


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def selection(
    error_types: Sequence[str],
    message_ids: Sequence[str],
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> dl.Selection:
    if since is not None and until is not None and since >= until:
        raise click.BadParameter(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    return dl.Selection(tuple(error_types), tuple(message_ids), since, until, limit)
