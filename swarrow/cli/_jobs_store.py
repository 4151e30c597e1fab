"""Which job store `swarrow jobs` asks: --store / SWARROW_TRACK_JOBS, else the one the config file names."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from swarrow.cli.errors import CliError
from swarrow.config import SwarrowConfig, load_config, queue_names
from swarrow.errors import ConfigurationError
from swarrow.exits import EXIT_USAGE
from swarrow.jobs import JobRecord, JobStore, JobStoreError, mask_store_url

__all__ = [
    "DEFAULT_CONFIG",
    "check_store",
    "config_store",
    "record_replays",
    "resolve_store",
    "store_options",
]

T = TypeVar("T")

# Read when neither --store, SWARROW_TRACK_JOBS nor --config is given (as `consume NAME` does).
DEFAULT_CONFIG = "swarrow.toml"


def _checked(url: str, where: str) -> str:
    """`url` if swarrow can use it; a usage error naming where it was written (password masked) if not."""
    try:
        JobStore.open(url)
    except ConfigurationError as exc:
        raise CliError(f"{where}: {exc}", EXIT_USAGE) from None
    return url


def _from_config(config: SwarrowConfig, consumer: str | None) -> str:
    if consumer is not None:
        try:
            chosen = config.consumer(consumer)
        except ConfigurationError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        url = chosen.values.get("track_jobs")
        if not url:
            raise CliError(
                f"consumer {consumer!r} in {config.source} tracks no jobs "
                f"(no track_jobs in [consumers.{consumer}], no store in [jobs])",
                EXIT_USAGE,
            )
        return _checked(str(url), chosen.where("track_jobs"))
    shared = config.shared.get("track_jobs")
    if shared:
        return _checked(str(shared), f"store in [jobs] of {config.source}")
    stores: dict[str, list[str]] = {}
    for name, each in config.consumers.items():
        if each.values.get("track_jobs"):
            stores.setdefault(str(each.values["track_jobs"]), []).append(name)
    if not stores:
        raise CliError(
            f"{config.source} names no job store: set store in [jobs] or track_jobs in a [consumers.NAME] "
            "table, or pass --store URL",
            EXIT_USAGE,
        )
    if len(stores) > 1:
        listing = "; ".join(
            f"{', '.join(repr(n) for n in names)}: {mask_store_url(url)}" for url, names in stores.items()
        )
        raise CliError(
            f"the consumers of {config.source} track jobs in different stores ({listing}): "
            "pick one with --consumer NAME",
            EXIT_USAGE,
        )
    url, names = next(iter(stores.items()))
    return _checked(url, config.consumers[names[0]].where("track_jobs"))


def resolve_store(store_url: str | None, config_path: str | None, consumer: str | None) -> str | None:
    """The store URL: --store (or its environment variable), else the config file's; None when neither."""
    if store_url:
        return store_url
    path = config_path
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    if path is None:
        if consumer is not None:
            raise CliError(
                f"--consumer needs --config FILE (there is no ./{DEFAULT_CONFIG} here)", EXIT_USAGE
            )
        return None
    try:
        config = load_config(path)
    except ConfigurationError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return _from_config(config, consumer)


def store_options(func: Callable[..., T]) -> Callable[..., T]:
    """--store, --config and --consumer, handed to the command as one `store_url` (or None)."""

    @functools.wraps(func)
    def command(*args: Any, config_path: str | None, consumer: str | None, **kwargs: Any) -> T:
        kwargs["store_url"] = resolve_store(kwargs.get("store_url"), config_path, consumer)
        return func(*args, **kwargs)

    for decorator in (
        click.option(
            "--consumer",
            metavar="NAME",
            help="With --config: the store of this [consumers.NAME] (needed when consumers use different "
            "stores).",
        ),
        click.option(
            "--config",
            "-c",
            "config_path",
            metavar="FILE",
            type=click.Path(dir_okay=False),
            help=f"A swarrow.toml: ask the store its [jobs] store or its consumers' track_jobs name "
            f"(default: ./{DEFAULT_CONFIG} when it exists and no --store is given).",
        ),
        click.option(
            "--store",
            "store_url",
            envvar="SWARROW_TRACK_JOBS",
            metavar="URL",
            help="The job store: sqlite:///path/jobs.db or postgresql://user:password@host/db "
            "(env SWARROW_TRACK_JOBS; what `consume --track-jobs` writes to). Wins over --config.",
        ),
    ):
        command = decorator(command)
    return command


def check_store(url: str | None, where: str) -> str | None:
    """`url` if swarrow can use it (None stays None); a usage error naming `where` if not."""
    return None if not url else _checked(url, where)


def config_store(config_path: str | None, dead_queues: tuple[str, ...] = ()) -> str | None:
    """The job store a config file names: that of the consumer whose dead letters are `dead_queues`
    (its track_jobs), else its [jobs] store; None when it names none."""
    if config_path is None:
        return None
    try:
        config = load_config(config_path)
    except ConfigurationError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    for consumer in config.consumers.values():
        if any(f"{q}.dead" in dead_queues or f"{q}_dl" in dead_queues for q in queue_names(consumer.values)):
            url = consumer.values.get("track_jobs")
            return check_store(str(url), consumer.where("track_jobs")) if url else None
    url = config.shared.get("track_jobs")
    return check_store(str(url) if url else None, f"store in [jobs] of {config_path}")


def record_replays(url: str, records: list[JobRecord]) -> None:
    """Write the replayed jobs' records, best-effort: a store that fails gets a warning, not an exit code."""
    from swarrow.cli.bootstrap import run_anyio

    async def write() -> None:
        async with JobStore.open(url) as store:
            for start in range(0, len(records), 5000):
                await store.write(records[start : start + 5000])

    try:
        run_anyio(write, use_uvloop=False)
    except (JobStoreError, OSError) as exc:
        click.echo(
            f"warning: {len(records)} replayed job(s) not recorded as waiting again in the job store: {exc}",
            err=True,
        )
