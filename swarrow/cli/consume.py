"""`swarrow consume`: flags and config into settings, then one consumer (or a pool of them)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import click

from swarrow import __version__
from swarrow.cli.bootstrap import configure_cli_logging, run_anyio, then_ignore_stop_signals
from swarrow.cli.consume_settings import DEFAULT_CONFIG, build_settings, print_settings, resolve_settings
from swarrow.cli.errors import fail
from swarrow.cli.help import ENV_EPILOG, EXIT_EPILOG, ManCommand, option
from swarrow.cli.imports import import_callable, import_object
from swarrow.cli.params import (
    Address,
    Duration,
    Size,
    dead_letter_strategy_option,
    retry_options,
    url_option,
)
from swarrow.cli.supervise import pool_worker_layers, supervise
from swarrow.config import LOG_FORMATS, LOG_LEVELS
from swarrow.control import StopReason

__all__ = ["consume"]

logger = logging.getLogger("swarrow.cli")

_CONSUME_HELP = """Consume QUEUE, calling TARGET for each message through the default stack.

\b
TARGET is module:callable (importable from the working directory), or, with --config, the name of a
[consumers.NAME] table. The callable takes a swarrow.Message; sync functions run in worker threads,
async ones on the event loop. Return False or raise StopConsumer to stop after this message; raise
PermanentError to dead-letter now, RetryLater to retry without spending an attempt.

\b
Stack, outermost first (disabled layers are left out):
  signal_handler → max_runtime → max_messages → memory_limit → stop_when_idle → metrics → logger →
  job_tracker → exception_catcher → reply → ack → delivery_limit → retry → time_limit → your callable

Precedence: flags (and SWARROW_URL) > the --config file > the defaults shown below.
"""

_CONSUME_EPILOG = (
    "\b\nExamples:\n"
    "  swarrow consume myapp.handlers:send_email --queue emails --concurrency 10 --max-messages 10000\n"
    "  swarrow consume myapp.tasks:run --queue jobs --retry-delays exp:1s..16m --declare --log-format json\n"
    "  swarrow consume --config swarrow.toml emails --max-runtime 1h\n"
    "  swarrow consume emails --print-settings          (./swarrow.toml; what would run, and why)\n"
    "  swarrow consume myapp:handle -q jobs --layer myapp.layers:SkipTestTraffic --workers 4\n\n"
    f"{ENV_EPILOG}\n\n{EXIT_EPILOG}"
)


@click.command(
    cls=ManCommand,
    help=_CONSUME_HELP,
    short_help="Consume a queue: your callable inside the processor stack.",
    epilog=_CONSUME_EPILOG,
    no_args_is_help=True,
)
@click.argument("target", required=False, metavar="TARGET")
@option(
    "--queue",
    "-q",
    section="General",
    metavar="QUEUE",
    multiple=True,
    help="Queue to consume (required unless in --config). Repeat it to consume several queues in order of "
    "preference: a free worker takes from the first that has a message (--queue urgent --queue normal); "
    "weights take them in that ratio instead (--queue urgent:5 --queue normal:1). "
    "See README 'Ordering work'.",
)
@option(
    "--config",
    "-c",
    "config_path",
    section="General",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    show_default=f"./{DEFAULT_CONFIG} when TARGET is a consumer name or left out",
    help="A config file with named [consumers.NAME] tables; TARGET is then the consumer's name.",
)
@option(
    "--print-settings",
    section="General",
    is_flag=True,
    help="Print the settings in effect (how each value was understood, and where it came from) and exit 0, "
    "without connecting.",
)
@url_option()
@option(
    "--declare",
    section="Connection",
    is_flag=True,
    help="Declare QUEUE and its retry/dead-letter queues first.",
)
@option("--quorum", section="Connection", is_flag=True, help="With --declare: declare quorum queues.")
@dead_letter_strategy_option()
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
    type=Duration(),
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
    "--layer",
    "layers",
    section="Lifecycle",
    multiple=True,
    metavar="MODULE:FACTORY",
    help="Add a processor of your own (repeatable): a class or factory taking the inner processor, "
    "innermost around your callable, first given outermost.",
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
    type=Duration(),
    default=None,
    help="Stop (exit 0) after this long: 30m, 2h.",
)
@option(
    "--memory-limit",
    section="Limits",
    type=Size(),
    default=None,
    help="Stop (exit 0) once RSS reaches this: 256MiB, 1G (binary: MB = MiB; a bare number is MiB).",
)
@option(
    "--time-limit",
    section="Limits",
    type=Duration(),
    default=None,
    help="Fail a message running longer than this (500ms, 30s); it is retried like any failure.",
)
@option(
    "--retry/--no-retry",
    section="Retry",
    default=True,
    help="Retry failed messages through the broker's TTL queues, then dead-letter to QUEUE.dead. "
    "With --no-retry a failure is rejected: dropped by RabbitMQ unless QUEUE has a dead-letter exchange.",
)
@retry_options
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
    type=Address(),
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
@option(
    "--track-jobs",
    section="Observability",
    metavar="URL",
    envvar="SWARROW_TRACK_JOBS",
    default=None,
    help="Record what became of each message in a job store (sqlite:///jobs.db, postgresql://…); "
    "best-effort: never delays an ack. Ask it with `swarrow jobs`. Env SWARROW_TRACK_JOBS.",
)
@option("--log/--no-log", section="Observability", default=True, help="Log one line per message.")
@option(
    "--queue-stats/--no-queue-stats",
    section="Observability",
    default=True,
    help="With --metrics-addr: read the queue's ready messages and consumers with a passive declare every "
    "--queue-stats-interval (swarrow_queue_messages_ready, swarrow_queue_consumers: what KEDA can scale on).",
)
@option(
    "--queue-stats-interval",
    section="Observability",
    type=Duration(),
    default="5s",
    help="How often --queue-stats asks RabbitMQ.",
)
@option(
    "--otel",
    section="Observability",
    is_flag=True,
    help="Trace with OpenTelemetry: a span per message and per publish, the producer's trace continued "
    "(pip install 'swarrow[otel]'). Without a tracer provider set up already (opentelemetry-instrument), "
    "the SDK is configured from OTEL_* variables: OTEL_TRACES_EXPORTER=otlp|console|none, "
    "OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME.",
)
@option(
    "--log-body", section="Observability", is_flag=True, help="Include message bodies in per-message logs."
)
@option(
    "--serial-header",
    section="Concurrency",
    default=None,
    metavar="HEADER",
    help="Run messages sharing this header's value (e.g. x-serial-group) one at a time, in arrival order; "
    "other groups run concurrently up to --concurrency (waiting ones hold no slot, but count against "
    "--prefetch).",
)
@option(
    "--grace-period",
    section="Lifecycle",
    type=Duration(allow_zero=True),
    default="30s",
    help="On stop, let in-flight messages finish this long; the rest are redelivered.",
)
@option(
    "--stop-when-idle",
    section="Lifecycle",
    type=Duration(),
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
    settings = resolve_settings(ctx, target, config_path, params)
    if settings["print_settings"]:
        print_settings(settings)
        return
    configure_cli_logging(settings["log_level"], settings["log_format"])
    from swarrow.pool.status import pool_worker_env

    pool_worker = pool_worker_env()
    if pool_worker is not None and pool_worker.supervisor is not None:
        from swarrow.pool.parent import watch_supervisor

        # Before the callable's import and the connection: a supervisor killed meanwhile is noticed.
        watch_supervisor(pool_worker.supervisor, grace=settings["grace_period"] + 10.0)
    # Imported first, pool or not: an import error is exit 3 naming the module, not a queue error.
    callback = import_callable(settings["callable"])
    layers = [import_object(spec, example="myapp.layers:SkipTestTraffic") for spec in settings["layers"]]
    settings["retry_explicit"] = {settings.source("retry_attempts"), settings.source("retry_delays")} != {
        "default"
    }
    run_settings = build_settings(settings.values)  # typed and checked once; the run reads only this
    if settings["workers"] > 1 and pool_worker is None:
        ctx.exit(supervise(ctx, settings.values))
    from swarrow.runner import consume as consume_async

    # Only what is true now: the queues are reported once checked, "consuming" once it consumes.
    logger.info("swarrow %s starting (pid %d)", __version__, os.getpid())
    processors = None
    if pool_worker is not None:
        # A pool worker: its supervisor serves the metrics (summed over the pool) and checked the queues.
        run_settings = dataclasses.replace(run_settings, metrics_address=None, retry_explicit=True)
        processors = pool_worker_layers(pool_worker, run_settings, layers)
    sdk = None
    if settings["otel"]:
        from swarrow.otel import configure_sdk

        try:
            sdk = configure_sdk()
        except Exception as exc:
            fail(exc)
    _run_and_leave(
        then_ignore_stop_signals(
            functools.partial(consume_async, callback, run_settings, processors=processors, layers=layers)
        ),
        use_uvloop=settings["uvloop"],
        sdk=sdk,
    )


def _run_and_leave(run: Any, *, use_uvloop: bool, sdk: Any) -> None:
    """Run the consumer to its end and leave: exit 0 after a stop, the error's code after a crash.

    Never waits for a sync callback thread that outlived the stop (`exit_if_callback_threads_hang`),
    whenever a second Ctrl-C comes.
    """
    from swarrow.runner import exit_if_callback_threads_hang, ignore_stop_signals_if_threads_hang

    error: click.ClickException | None = None
    code = 130  # what a Ctrl-C gets before the consumer's own ending is known
    try:
        try:
            reason: StopReason = run_anyio(run, use_uvloop=use_uvloop)
            code = 0
        except Exception as exc:
            try:
                fail(exc)
            except click.ClickException as failure:
                error = failure
                code = failure.exit_code
        finally:
            ignore_stop_signals_if_threads_hang()
            if sdk is not None:
                from swarrow.otel import shutdown_sdk

                shutdown_sdk(sdk)  # flushes the spans still batched, within a budget
        if error is not None:
            # A crash with a callback thread stuck in its call: exit with the error, never wait for it.
            exit_if_callback_threads_hang(error.exit_code, last_words=error.show)
            raise error
        logger.info("stopped (%s); exiting 0", reason)
        exit_if_callback_threads_hang(0)
    except KeyboardInterrupt:
        # A Ctrl-C once the consumer's own signal handling had ended (its loop closing, or just before
        # the signals were ignored): with a stuck callback thread Python would wait for it at exit.
        exit_if_callback_threads_hang(code)
        raise
