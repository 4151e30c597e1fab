"""Shared parameters: value types (durations, sizes, delays, addresses, headers) and common options."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import click
from click.core import ParameterSource

from swarrow.cli.errors import CliError
from swarrow.cli.help import option
from swarrow.exits import EXIT_USAGE
from swarrow.topology import DEAD_LETTER_STRATEGIES, exponential_delays
from swarrow.units import format_duration, parse_delays, parse_duration, parse_megabytes
from swarrow.urls import DEFAULT_URL, parse_url

__all__ = [
    "Address",
    "Delays",
    "Duration",
    "Header",
    "ParamType",
    "Parsed",
    "Size",
    "given",
    "resolve_delays",
    "retry_options",
    "url_option",
]

T = TypeVar("T")
_V = TypeVar("_V")

# -- parameter types ---------------------------------------------------------------------------------------


if TYPE_CHECKING:
    ParamType = click.ParamType[Any]
else:
    # click >= 8.4 makes ParamType generic; 8.2 and 8.3 (allowed by pyproject) cannot subscript it at run
    # time. Subclass this, never `click.ParamType[T]`: `make test-lowest` fails on the latter.
    ParamType = click.ParamType


class Parsed(ParamType, Generic[_V]):
    """A flag value parsed by one of swarrow's parsers; their ValueError becomes click's usage error."""

    def __init__(self, name: str, parse: Callable[[str], _V]) -> None:
        self.name = name
        self.parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> _V:
        if not isinstance(value, str):
            return value  # type: ignore[no-any-return]  # a default or config value, already parsed
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def Duration(*, allow_zero: bool = False) -> Parsed[float]:
    return Parsed("DURATION", functools.partial(parse_duration, allow_zero=allow_zero))


def Size() -> Parsed[float]:
    return Parsed("SIZE", parse_megabytes)


def Delays() -> Parsed[tuple[float, ...]]:
    return Parsed("DELAYS", parse_delays)


def Address() -> Parsed[tuple[str, int]]:
    from swarrow.http import parse_metrics_addr

    return Parsed("HOST:PORT", parse_metrics_addr)


class Header(ParamType):
    name = "KEY=VALUE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, sep, text = str(value).partition("=")
        if not sep or not key:
            self.fail(f"expected KEY=VALUE, got {value!r}", param, ctx)
        return key, text


def _check_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Parse the broker URL once, up front: a bad one is a usage error naming the problem, password masked."""
    if value is None:
        return None

    try:
        parse_url(value)
    except ValueError as exc:  # InvalidURLError: scheme, host or port named, the password masked
        source = ctx.get_parameter_source(param.name or "url")
        hint = "SWARROW_URL" if source == ParameterSource.ENVIRONMENT else "'--url'"
        raise click.BadParameter(str(exc), ctx=ctx, param_hint=hint) from None
    return value


def url_option() -> Callable[[Callable[..., T]], Callable[..., T]]:
    return option(
        "--url",
        section="Connection",
        envvar="SWARROW_URL",
        default=DEFAULT_URL,
        metavar="URL",
        callback=_check_url,
        help="Broker URL: amqp://user:pass@host:port/vhost, amqps://..., or memory://NAME (in process). "
        "Several nodes of a cluster: amqp://user:pass@h1:5672,h2:5672/vhost. Prefer SWARROW_URL or the "
        "config file: other local users can read a command line.",
    )


def dead_letter_strategy_option() -> Callable[[Callable[..., T]], Callable[..., T]]:
    return option(
        "--dead-letter-strategy",
        section="Connection",
        type=click.Choice(DEAD_LETTER_STRATEGIES),
        default="at-most-once",
        show_default=True,
        help="Quorum only: how QUEUE.retry.N move expired copies back to QUEUE. at-least-once keeps a copy "
        "until QUEUE confirmed it (x-dead-letter-strategy, with x-overflow=reject-publish), but on RabbitMQ "
        "3.10 a crash of the retry queue's leader can strand copies; at-most-once can drop a retry copy "
        "when a node stops as it expires. See README, Run on a cluster.",
    )


def retry_options(func: Callable[..., T]) -> Callable[..., T]:
    for decorator in reversed(
        [
            option(
                "--retry-attempts",
                section="Retry",
                type=click.IntRange(min=1),
                default=3,
                help="Broker-delayed retries before dead-lettering (the callback runs at most N+1 times); "
                "delays 1s, 2s, 4s … unless --retry-delays.",
            ),
            option(
                "--retry-delays",
                section="Retry",
                type=Delays(),
                default=None,
                show_default="exponential: 1s,2s,4s",
                help="Delay of each retry: a list (1s,5s,30s) or doubling up to a cap (exp:1s..16m); "
                "sets the number of attempts.",
            ),
            option(
                "--retry-topology",
                section="Retry",
                type=click.Choice(["swarrow", "swarrot"]),
                default="swarrow",
                show_default=True,
                help="Queue naming: swarrow's (Q.retry.N, Q.dead) or swarrot's and BlaBlaCar's "
                "rabbit-mq-admin-toolkit's (exchange retry, Q_retry_<delay>, exchange dl, Q_dl, header "
                "swarrot_retry_attempts), to share queues with PHP workers.",
            ),
        ]
    ):
        func = decorator(func)
    return func


def resolve_delays(ctx: click.Context, attempts: int, delays: tuple[float, ...] | None) -> tuple[float, ...]:
    if delays is None:
        return exponential_delays(attempts)
    if given(ctx, "retry_attempts") and attempts != len(delays):
        spelled = ",".join(format_duration(d) for d in delays)
        raise CliError(
            f"--retry-attempts {attempts} does not match --retry-delays {spelled} ({len(delays)} delays): "
            "give one of them, or as many delays as attempts",
            EXIT_USAGE,
        )
    return delays


def given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
