"""`Settings`: everything one consumer runs with, in one frozen typed object, validated once.

Built once — by `swarrow consume` from flags › config file › defaults, or by `swarrow.run(...)` /
`swarrow.consume(...)` from their keyword arguments — then handed down as data: the runner, the default
stack and a `--workers` pool's workers all read the same object (a pool passes it to each worker as JSON,
`to_json` / `from_json`). A value that cannot work raises `ConfigurationError` naming it, here and nowhere
later: the retry delays are resolved here (attempts or delays, not both unless they agree), and
`prefetch >= concurrency` is checked here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypedDict

from swarrow.errors import ConfigurationError
from swarrow.swarrot import RetryTopologyName
from swarrow.topology import DeadLetterStrategy, exponential_delays
from swarrow.urls import DEFAULT_URL
from swarrow.validation import require_int, require_positive, require_seconds

__all__ = ["STACK_OPTION_NAMES", "Settings", "SettingsOptions", "StackOptions", "queue_fields", "resolve_url"]


class StackOptions(TypedDict):
    """The keyword arguments `processors.default_stack` takes from `Settings.stack_options()`."""

    signals: bool
    max_runtime: float | None
    max_messages: int | None
    memory_limit: float | None
    stop_when_idle: float | None
    time_limit: float | None
    log: bool
    log_body: bool
    catch: bool
    requeue_on_error: bool
    reply: bool
    delivery_limit: int | None
    retry: bool
    retry_attempts: int
    retry_delays: tuple[float, ...] | None
    quorum: bool
    retry_topology: RetryTopologyName
    track_jobs: str | None
    otel: bool
    otel_server: tuple[str, int] | None
    serial_header: str | None
    queue_stats_interval: float


class SettingsOptions(TypedDict, total=False):
    """The keyword arguments of `Settings.create` (and so of `swarrow.run` / `swarrow.consume`)."""

    queue: str
    queues: Sequence[str]
    url: str | None
    prefetch: int
    concurrency: int
    grace_period: float
    declare: bool
    metrics_address: tuple[str, int] | str | None
    ack_batch_size: int | None
    ack_flush_interval: float | None
    signals: bool
    max_runtime: float | None
    max_messages: int | None
    memory_limit: float | None
    stop_when_idle: float | None
    time_limit: float | None
    log: bool
    log_body: bool
    catch: bool
    requeue_on_error: bool
    reply: bool
    delivery_limit: int | None
    retry: bool
    retry_attempts: int | None
    retry_delays: Sequence[float] | None
    quorum: bool
    retry_topology: RetryTopologyName
    dead_letter_strategy: DeadLetterStrategy
    track_jobs: str | None
    otel: bool
    otel_server: tuple[str, int] | None
    serial_header: str | None
    queue_stats: bool
    queue_stats_interval: float


#: The options that configure the default stack (meaningless when you give your own processors).
STACK_OPTION_NAMES: Final = frozenset(StackOptions.__annotations__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What one consumer runs with. `Settings.create(...)` resolves the retry delays and checks everything."""

    queue: str
    #: Further queues, after `queue` in order of preference (see swarrow.multi_queue).
    extra_queues: tuple[str, ...] = ()
    #: Empty: strict preference; else one weight per queue (`queue` first): taken in that ratio.
    queue_weights: tuple[int, ...] = ()
    url: str = DEFAULT_URL
    prefetch: int = 100
    concurrency: int = 1
    grace_period: float = 30.0
    declare: bool = False
    metrics_address: tuple[str, int] | None = None
    ack_batch_size: int | None = None
    ack_flush_interval: float | None = None
    # The default stack (see processors.default_stack)
    signals: bool = True
    max_runtime: float | None = None
    max_messages: int | None = None
    memory_limit: float | None = None
    stop_when_idle: float | None = None
    time_limit: float | None = None
    log: bool = True
    log_body: bool = False
    catch: bool = True
    requeue_on_error: bool = False
    reply: bool = True
    delivery_limit: int | None = None
    retry: bool = True
    #: One delay per retry attempt (seconds); empty when `retry` is off.
    retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0)
    #: Whether the delays were asked for: if not, a run adopts the delays of the retry queues that exist.
    retry_explicit: bool = False
    quorum: bool = False
    retry_topology: RetryTopologyName = "swarrow"
    #: How a quorum queue's dead letters are handed over (declaring queues; see swarrow.topology).
    dead_letter_strategy: DeadLetterStrategy = "at-most-once"
    track_jobs: str | None = None
    otel: bool = False
    #: The broker address spans name (None: the first node of `url`).
    otel_server: tuple[str, int] | None = None
    #: Messages sharing this header's value run one at a time, in arrival order.
    serial_header: str | None = None
    #: With a metrics address: read the queue's backlog every `queue_stats_interval` seconds.
    queue_stats: bool = True
    queue_stats_interval: float = 5.0

    def __post_init__(self) -> None:
        try:
            self._check()
        except ValueError as exc:  # require_* name the value; one error type for a bad option
            raise ConfigurationError(str(exc)) from None

    def _check(self) -> None:
        if not self.queue:
            raise ConfigurationError("a queue name is required")
        if self.extra_queues or self.queue_weights:
            from swarrow.multi_queue import QueueChoice, check_choices

            if self.queue_weights and len(self.queue_weights) != 1 + len(self.extra_queues):
                raise ConfigurationError(
                    f"queue_weights must hold one weight per queue ({1 + len(self.extra_queues)}), "
                    f"got {list(self.queue_weights)!r}"
                )
            if any(not name for name in self.extra_queues):
                raise ConfigurationError("a queue name is required, got ''")
            for weight in self.queue_weights:
                require_int("each queue weight", weight)
            check_choices([QueueChoice(name) for name in self.queue_names])
        if not self.url:
            raise ConfigurationError(f"url must be a broker URL, got {self.url!r}")
        require_int("prefetch", self.prefetch)
        require_int("concurrency", self.concurrency)
        if self.prefetch < self.concurrency:
            raise ConfigurationError(
                f"prefetch ({self.prefetch}) must be >= concurrency ({self.concurrency}): "
                "workers beyond the prefetch window would never get a message"
            )
        require_seconds("grace_period", self.grace_period, allow_zero=True)
        if self.ack_batch_size is not None:
            require_int("ack_batch_size", self.ack_batch_size)
        if self.ack_flush_interval is not None:
            require_seconds("ack_flush_interval", self.ack_flush_interval)
        require_seconds("queue_stats_interval", self.queue_stats_interval)
        for name in ("max_runtime", "stop_when_idle", "time_limit"):
            value = getattr(self, name)
            if value is not None:
                require_seconds(name, value)
        if self.memory_limit is not None:
            require_positive("memory_limit", self.memory_limit, unit="MiB")
        for name in ("max_messages", "delivery_limit"):
            value = getattr(self, name)
            if value is not None:
                require_int(name, value)
        if self.retry and not self.retry_delays:
            raise ConfigurationError("retry_delays must hold at least one delay when retry is on")
        for delay in self.retry_delays:
            require_seconds("each of retry_delays", delay)
        if self.metrics_address is not None:
            host, port = self.metrics_address
            if require_int("metrics port", port) > 65535:
                raise ConfigurationError(f"metrics_address must be (host, port), got {(host, port)!r}")

    @classmethod
    def create(
        cls,
        *,
        url: str | None = None,
        metrics_address: tuple[str, int] | str | None = None,
        retry_attempts: int | None = None,
        retry_delays: Sequence[float] | None = None,
        **values: Any,
    ) -> Settings:
        """Settings from keyword arguments: `url=None` reads `SWARROW_URL`, `metrics_address` may be
        `"host:port"`, and `retry_attempts` / `retry_delays` are resolved into one tuple of delays
        (attempts alone: 1s, 2s, 4s …; delays alone set the attempts; both must agree)."""
        queues = values.pop("queues", None)
        if queues is not None:
            values.update(_queue_values(queues, given_queue=values.pop("queue", None)))
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        retry = values.get("retry", True)
        delays: tuple[float, ...] = ()
        if retry:
            try:
                delays = _resolve_delays(retry_attempts, retry_delays)
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
        values.setdefault("retry_explicit", retry_attempts is not None or retry_delays is not None)
        if retry and retry_delays is None and values.get("retry_topology") == "swarrot":
            from swarrow.swarrot import swarrot_delays_needed

            raise ConfigurationError(
                swarrot_delays_needed(str(values.get("queue")), "retry_delays", "retry_topology='swarrot'")
            )
        address = _address(metrics_address)
        return cls(url=resolve_url(url), metrics_address=address, retry_delays=delays, **values)

    @property
    def queue_names(self) -> tuple[str, ...]:
        """Every queue this consumer takes from, in order of preference."""
        return (self.queue, *self.extra_queues)

    @property
    def retry_attempts(self) -> int:
        """Broker-delayed retries before dead-lettering (0 when retry is off)."""
        return len(self.retry_delays) if self.retry else 0

    def stack_options(self) -> StackOptions:
        """These settings as `processors.default_stack(**...)` keyword arguments."""
        return StackOptions(
            signals=self.signals,
            max_runtime=self.max_runtime,
            max_messages=self.max_messages,
            memory_limit=self.memory_limit,
            stop_when_idle=self.stop_when_idle,
            time_limit=self.time_limit,
            log=self.log,
            log_body=self.log_body,
            catch=self.catch,
            requeue_on_error=self.requeue_on_error,
            reply=self.reply,
            delivery_limit=self.delivery_limit,
            retry=self.retry,
            retry_attempts=max(1, self.retry_attempts),
            retry_delays=self.retry_delays if self.retry else None,
            quorum=self.quorum,
            retry_topology=self.retry_topology,
            track_jobs=self.track_jobs,
            otel=self.otel,
            otel_server=self.otel_server,
            serial_header=self.serial_header,
            queue_stats_interval=self.queue_stats_interval,
        )

    def __repr__(self) -> str:
        # The dataclass's repr, the passwords of `url` and `track_jobs` masked: an error reporter that
        # records a frame's locals, or a log line quoting the settings, printed them whole.
        from swarrow.jobs.errors import mask_store_url
        from swarrow.urls import mask_url

        shown = {"url": mask_url(self.url), "track_jobs": self.track_jobs and mask_store_url(self.track_jobs)}
        values = ", ".join(
            f"{field.name}={shown.get(field.name, getattr(self, field.name))!r}"
            for field in dataclasses.fields(self)
        )
        return f"{type(self).__name__}({values})"

    def to_json(self) -> str:
        """The settings as one JSON object, as a pool hands them to its workers (with the URL's password)."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        """Settings back from `to_json`; `ConfigurationError` if the text is not such an object."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            for name in ("retry_delays", "extra_queues", "queue_weights"):
                data[name] = tuple(data.get(name, ()))
            for pair in ("metrics_address", "otel_server"):
                if data.get(pair) is not None:
                    data[pair] = tuple(data[pair])
            return cls(**data)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(f"settings JSON cannot be read: {exc}") from None


def _resolve_delays(attempts: int | None, delays: Sequence[float] | None) -> tuple[float, ...]:
    if delays is None:
        return exponential_delays(3 if attempts is None else require_int("retry_attempts", attempts))
    resolved = tuple(delays)
    if attempts is not None and attempts != len(resolved):
        raise ValueError(
            f"retry_delays must hold one delay per retry attempt ({attempts}), got {list(resolved)!r}"
        )
    return resolved


def _queue_values(queues: Sequence[str], *, given_queue: str | None) -> dict[str, Any]:
    """`queues=["urgent:5", "normal:1"]` as `queue`, `extra_queues` and `queue_weights`.

    One queue is taken literally (a name may hold a colon); with several, `name:N` gives a weight.
    """
    from swarrow.multi_queue import parse_queue_choices

    if isinstance(queues, str) or not queues:
        raise ConfigurationError(f"queues must be a non-empty list of queue names, got {queues!r}")
    if given_queue is not None:
        raise ConfigurationError("give either queue or queues, not both")
    choices = parse_queue_choices(list(queues))
    return {
        "queue": choices[0].name,
        "extra_queues": tuple(c.name for c in choices[1:]),
        "queue_weights": tuple(c.weight for c in choices if c.weight is not None),
    }


def queue_fields(queues: Sequence[str]) -> dict[str, Any]:
    """`Settings` fields (`queue`, `extra_queues`, `queue_weights`) from every `--queue` given."""
    return _queue_values(queues, given_queue=None)


def resolve_url(url: str | None) -> str:
    """`url`, else `$SWARROW_URL`, else the local default broker."""
    return url or os.environ.get("SWARROW_URL") or DEFAULT_URL


def _address(value: tuple[str, int] | str | None) -> tuple[str, int] | None:
    """The metrics address as `(host, port)`: the CLI's string forms are accepted too."""
    if value is None or isinstance(value, tuple):
        return value
    if not isinstance(value, str):
        raise TypeError(f"metrics_address must be (host, port) or 'host:port', got {value!r}")
    from swarrow.http import parse_metrics_addr

    try:
        return parse_metrics_addr(value)
    except ValueError as exc:
        raise ConfigurationError(f"metrics_address: {exc}") from None
