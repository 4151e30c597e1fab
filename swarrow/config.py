"""`swarrow.toml`: named consumers for `swarrow consume --config swarrow.toml NAME`.

```toml
[connection]
url = "amqp://app:secret@rabbitmq:5672/"   # or a cluster: ["amqp://app:secret@rabbit1/", "amqp://…@rabbit2/"]

[logging]
level = "INFO"
format = "json"

[consumers.emails]
queue = "emails"
callable = "myapp.handlers:send_email"
prefetch = 50
concurrency = 10

[consumers.emails.limits]
max_messages = 10000
memory_limit = "512MiB"

[consumers.emails.retry]
delays = "5s,1m,10m"

[jobs]
store = "sqlite:///jobs.db"   # every consumer's track_jobs (a consumer may set its own, or false)
```

Every value is checked when the file is read, and an unknown key is an error naming the key, its
table and the file (a typo must not silently fall back to a default). The values come back keyed
by the `swarrow consume` option they set, so the CLI can layer flags over them.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from swarrow.errors import ConfigurationError
from swarrow.topology import DEAD_LETTER_STRATEGIES
from swarrow.units import parse_delays, parse_duration, parse_megabytes
from swarrow.urls import mask_text

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "ConsumerConfig", "SwarrowConfig", "load_config", "queue_names"]

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS: Final = ("text", "json")

Converter = Callable[[Any], Any]
_PASSWORD_PARAM: Final = re.compile(r"((?:^|[\s?&;'\"])[a-z_]*password\s*=\s*)([^\s&#;'\"]*)", re.IGNORECASE)


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _queues(value: Any) -> tuple[str, ...]:
    # One queue, or a list in order of preference (`["urgent:5", "normal:1"]` with weights).
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return tuple(value)
    raise ValueError(f"expected a queue name or a non-empty list of queue names, got {value!r}")


def queue_names(values: Mapping[str, Any]) -> tuple[str, ...]:
    """The queue names a consumer's config values name (weights dropped); () when it names none."""
    from swarrow.multi_queue import parse_queue_choices

    specs = values.get("queue") or ()
    try:
        return tuple(c.name for c in parse_queue_choices(list(specs)))
    except ConfigurationError:
        return tuple(specs)


def _url(value: Any) -> str:
    # One node, a comma-separated cluster, or a TOML list of URLs (one cluster), kept as one text that
    # `swarrow.urls.parse_url` reads back as the same cluster; the CLI checks it, naming key and file.
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return ",".join(item.strip() for item in value)
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"expected a broker URL or a list of them, got {type(value).__name__}")


def _track_jobs(value: Any) -> str | None:
    # false: this consumer does not track, whatever [jobs] store says for the file's other consumers.
    if value is False:
        return None
    return _str(value)


def _dead_letter_strategy(value: Any) -> str:
    if value not in DEAD_LETTER_STRATEGIES:
        raise ValueError(f"expected one of {', '.join(DEAD_LETTER_STRATEGIES)}, got {value!r}")
    return str(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected an integer >= 1, got {value!r}")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise ValueError(f"expected a number > 0, got {value!r}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _duration(value: Any) -> float:
    return parse_duration(_scalar(value))


def _grace(value: Any) -> float:
    return parse_duration(_scalar(value), allow_zero=True)


def _megabytes(value: Any) -> float:
    return parse_megabytes(_scalar(value))


def _scalar(value: Any) -> str | float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a string or a number, got {value!r}")
    return value


def _delays(value: Any) -> tuple[float, ...]:
    if isinstance(value, list):
        return parse_delays([_scalar(item) for item in value])
    return parse_delays(_scalar(value))


def _layers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and ":" in item for item in value):
        raise ValueError(f'expected a list of "module:Factory" strings, got {value!r}')
    return tuple(value)


def _metrics_addr(value: Any) -> tuple[str, int]:
    from swarrow.http import parse_metrics_addr

    return parse_metrics_addr(_str(value))


def _log_level(value: Any) -> str:
    level = _str(value).upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def _retry_topology(value: Any) -> str:
    name = _str(value).lower()
    if name not in ("swarrow", "swarrot"):
        raise ValueError(f"expected 'swarrow' or 'swarrot', got {value!r}")
    return name


def _log_format(value: Any) -> str:
    fmt = _str(value).lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return fmt


# table → {key: (consume option it sets, converter)}; "" is the consumer's own table.
_CONSUMER_SCHEMA: Final[Mapping[str, Mapping[str, tuple[str, Converter]]]] = {
    "": {
        "queue": ("queue", _queues),
        "callable": ("callable", _str),
        "url": ("url", _url),
        "prefetch": ("prefetch", _int),
        "concurrency": ("concurrency", _int),
        "ack_batch_size": ("ack_batch_size", _int),
        "ack_flush_ms": ("ack_flush_ms", _float),
        "workers": ("workers", _int),
        "restart_backoff_max": ("restart_backoff_max", _duration),
        "grace_period": ("grace_period", _grace),
        "declare": ("declare", _bool),
        "quorum": ("quorum", _bool),
        "dead_letter_strategy": ("dead_letter_strategy", _dead_letter_strategy),
        "uvloop": ("uvloop", _bool),
        "layers": ("layers", _layers),
        "track_jobs": ("track_jobs", _track_jobs),
        "otel": ("otel", _bool),
        "serial_header": ("serial_header", _str),
    },
    "limits": {
        "max_messages": ("max_messages", _int),
        "max_runtime": ("max_runtime", _duration),
        "memory_limit": ("memory_limit", _megabytes),
        "time_limit": ("time_limit", _duration),
        "stop_when_idle": ("stop_when_idle", _duration),
    },
    "retry": {
        "enabled": ("retry", _bool),
        "attempts": ("retry_attempts", _int),
        "delays": ("retry_delays", _delays),
        "topology": ("retry_topology", _retry_topology),
    },
    "ack": {"requeue_on_error": ("requeue_on_error", _bool)},
    "exception_catcher": {"enabled": ("catch", _bool)},
    "logger": {"enabled": ("log", _bool), "log_body": ("log_body", _bool)},
    "signal_handler": {"enabled": ("signals", _bool)},
    "delivery_limit": {"max_deliveries": ("delivery_limit", _int)},
    "metrics": {
        "addr": ("metrics_addr", _metrics_addr),
        "queue_stats": ("queue_stats", _bool),
        "queue_stats_interval": ("queue_stats_interval", _duration),
    },
    "logging": {"level": ("log_level", _log_level), "format": ("log_format", _log_format)},
}
_TOP_SCHEMA: Final[Mapping[str, Mapping[str, tuple[str, Converter]]]] = {
    "connection": {"url": ("url", _url)},
    "logging": _CONSUMER_SCHEMA["logging"],
    # The file's job store: every consumer's track_jobs unless it sets its own, and what `swarrow jobs` asks.
    "jobs": {"store": ("track_jobs", _str)},
}


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """One `[consumers.NAME]` table, resolved: `values` maps `swarrow consume` option names to values."""

    name: str
    source: str
    values: Mapping[str, Any] = field(default_factory=dict)
    # option name → where it was set, e.g. "attempts in [consumers.emails.retry]" (for error messages)
    origins: Mapping[str, str] = field(default_factory=dict)

    def where(self, option: str) -> str:
        """`key in [table] of FILE` for an option this file set."""
        return f"{self.origins.get(option, option)} of {self.source}"


@dataclass(frozen=True, slots=True)
class SwarrowConfig:
    """A whole `swarrow.toml`: shared values (connection, logging, jobs) and the named consumers."""

    source: str
    shared: Mapping[str, Any]
    consumers: Mapping[str, ConsumerConfig]

    def consumer(self, name: str | None) -> ConsumerConfig:
        """The named consumer; with no name, the only one. ConfigurationError listing the names otherwise."""
        names = ", ".join(sorted(self.consumers)) or "none"
        if name is None:
            if len(self.consumers) == 1:
                return next(iter(self.consumers.values()))
            raise ConfigurationError(f"name the consumer to run: {self.source} defines {names}")
        try:
            return self.consumers[name]
        except KeyError:
            raise ConfigurationError(f"no consumer {name!r} in {self.source} (it defines: {names})") from None


def _read_table(
    table: Any,
    schema: Mapping[str, Mapping[str, tuple[str, Converter]]],
    where: str,
    source: str,
    origins: dict[str, str] | None = None,
) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigurationError(mask_text(f"[{where}] of {source} must be a table, got {table!r}"))
    values: dict[str, Any] = {}
    origins = {} if origins is None else origins
    for key, value in table.items():
        if key in schema and key != "":
            sub = f"{where}.{key}"
            if not isinstance(value, dict):
                raise ConfigurationError(f"{key!r} in [{where}] of {source} must be a table [{sub}]")
            for sub_key, sub_value in value.items():
                _set(values, schema[key], sub_key, sub_value, sub, source)
                origins[schema[key][sub_key][0]] = f"{sub_key} in [{sub}]"
        else:
            _set(values, schema.get("", {}), key, value, where, source)
            origins[schema.get("", {})[key][0]] = f"{key} in [{where}]"
    return values


def _set(
    values: dict[str, Any],
    schema: Mapping[str, tuple[str, Converter]],
    key: str,
    value: Any,
    where: str,
    source: str,
) -> None:
    if key not in schema:
        known = ", ".join(sorted(schema))
        raise ConfigurationError(f"unknown key {key!r} in [{where}] of {source} (known keys: {known})")
    option, convert = schema[key]
    try:
        values[option] = convert(value)
    except ValueError as exc:
        # The value may be a URL (or a libpq string) of the wrong type, password and all.
        reason = _PASSWORD_PARAM.sub(r"\1***", mask_text(str(exc)))
        raise ConfigurationError(f"invalid value for {key!r} in [{where}] of {source}: {reason}") from None


def load_config(path: str | Path) -> SwarrowConfig:
    """Read and check a `swarrow.toml`; ConfigurationError naming the file (and key) on any problem."""
    source = str(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {source}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source} is not valid TOML: {exc}") from None
    shared: dict[str, Any] = {}
    shared_origins: dict[str, str] = {}
    consumers: dict[str, ConsumerConfig] = {}
    for key, value in data.items():
        if key in _TOP_SCHEMA:
            shared.update(_read_table(value, {"": _TOP_SCHEMA[key]}, key, source, shared_origins))
        elif key == "consumers":
            if not isinstance(value, dict):
                raise ConfigurationError(
                    f"[consumers] of {source} must be a table of [consumers.NAME] tables"
                )
            for name, table in value.items():
                where = f"consumers.{name}"
                origins: dict[str, str] = {}
                own = _read_table(table, _CONSUMER_SCHEMA, where, source, origins)
                consumers[name] = ConsumerConfig(name, source, own, origins)
        else:
            known = ", ".join(sorted([*_TOP_SCHEMA, "consumers"]))
            raise ConfigurationError(
                f"unknown key {key!r} at the top level of {source} (known keys: {known})"
            )
    # Shared tables may come after the consumer tables in the file: merge once everything is read.
    consumers = {
        n: ConsumerConfig(n, source, {**shared, **c.values}, {**shared_origins, **c.origins})
        for n, c in consumers.items()
    }
    return SwarrowConfig(source, shared, consumers)
