"""`swarrow consume | declare | publish`: the thin command line that supervisord and Kubernetes run.

Parse, import `module:callable`, build the default stack, `anyio.run`. Exit codes are the contract
with the process manager (see `EXIT_CODES`); a user error prints one `Error: ...` line, never a traceback.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, Final, NoReturn, TypeVar

import anyio
import click
from click.core import ParameterSource

from swarrow import __version__
from swarrow.broker import DEFAULT_URL, Broker, mask_url, open_broker
from swarrow.config import LOG_FORMATS, LOG_LEVELS, load_config
from swarrow.control import StopReason
from swarrow.errors import BrokerUnavailableError, ConfigurationError, PublishError
from swarrow.message import Message
from swarrow.topology import RetryTopology, exponential_delays
from swarrow.units import format_duration, parse_delays, parse_duration, parse_megabytes

__all__ = [
    "EXIT_BROKER",
    "EXIT_CODES",
    "EXIT_CRASH",
    "EXIT_IMPORT",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "cli",
    "import_callable",
    "main",
]

logger = logging.getLogger("swarrow.cli")

EXIT_OK: Final = 0
EXIT_CRASH: Final = 1
EXIT_USAGE: Final = 2
EXIT_IMPORT: Final = 3
EXIT_BROKER: Final = 4
EXIT_CODES: Final[Mapping[int, str]] = {
    EXIT_OK: "graceful stop: a limit, a signal (SIGTERM/SIGINT), --stop-when-idle, or the callback asked",
    EXIT_CRASH: "the consumer crashed: an exception escaped the stack (--no-catch), or a publish was nacked",
    EXIT_USAGE: "usage: a bad flag, value or config file, a missing queue, conflicting queue arguments",
    EXIT_IMPORT: "the callable cannot be imported (missing module or attribute, error while importing)",
    EXIT_BROKER: "the broker is unreachable or refused the credentials",
}

T = TypeVar("T")
_V = TypeVar("_V")


class CliError(click.ClickException):
    """A user-facing failure: printed as `Error: message`, exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class only


# -- parameter types ---------------------------------------------------------------------------------------


class _Parsed(click.ParamType[_V]):
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


def _Duration(*, allow_zero: bool = False) -> _Parsed[float]:
    return _Parsed("DURATION", functools.partial(parse_duration, allow_zero=allow_zero))


def _Size() -> _Parsed[float]:
    return _Parsed("SIZE", parse_megabytes)


def _Delays() -> _Parsed[tuple[float, ...]]:
    return _Parsed("DELAYS", parse_delays)


def _Address() -> _Parsed[tuple[str, int]]:
    from swarrow.metrics import parse_metrics_addr

    return _Parsed("HOST:PORT", parse_metrics_addr)


class _Header(click.ParamType[tuple[str, str]]):
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


# -- man-page help: options grouped into sections -----------------------------------------------------------

SECTIONS: Final = ("General", "Connection", "Concurrency", "Limits", "Retry", "Observability", "Lifecycle")


class GroupedOption(click.Option):
    """An option that knows which help section it belongs to."""

    def __init__(self, *args: Any, section: str = "General", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


RAW_ARGS: Final = "swarrow.raw_args"


class ManCommand(click.Command):
    """A command whose `--help` lists options under section headings, man-page style."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Kept as typed: a `--workers` supervisor re-runs the same command line for each worker.
        ctx.meta[RAW_ARGS] = list(args)
        return super().parse_args(ctx, args)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Argument):
                continue  # arguments are described in the command's help text
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "section", "General"), []).append(record)
        for name in sorted(sections, key=lambda s: SECTIONS.index(s) if s in SECTIONS else len(SECTIONS)):
            with formatter.section(name):
                formatter.write_dl(sections[name])


def option(*decls: str, section: str, **kwargs: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """`click.option` placed in a help `section`, with its default shown."""
    kwargs.setdefault("show_default", True)
    return click.option(*decls, cls=GroupedOption, section=section, **kwargs)


_EXIT_EPILOG = "\b\nExit status:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())
_ENV_EPILOG = "\b\nEnvironment:\n  SWARROW_URL  broker URL used when --url is not given"

# -- errors, imports, logging ------------------------------------------------------------------------------


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _fail(exc: BaseException) -> NoReturn:
    """Turn an exception from a run into the exit code and one-line message of its class."""
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, click.ClickException):
            raise leaf from None
    for kind, code in ((BrokerUnavailableError, EXIT_BROKER), (ConfigurationError, EXIT_USAGE)):
        for leaf in leaves:
            if isinstance(leaf, kind):
                raise CliError(str(leaf), code) from None
    first = leaves[0] if leaves else exc
    logger.debug("the consumer crashed", exc_info=first)
    raise CliError(f"the consumer crashed: {type(first).__name__}: {first}", EXIT_CRASH) from None


def import_callable(spec: str) -> Callable[..., Any]:
    """Import `module:attr` (attr may be dotted) from the working directory first, like uvicorn.

    Raises CliError with exit code 3 saying which module or attribute failed and why.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected module:callable (e.g. myapp.handlers:handle), got {spec!r}", EXIT_USAGE)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    prefix = f"cannot import {spec!r}"
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CliError(f"{prefix}: module {exc.name!r} not found", EXIT_IMPORT) from None
        raise CliError(f"{prefix}: {type(exc).__name__}: {exc}", EXIT_IMPORT) from None
    except Exception as exc:
        raise CliError(f"{prefix}: {type(exc).__name__} while importing: {exc}", EXIT_IMPORT) from None
    owner = module_name
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"{prefix}: module {owner!r} has no attribute {part!r}", EXIT_IMPORT) from None
        owner = f"{owner}.{part}" if owner != module_name else f"{module_name}:{part}"
    if not callable(obj):
        raise CliError(f"{prefix}: {attr!r} is a {type(obj).__name__}, not a callable", EXIT_IMPORT)
    return obj  # type: ignore[no-any-return]


def _configure_logging(level: str, fmt: str) -> None:
    from swarrow._pool_status import pool_worker_env
    from swarrow.logs import configure_logging

    try:
        pool = pool_worker_env()
    except ValueError:
        pool = None  # reported where the pool settings are used
    configure_logging(level, "json" if fmt == "json" else "text", worker=None if pool is None else pool.slot)


def _run(fn: Callable[[], Any], *, use_uvloop: bool = True) -> Any:
    options: dict[str, Any] = {}
    if use_uvloop:
        try:
            import uvloop  # noqa: F401

            options["use_uvloop"] = True
        except ImportError:
            pass
    return anyio.run(fn, backend="asyncio", backend_options=options)


# -- the commands ------------------------------------------------------------------------------------------


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=_EXIT_EPILOG,
)
@click.version_option(__version__, "-V", "--version", prog_name="swarrow")
def cli() -> None:
    """Consume RabbitMQ messages through a stack of processors (declare queues, publish test messages)."""


def _url_option() -> Callable[[Callable[..., T]], Callable[..., T]]:
    return option(
        "--url",
        section="Connection",
        envvar="SWARROW_URL",
        default=DEFAULT_URL,
        metavar="URL",
        help="Broker URL: amqp://user:pass@host:port/vhost, amqps://..., or memory://NAME (in process).",
    )


def _retry_options(func: Callable[..., T]) -> Callable[..., T]:
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
                type=_Delays(),
                default=None,
                show_default="exponential: 1s,2s,4s",
                help="Delay of each retry: a list (1s,5s,30s) or doubling up to a cap (exp:1s..16m); "
                "sets the number of attempts.",
            ),
        ]
    ):
        func = decorator(func)
    return func


def _resolve_delays(ctx: click.Context, attempts: int, delays: tuple[float, ...] | None) -> tuple[float, ...]:
    if delays is None:
        return exponential_delays(attempts)
    if _given(ctx, "retry_attempts") and attempts != len(delays):
        spelled = ",".join(format_duration(d) for d in delays)
        raise CliError(
            f"--retry-attempts {attempts} does not match --retry-delays {spelled} ({len(delays)} delays): "
            "give one of them, or as many delays as attempts",
            EXIT_USAGE,
        )
    return delays


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


_CONSUME_HELP = """Consume QUEUE, calling TARGET for each message through the default stack.

\b
TARGET is module:callable (importable from the working directory), or, with --config, the name of a
[consumers.NAME] table. The callable takes a swarrow.Message; sync functions run in worker threads,
async ones on the event loop. Return False or raise StopConsumer to stop after this message; raise
PermanentError to dead-letter now, RetryLater to retry without spending an attempt.

\b
Stack, outermost first (disabled layers are left out):
  signal_handler → max_runtime → max_messages → memory_limit → stop_when_idle → metrics → logger →
  exception_catcher → ack → delivery_limit → retry → time_limit → your callable

Precedence: flags (and SWARROW_URL) > the --config file > the defaults shown below.
"""

_CONSUME_EPILOG = (
    "\b\nExamples:\n"
    "  swarrow consume myapp.handlers:send_email --queue emails --concurrency 10 --max-messages 10000\n"
    "  swarrow consume myapp.tasks:run --queue jobs --retry-delays exp:1s..16m --declare --log-format json\n"
    "  swarrow consume --config swarrow.toml emails --max-runtime 1h\n\n"
    f"{_ENV_EPILOG}\n\n{_EXIT_EPILOG}"
)


@cli.command(cls=ManCommand, help=_CONSUME_HELP, epilog=_CONSUME_EPILOG, no_args_is_help=True)
@click.argument("target", required=False, metavar="TARGET")
@option(
    "--queue",
    "-q",
    section="General",
    metavar="QUEUE",
    help="Queue to consume (required unless in --config).",
)
@option(
    "--config",
    "-c",
    "config_path",
    section="General",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A swarrow.toml with named consumers; TARGET is then the consumer's name.",
)
@_url_option()
@option(
    "--declare",
    section="Connection",
    is_flag=True,
    help="Declare QUEUE and its retry/dead-letter queues first.",
)
@option("--quorum", section="Connection", is_flag=True, help="With --declare: declare quorum queues.")
@option(
    "--prefetch",
    section="Concurrency",
    type=click.IntRange(min=1),
    default=100,
    help="Unacked deliveries the broker may push at once (>= --concurrency).",
)
@option(
    "--concurrency",
    section="Concurrency",
    type=click.IntRange(min=1),
    default=1,
    help="Messages processed at the same time.",
)
@option(
    "--workers",
    section="Concurrency",
    type=click.IntRange(min=1),
    default=1,
    help="Worker processes. N > 1: a supervisor keeps N consumers (each its own connection) alive, "
    "replaces one that hit a limit at once and one that crashed with backoff; SIGHUP replaces them "
    "one at a time; --metrics-addr then serves the whole pool, plus /status.",
)
@option(
    "--restart-backoff-max",
    section="Concurrency",
    type=_Duration(),
    default="30s",
    help="With --workers: longest wait before restarting a crashed worker (1s, 2s, 4s … up to this).",
)
@option(
    "--ack-batch-size",
    section="Concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Coalesce acks: one multiple-ack per this many finished messages "
    "[default: min(100, prefetch/2)]; 1 acks each message alone.",
)
@option(
    "--ack-flush-ms",
    section="Concurrency",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    help="Flush coalesced acks at least this often, in milliseconds.",
)
@option(
    "--uvloop/--no-uvloop", section="Concurrency", default=True, help="Run on uvloop when it is installed."
)
@option(
    "--max-messages",
    section="Limits",
    type=click.IntRange(min=1),
    default=None,
    help="Stop (exit 0) after N messages.",
)
@option(
    "--max-runtime",
    section="Limits",
    type=_Duration(),
    default=None,
    help="Stop (exit 0) after this long: 30m, 2h.",
)
@option(
    "--memory-limit",
    section="Limits",
    type=_Size(),
    default=None,
    help="Stop (exit 0) once RSS reaches this: 256MiB, 1G (binary: MB = MiB; a bare number is MiB).",
)
@option(
    "--time-limit",
    section="Limits",
    type=_Duration(),
    default=None,
    help="Fail a message running longer than this (500ms, 30s); it is retried like any failure.",
)
@option(
    "--retry/--no-retry",
    section="Retry",
    default=True,
    help="Retry failed messages through the broker's TTL queues, then dead-letter to QUEUE.dead.",
)
@_retry_options
@option(
    "--delivery-limit",
    section="Retry",
    type=click.IntRange(min=1),
    default=None,
    help="Dead-letter a message redelivered more than N times (poison guard).",
)
@option(
    "--requeue-on-error",
    section="Retry",
    is_flag=True,
    help="Requeue (instead of reject) a message whose failure escaped retry.",
)
@option(
    "--catch/--no-catch",
    section="Retry",
    default=True,
    help="Log a failure and keep consuming; --no-catch lets it stop the consumer (exit 1).",
)
@option(
    "--metrics-addr",
    section="Observability",
    type=_Address(),
    default=None,
    help="Serve /metrics, /healthz, /readyz on HOST:PORT (e.g. 127.0.0.1:9100); off unless given.",
)
@option(
    "--log-level",
    section="Observability",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    help="Log level; DEBUG also prints tracebacks of crashes.",
)
@option(
    "--log-format",
    section="Observability",
    type=click.Choice(LOG_FORMATS),
    default="text",
    help="text, or json: one object per line.",
)
@option("--log/--no-log", section="Observability", default=True, help="Log one line per message.")
@option(
    "--log-body", section="Observability", is_flag=True, help="Include message bodies in per-message logs."
)
@option(
    "--grace-period",
    section="Lifecycle",
    type=_Duration(allow_zero=True),
    default="30s",
    help="On stop, let in-flight messages finish this long; the rest are redelivered.",
)
@option(
    "--stop-when-idle",
    section="Lifecycle",
    type=_Duration(),
    default=None,
    help="Stop (exit 0) once no message arrived for this long: drain and exit.",
)
@option(
    "--signals/--no-signals",
    section="Lifecycle",
    default=True,
    help="Stop gracefully on SIGTERM, SIGINT, SIGQUIT.",
)
@click.pass_context
def consume(ctx: click.Context, /, target: str | None, config_path: str | None, **params: Any) -> None:
    """Consume (the help text is _CONSUME_HELP)."""
    settings = _consume_settings(ctx, target, config_path, params)
    _configure_logging(settings["log_level"], settings["log_format"])
    from swarrow._pool_status import pool_worker_env

    pool_worker = pool_worker_env()
    if settings["workers"] > 1 and pool_worker is None:
        ctx.exit(_supervise(ctx, settings))
    callback = import_callable(settings["callable"])
    from swarrow.runner import consume as consume_async

    url = settings["url"]
    logger.info("swarrow %s: consuming %s from %s", __version__, settings["queue"], mask_url(url))
    stack_options = {
        key: settings[key]
        for key in (
            "signals", "max_runtime", "max_messages", "memory_limit", "log", "log_body", "catch",
            "requeue_on_error", "delivery_limit", "retry", "quorum", "time_limit", "stop_when_idle",
        )
    }  # fmt: skip
    if settings["retry"]:
        stack_options["retry_delays"] = settings["retry_delays"]
        stack_options["retry_attempts"] = len(settings["retry_delays"])
    metrics_address = settings["metrics_addr"]
    run_options: dict[str, Any] = stack_options
    if pool_worker is not None:
        # A pool worker: its supervisor serves the metrics (summed over the pool) and checked the queues.
        metrics_address = None
        run_options = {"processors": _pool_worker_layers(pool_worker, stack_options)}
    try:
        reason: StopReason = _run(
            functools.partial(
                consume_async,
                callback,
                queue=settings["queue"],
                url=url,
                prefetch=settings["prefetch"],
                concurrency=settings["concurrency"],
                ack_batch_size=settings["ack_batch_size"],
                ack_flush_interval=settings["ack_flush_ms"] / 1000.0,
                grace_period=settings["grace_period"],
                declare=settings["declare"],
                metrics_address=metrics_address,
                **run_options,
            ),
            use_uvloop=settings["uvloop"],
        )
    except Exception as exc:
        _fail(exc)
    logger.info("stopped (%s); exiting 0", reason)
    _exit_now_if_threads_hang(0)


def _exit_now_if_threads_hang(code: int) -> None:
    """Exit without joining callback threads abandoned by a time limit or a stop: they may never return."""
    workers = [t for t in threading.enumerate() if t.name == "AnyIO worker thread"]
    for thread in workers:
        thread.join(timeout=0.5)  # idle ones are being told to exit; a busy one is what we look for
    hung = [t for t in workers if t.is_alive()]
    if hung:
        logger.warning(
            "%d sync callback thread(s) still running after the stop; exiting without them", len(hung)
        )
        logging.shutdown()
        os._exit(code)


def _pool_worker_layers(pool: Any, stack_options: dict[str, Any]) -> Callable[..., list[Any]]:
    """The default stack of a pool worker, under a layer reporting to the supervisor."""
    from processors.defaults import default_stack
    from processors.pool_status import PoolStatusProcessor
    from swarrow._pool_status import MULTIPROC_DIR_ENV
    from swarrow.stack import Layer

    options = dict(stack_options, metrics=bool(os.environ.get(MULTIPROC_DIR_ENV)))

    def layers(provider: Any, publisher: Any) -> list[Any]:
        # Outermost: it counts every message and, leaving last, reports the final stop reason.
        status = Layer(PoolStatusProcessor, directory=pool.directory, slot=pool.slot, provider=provider)
        return [status, *default_stack(provider=provider, publisher=publisher, **options)]

    return layers


def _supervise(ctx: click.Context, settings: dict[str, Any]) -> int:
    """Run `--workers N`: check the queues once, then supervise N copies of this command."""
    from swarrow.pool import Backoff, WorkerPool, default_command, strip_options
    from swarrow.runner import prepare_queues

    url = settings["url"]

    async def check() -> None:
        # Once here rather than N times in the workers (who then skip the retry-queue check): a
        # missing queue or an unreachable broker is exit 2 or 4 before any worker starts.
        async with _connected(url) as broker:
            await prepare_queues(
                broker,
                settings["queue"],
                declare=settings["declare"],
                retry=settings["retry"],
                delays=settings["retry_delays"] if settings["retry"] else (),
                quorum=settings["quorum"],
            )

    if not url.startswith("memory://"):
        try:
            _run(check, use_uvloop=False)
        except Exception as exc:
            _fail(exc)
    pool_only = {"--workers": True, "--metrics-addr": True, "--restart-backoff-max": True}
    args = strip_options(ctx.meta.get(RAW_ARGS, sys.argv[2:]), pool_only)
    try:
        pool = WorkerPool(
            default_command(args),
            workers=settings["workers"],
            metrics_address=settings["metrics_addr"],
            grace_period=settings["grace_period"],
            backoff=Backoff(
                initial=min(1.0, settings["restart_backoff_max"]), maximum=settings["restart_backoff_max"]
            ),
        )
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    logger.info(
        "swarrow %s: supervising %d workers consuming %s from %s",
        __version__,
        settings["workers"],
        settings["queue"],
        mask_url(url),
    )
    try:
        return pool.run_sync()
    except Exception as exc:  # e.g. --metrics-addr in use: exit 2, one line
        _fail(exc)


def _consume_settings(
    ctx: click.Context, target: str | None, config_path: str | None, params: dict[str, Any]
) -> dict[str, Any]:
    """Flags over config over defaults, checked; every value keyed by its option name."""
    settings = dict(params)
    settings["callable"] = target
    if config_path is not None:
        try:
            consumer = load_config(config_path).consumer(target)
        except ConfigurationError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        settings["callable"] = None
        for key, value in consumer.values.items():
            if key == "callable" or not _given(ctx, key):
                settings[key] = value
        if settings["callable"] is None:
            raise CliError(f"consumer {consumer.name!r} in {consumer.source} has no 'callable'", EXIT_USAGE)
    elif target is None:
        raise click.UsageError("give TARGET (module:callable), or --config FILE [NAME]", ctx)
    if not settings["queue"]:
        raise click.UsageError("--queue is required (or `queue` in the --config consumer)", ctx)
    if settings["prefetch"] < settings["concurrency"]:
        raise CliError(
            f"--prefetch ({settings['prefetch']}) must be >= --concurrency ({settings['concurrency']}): "
            "workers beyond the prefetch window would never get a message",
            EXIT_USAGE,
        )
    settings["log_level"] = str(settings["log_level"]).upper()
    if settings["retry"]:
        settings["retry_delays"] = _resolve_delays(ctx, settings["retry_attempts"], settings["retry_delays"])
    return settings


@cli.command(cls=ManCommand, no_args_is_help=True, epilog=f"{_ENV_EPILOG}\n\n{_EXIT_EPILOG}")
@option("--queue", "-q", section="General", required=True, metavar="QUEUE", help="Queue to declare.")
@_url_option()
@option("--quorum", section="Connection", is_flag=True, help="Declare quorum queues (x-queue-type=quorum).")
@option(
    "--retry/--no-retry",
    section="Retry",
    default=True,
    help="Also declare QUEUE.retry.N (one per delay) and QUEUE.dead.",
)
@_retry_options
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
    delays = _resolve_delays(ctx, retry_attempts, retry_delays) if retry else ()
    topology = RetryTopology(queue, delays or (1.0,), quorum=quorum)
    planned = topology.queues() if retry else topology.queues()[:1]

    async def go() -> list[str]:
        lines: list[str] = []
        async with _connected(url) as broker:
            for name, arguments in planned:
                info = await broker.declare_queue(name, arguments=arguments or None)
                lines.append(_describe(info.created, name, arguments, info.message_count, queue))
        return lines

    try:
        lines = _run(go)
    except Exception as exc:
        _fail(exc)
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


class _Connected:
    """`async with _connected(url) as broker`: connect (exit 4 if unreachable), always close."""

    def __init__(self, url: str) -> None:
        self.broker: Broker = open_broker(url)

    async def __aenter__(self) -> Broker:
        await self.broker.connect()
        return self.broker

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.broker.close()


def _connected(url: str) -> _Connected:
    try:
        return _Connected(url)
    except ConfigurationError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


@cli.command(cls=ManCommand, no_args_is_help=True, epilog=f"{_ENV_EPILOG}\n\n{_EXIT_EPILOG}")
@click.argument("stdin", required=False, metavar="[-]")
@option(
    "--queue",
    "-q",
    section="General",
    required=True,
    metavar="QUEUE",
    help="Queue to publish to (default exchange).",
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
    type=_Header(),
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
    section="General",
    default=None,
    help="The content_type property (e.g. application/json).",
)
@_url_option()
@option(
    "--window",
    section="Concurrency",
    type=click.IntRange(min=1),
    default=100,
    help="Publishes awaiting their confirm at once.",
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
    queue: str,
    body: str | None,
    file: IO[bytes] | None,
    count: int,
    headers: Sequence[tuple[str, str]],
    persistent: bool,
    content_type: str | None,
    url: str,
    window: int,
    progress: bool | None,
) -> None:
    """Publish messages to QUEUE with publisher confirms and report the confirmed rate.

    The body comes from --body, --file, or '-' (stdin). Each message gets a unique message_id.
    A queue that does not exist is an error (exit 2); a nacked publish stops with exit 1 and says
    how many were confirmed before it.
    """
    sources = [s for s in (body is not None, file is not None, stdin is not None) if s]
    if stdin is not None and stdin != "-":
        raise click.BadParameter(f"only '-' (stdin) is accepted here, got {stdin!r}", param_hint="[-]")
    if len(sources) != 1:
        raise click.UsageError("give the body with exactly one of --body TEXT, --file FILE or - (stdin)")
    if body is not None:
        payload = body.encode()
    elif file is not None:
        payload = file.read()
    else:
        payload = sys.stdin.buffer.read()
    template = Message(
        payload,
        headers=dict(headers),
        content_type=content_type,
        delivery_mode=2 if persistent else None,
    )
    show = progress if progress is not None else count >= 1000 and sys.stderr.isatty()
    try:
        elapsed = _run(functools.partial(_publish, url, queue, template, count, window, show))
    except Exception as exc:
        _fail(exc)
    rate = count / elapsed if elapsed > 0 else float("inf")
    plural = "" if count == 1 else "s"
    click.echo(
        f"published {count} message{plural} to {queue} in {elapsed:.2f} s ({rate:,.0f} msg/s, confirmed)"
    )


async def _publish(url: str, queue: str, template: Message, count: int, window: int, show: bool) -> float:
    run_id = uuid.uuid4().hex[:12]
    numbered = b"{n}" in template.body
    done = 0
    async with _connected(url) as broker:
        if await broker.inspect_queue(queue) is None:
            raise ConfigurationError(
                f"queue {queue!r} does not exist on {broker.url}: "
                f"create it with `swarrow declare --queue {queue}`"
            )
        publisher = broker.publisher()
        next_n = 1
        bar = (
            click.progressbar(
                length=count,
                label=f"publishing to {queue}",
                file=sys.stderr,
                update_min_steps=max(1, count // 200),
            )
            if show
            else None
        )

        async def worker() -> None:
            nonlocal next_n, done
            while next_n <= count:
                n = next_n
                next_n += 1
                body = template.body.replace(b"{n}", str(n).encode()) if numbered else template.body
                message = template.replace(body=body, message_id=f"{run_id}-{n}")
                try:
                    await publisher.publish(message, queue)
                except PublishError as exc:
                    raise PublishError(f"{exc} (after {done} of {count} confirmed)") from None
                done += 1
                if bar is not None:
                    bar.update(1)

        started = time.perf_counter()
        try:
            async with anyio.create_task_group() as group:
                for _ in range(min(window, count)):
                    group.start_soon(worker)
        finally:
            if bar is not None:
                bar.render_finish()
        return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    """The `swarrow` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="swarrow")
