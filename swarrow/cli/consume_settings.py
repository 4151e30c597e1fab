"""`swarrow consume`'s settings: flags › config file › defaults, checked once, each value knowing its source.

An error about a value names it the way the user wrote it: `--prefetch` for a flag, `prefetch in
[consumers.emails] of swarrow.toml` for the config file. `--print-settings` shows the result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import click
from click.core import ParameterSource

from swarrow.cli.errors import CliError
from swarrow.cli.params import given
from swarrow.config import ConsumerConfig, load_config
from swarrow.errors import ConfigurationError
from swarrow.exits import EXIT_USAGE
from swarrow.settings import Settings, queue_fields
from swarrow.swarrot import swarrot_delays_needed
from swarrow.topology import exponential_delays
from swarrow.units import format_duration

__all__ = ["DEFAULT_CONFIG", "ConsumeSettings", "build_settings", "print_settings", "resolve_settings"]

# Read when TARGET is a consumer name (or left out) and --config is not given.
DEFAULT_CONFIG: Final = "swarrow.toml"


@dataclass(slots=True)
class ConsumeSettings:
    """The values `consume` runs with (keyed by option name) and where each came from."""

    values: dict[str, Any]
    config: ConsumerConfig | None = None
    flags: set[str] = field(default_factory=set)  # given on the command line or by the environment
    env: set[str] = field(default_factory=set)  # of those, by the environment (SWARROW_URL)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value

    def source(self, key: str) -> str:
        """`flag`, `config` or `default`."""
        if key in self.flags:
            return "flag"
        if self.config is not None and key in self.config.values:
            return "config"
        return "default"

    def name(self, key: str) -> str:
        """How the user wrote `key`: `--retry-attempts`, or `attempts in [consumers.x.retry] of f.toml`."""
        if self.source(key) == "config" and self.config is not None:
            return self.config.where(key)
        return "--" + key.replace("_", "-")

    def spell(self, key: str) -> str:
        """`--prefetch 1`, or `prefetch = 1 in [consumers.x] of f.toml`: the value as the user wrote it."""
        shown = _show(key, self.values[key])
        if self.source(key) == "config" and self.config is not None:
            where = self.config.origins.get(key, key)  # "attempts in [consumers.x.retry]"
            name, _, table = where.partition(" in ")
            return f"{name} = {shown} in {table} of {self.config.source}"
        return f"{self.name(key)} {shown}"


def _show(key: str, value: Any) -> str:
    if key == "retry_delays" and value:
        return ",".join(format_duration(d) for d in value)
    return str(value)


def _config_path(target: str | None, config_path: str | None) -> str | None:
    if config_path is not None:
        return config_path
    # A consumer name (no module:callable) or nothing at all: the config file in the working directory.
    if (target is None or ":" not in target) and Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    return None


def resolve_settings(
    ctx: click.Context, target: str | None, config_path: str | None, params: Mapping[str, Any]
) -> ConsumeSettings:
    """Flags over config over defaults, checked; a usage error names the flag or the config key and file."""
    settings = ConsumeSettings(
        dict(params),
        flags={k for k in params if given(ctx, k)},
        env={k for k in params if ctx.get_parameter_source(k) == ParameterSource.ENVIRONMENT},
    )
    settings["callable"] = target
    path = _config_path(target, config_path)
    if path is not None:
        try:
            consumer = load_config(path).consumer(target)
        except ConfigurationError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        settings.config = consumer
        settings["callable"] = None
        settings["config_path"] = path
        for key, value in consumer.values.items():
            if key == "callable" or key not in settings.flags:
                settings[key] = value
        if "layers" in settings.flags:  # --layer adds to the file's layers, after them
            settings["layers"] = (*consumer.values.get("layers", ()), *params["layers"])
        if settings["callable"] is None:
            raise CliError(f"consumer {consumer.name!r} in {consumer.source} has no 'callable'", EXIT_USAGE)
    elif target is None:
        raise click.UsageError(
            f"give TARGET (module:callable), or --config FILE [NAME] (no ./{DEFAULT_CONFIG} here)", ctx
        )
    elif ":" not in target:
        raise click.UsageError(
            f"TARGET {target!r}: expected module:callable (e.g. myapp.handlers:handle), or the name of a "
            f"consumer in --config FILE (there is no ./{DEFAULT_CONFIG} here)",
            ctx,
        )
    if not settings["queue"]:
        raise click.UsageError("--queue is required (or `queue` in the --config consumer)", ctx)
    if settings.source("url") == "config":  # a flag or SWARROW_URL was checked as it was parsed
        from swarrow.urls import parse_url

        try:
            parse_url(settings["url"])
        except ValueError as exc:
            raise CliError(f"{settings.name('url')}: {exc}", EXIT_USAGE) from None
    _default_pool_prefetch(settings)
    if settings["prefetch"] < settings["concurrency"]:
        raise CliError(
            f"{settings.spell('prefetch')} must be >= {settings.spell('concurrency')}: "
            "workers beyond the prefetch window would never get a message",
            EXIT_USAGE,
        )
    if settings["dead_letter_strategy"] != "at-most-once" and not settings["quorum"]:
        raise CliError(f"{settings.spell('dead_letter_strategy')} at-least-once needs --quorum", EXIT_USAGE)
    if settings["track_jobs"]:
        from swarrow.jobs import JobStore

        try:
            JobStore.open(settings["track_jobs"])  # a bad URL is a usage error now, not after connecting
        except ConfigurationError as exc:
            where = "track_jobs" if settings.source("track_jobs") == "config" else "--track-jobs"
            raise CliError(f"{where}: {exc}", EXIT_USAGE) from None  # the URL in it is masked
    else:
        settings["track_jobs"] = None
    settings["log_level"] = str(settings["log_level"]).upper()
    if settings["retry"]:
        if settings["retry_topology"] == "swarrot" and settings.source("retry_delays") == "default":
            queue = queue_fields(settings["queue"])["queue"]
            raise CliError(
                swarrot_delays_needed(queue, "--retry-delays (config: [retry] delays)"), EXIT_USAGE
            )
        settings["retry_delays"] = _delays(settings)
        settings["retry_attempts"] = len(settings["retry_delays"])  # what runs, shown by --print-settings
    return settings


_ORDER: Final = {"default": 0, "config": 1, "flag": 2}


def _delays(settings: ConsumeSettings) -> tuple[float, ...]:
    """The same rule for flags and the config file: attempts and delays must agree when both are set."""
    attempts, delays = settings["retry_attempts"], settings["retry_delays"]
    if delays is None:
        return exponential_delays(attempts)
    attempts_from, delays_from = settings.source("retry_attempts"), settings.source("retry_delays")
    # Delays set at a higher level than the attempts (flags over config) decide the attempts; set at the
    # same level, or attempts above them, both were asked for and must agree.
    both_asked = attempts_from != "default" and _ORDER[attempts_from] >= _ORDER[delays_from]
    if both_asked and attempts != len(delays):
        raise CliError(
            f"{settings.spell('retry_attempts')} does not match {settings.spell('retry_delays')} "
            f"({len(delays)} delays): give one of them, or as many delays as attempts",
            EXIT_USAGE,
        )
    return tuple(delays)


def _default_pool_prefetch(settings: ConsumeSettings) -> None:
    """A pool's default prefetch: two per concurrency slot, so slow jobs spread over the workers."""
    if settings["workers"] > 1 and settings.source("prefetch") == "default":
        # 100 unacked per worker let the first worker take a whole queue of slow jobs while the others
        # idled; 2 per slot keeps one waiting message per slot and still pipelines fast ones.
        settings["prefetch"] = 2 * settings["concurrency"]


def masked(url: str) -> str:
    """The URL as --print-settings shows it: as parsed (every node of a cluster), password masked."""
    from swarrow.urls import mask_url, parse_url

    try:
        return parse_url(url).masked
    except ValueError:
        return mask_url(url)


def print_settings(settings: ConsumeSettings) -> None:
    """`--print-settings`: one `key = value  # source` line per setting, how each value was understood."""
    lines = []
    for key in sorted(settings.values):
        if key in ("print_settings", "config_path"):
            continue
        value = settings.values[key]
        shown = _understood(key, value)
        if key == "ack_batch_size" and value is not None:
            shown += _ack_batch_used(value, settings.values.get("prefetch"))
        lines.append((key, shown, _origin(settings, key)))
    width = max(len(f"{k} = {v}") for k, v, _ in lines)
    if path := settings.values.get("config_path"):
        click.echo(f"# config file: {os.path.abspath(path)}")
    for key, shown, origin in lines:
        click.echo(f"{f'{key} = {shown}':<{width}}  # {origin}")


def _ack_batch_used(batch: int, prefetch: object) -> str:
    """What the consumer uses instead of a batch above half the prefetch (which would stall it)."""
    if isinstance(prefetch, int) and batch > 1 and batch > prefetch // 2:
        return f" (uses {max(1, prefetch // 2)}: at most half the prefetch)"
    return ""


def _origin(settings: ConsumeSettings, key: str) -> str:
    source = settings.source(key)
    if key == "callable" and source == "default":
        return "TARGET"
    if key == "retry_attempts" and source == "default" and settings.source("retry_delays") != "default":
        return f"the number of retry_delays ({_origin(settings, 'retry_delays')})"
    if source == "flag":
        return "SWARROW_URL" if key in settings.env else "--" + key.replace("_", "-")
    if source == "config" and settings.config is not None:
        return settings.config.where(key)
    return "default"


def _understood(key: str, value: Any) -> str:
    if value is None:
        return "none"
    if key == "url":
        return f'"{masked(str(value))}"'
    if key == "track_jobs":
        from swarrow.jobs import mask_store_url

        return f'"{mask_store_url(str(value))}"'
    if key == "memory_limit":
        return f"{value:g} MiB ({round(value * 2**20):,} bytes)"
    if key in ("max_runtime", "time_limit", "stop_when_idle", "grace_period", "restart_backoff_max"):
        return f"{format_duration(value)} ({value:g} s)"
    if key == "retry_delays":
        return "[" + ", ".join(f"{format_duration(d)}" for d in value) + f"] ({len(value)} retries)"
    if key == "metrics_addr":
        host, port = value
        return f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def build_settings(values: Mapping[str, Any]) -> Settings:
    """The frozen, typed `Settings` the run gets, built once from the resolved values (exit 2 if refused)."""
    try:
        return Settings(
            **queue_fields(values["queue"]),
            url=values["url"],
            prefetch=values["prefetch"],
            concurrency=values["concurrency"],
            grace_period=values["grace_period"],
            declare=values["declare"],
            metrics_address=values["metrics_addr"],
            ack_batch_size=values["ack_batch_size"],
            ack_flush_interval=values["ack_flush_ms"] / 1000.0,
            signals=values["signals"],
            max_runtime=values["max_runtime"],
            max_messages=values["max_messages"],
            memory_limit=values["memory_limit"],
            stop_when_idle=values["stop_when_idle"],
            time_limit=values["time_limit"],
            log=values["log"],
            log_body=values["log_body"],
            catch=values["catch"],
            requeue_on_error=values["requeue_on_error"],
            delivery_limit=values["delivery_limit"],
            retry=values["retry"],
            retry_delays=tuple(values["retry_delays"]) if values["retry"] else (),
            retry_explicit=values["retry_explicit"],
            quorum=values["quorum"],
            retry_topology=values["retry_topology"],
            dead_letter_strategy=values["dead_letter_strategy"],
            track_jobs=values["track_jobs"],
            otel=values["otel"],
            serial_header=values["serial_header"],
            queue_stats=values["queue_stats"],
            queue_stats_interval=values["queue_stats_interval"],
        )
    except ConfigurationError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
