"""`swarrow consume --workers N`: check the queues once, then run the pool; a pool worker's extra layer."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from swarrow import __version__
from swarrow.cli.bootstrap import connected, run_anyio, then_ignore_stop_signals
from swarrow.cli.errors import CliError, fail
from swarrow.cli.help import RAW_ARGS
from swarrow.exits import EXIT_USAGE
from swarrow.settings import Settings
from swarrow.urls import mask_url

__all__ = ["pool_worker_layers", "supervise"]

logger = logging.getLogger("swarrow.cli")


def pool_worker_layers(pool: Any, settings: Settings, layers: Sequence[Any]) -> Callable[..., list[Any]]:
    """The default stack of a pool worker, under a layer reporting to the supervisor."""
    from processors.defaults import default_stack
    from processors.pool_status import PoolStatusProcessor
    from swarrow.pool.status import MULTIPROC_DIR_ENV
    from swarrow.runner import with_otel_server
    from swarrow.stack import Layer

    metrics = bool(os.environ.get(MULTIPROC_DIR_ENV))
    settings = with_otel_server(settings)

    def build(provider: Any, publisher: Any) -> list[Any]:
        # Outermost: it counts every message and, leaving last, reports the final stop reason.
        status = Layer(
            PoolStatusProcessor,
            directory=pool.directory,
            slot=pool.slot,
            provider=provider,
            supervisor=pool.supervisor,
        )
        # Each worker reads the backlog (a passive declare): the gauges are `livemax` across the pool,
        # so the supervisor's /metrics shows one series, present while any worker is alive.
        broker = getattr(provider, "broker", None)
        inspect = getattr(broker, "inspect_queue", None)
        stats: Any = None
        if metrics and settings.queue_stats and inspect is not None:
            # Every queue of a multi-queue worker, as `swarrow.runner` does outside a pool.
            names = settings.queue_names
            stats = (
                functools.partial(inspect, names[0])
                if len(names) == 1
                else {queue: functools.partial(inspect, queue) for queue in names}
            )
        stack = default_stack(
            provider=provider, publisher=publisher, metrics=metrics, layers=layers, queue_stats=stats,
            **settings.stack_options(),
        )  # fmt: skip
        return [status, *stack]

    return build


def supervise(ctx: click.Context, settings: dict[str, Any]) -> int:
    """Run `--workers N`: check the queues once, then supervise N copies of this command."""
    from swarrow.pool import Backoff, WorkerPool, default_command, strip_options
    from swarrow.prepare import prepare_queues, resolve_delays_of_queues
    from swarrow.settings import queue_fields
    from swarrow.units import format_duration

    url = settings["url"]

    async def check() -> None:
        # Once here rather than N times in the workers (who then skip the retry-queue check): a
        # missing queue or an unreachable broker is exit 2 or 4 before any worker starts.
        names = queue_fields(settings["queue"])
        queues = (names["queue"], *names.get("extra_queues", ()))
        async with connected(url) as broker:
            if settings["retry"]:
                settings["retry_delays"] = await resolve_delays_of_queues(
                    broker, queues, settings["retry_delays"], explicit=settings["retry_explicit"]
                )
            for queue in queues:
                await prepare_queues(
                    broker,
                    queue,
                    declare=settings["declare"],
                    retry=settings["retry"],
                    delays=settings["retry_delays"] if settings["retry"] else (),
                    quorum=settings["quorum"],
                    retry_topology=settings["retry_topology"],
                    dead_letter_strategy=settings["dead_letter_strategy"],
                )

    if not url.startswith("memory://"):
        try:
            run_anyio(check, use_uvloop=False)
        except Exception as exc:
            fail(exc)
    # `--url` too: the workers get it in their environment, since any local user can read a command line.
    pool_only = {"--workers": True, "--metrics-addr": True, "--restart-backoff-max": True, "--url": True}
    args = strip_options(ctx.meta.get(RAW_ARGS, sys.argv[2:]), pool_only)
    if settings["retry"] and not settings["retry_explicit"]:
        # What the supervisor found (the existing retry queues' delays), so every worker agrees.
        args += ["--retry-delays", ",".join(format_duration(d) for d in settings["retry_delays"])]
    try:
        pool = WorkerPool(
            default_command(args),
            env={**os.environ, "SWARROW_URL": url},
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
        ", ".join(settings["queue"]),
        mask_url(url),
    )
    try:
        return int(run_anyio(then_ignore_stop_signals(pool.run), use_uvloop=False))
    except Exception as exc:  # e.g. --metrics-addr in use: exit 2, one line
        fail(exc)
