"""swarrot's retry topology and attempt header, so PHP (swarrot) and Python workers share queues.

BlaBlaCar's rabbit-mq-admin-toolkit declares, for a queue `Q` with retries `[d1, d2, …]` seconds:
a topic exchange `retry` and a direct exchange `dl` (both with `alternate-exchange: unroutable`, a
fanout exchange feeding the queue `unroutable`); `Q` with `x-dead-letter-exchange: dl` and
`x-dead-letter-routing-key: Q`, bound to `retry` with key `Q`; per delay a queue `Q_retry_{d}`
(`x-message-ttl: d × 1000`, dead-lettering to `retry` with key `Q`) bound to `retry` with key
`Q_retry_{k}` (the attempt number k); and `Q_dl`, bound to `dl` with key `Q`. swarrot's
RetryProcessor publishes a failed message to exchange `retry` with routing key `Q_retry_{k}` and the
header `swarrot_retry_attempts: k`; past its attempts it re-raises, so the broker dead-letters the
original through `dl` into `Q_dl`. This module names that layout; `SwarrotTopology` declares it
exactly as the toolkit does, so either tool may have declared it first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

from swarrow.broker import Broker, QueueInfo
from swarrow.errors import ConfigurationError
from swarrow.units import format_duration
from swarrow.validation import require_seconds

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "RETRY_EXCHANGE",
    "SWARROT_ATTEMPTS_HEADER",
    "UNROUTABLE",
    "RetryTopologyName",
    "SwarrotTopology",
    "stray_retry_route",
    "swarrot_dead_letter_queue_name",
    "swarrot_delays_needed",
    "swarrot_retry_queue_name",
    "swarrot_retry_routing_key",
]

RetryTopologyName: TypeAlias = Literal["swarrow", "swarrot"]
RETRY_EXCHANGE: Final = "retry"
DEAD_LETTER_EXCHANGE: Final = "dl"
UNROUTABLE: Final = "unroutable"
SWARROT_ATTEMPTS_HEADER: Final = "swarrot_retry_attempts"
_AE: Final = {"alternate-exchange": UNROUTABLE}


def _seconds(delay: float) -> str:
    """A delay as the toolkit writes it in queue names: whole seconds bare (`25`), else as short as exact."""
    return str(int(delay)) if float(delay).is_integer() else f"{delay:g}"


def swarrot_retry_queue_name(queue: str, delay: float) -> str:
    """The queue holding `queue`'s copies for `delay` seconds: `Q_retry_{delay}` (the toolkit's name)."""
    return f"{queue}_retry_{_seconds(delay)}"


def swarrot_retry_routing_key(queue: str, attempt: int) -> str:
    """The routing key on exchange `retry` for retry number `attempt` (1-based): `Q_retry_{attempt}`."""
    return f"{queue}_retry_{attempt}"


def swarrot_dead_letter_queue_name(queue: str) -> str:
    """The queue keeping `queue`'s dead letters: `Q_dl`, fed by exchange `dl` with routing key `Q`."""
    return f"{queue}_dl"


def swarrot_delays_needed(queue: str, flag: str, mode: str = "--retry-topology swarrot") -> str:
    """Why swarrot's layout needs its delays spelled out (the error of `consume` and `declare`)."""
    return (
        f"{mode} needs {flag}: the toolkit's `retries` for {queue!r}, one per attempt "
        f"(e.g. 5s,25s,100s for retries: [5, 25, 100]). They name its retry queues ({queue}_retry_5 …), "
        "and swarrow cannot read them from the broker (AMQP lists no queues or bindings); default "
        "delays would name queues that do not exist, and declaring those beside the toolkit's would "
        "bind two queues to each retry key, delivering every retry twice"
    )


def stray_retry_route(
    queue: str, delays: Sequence[float], headers: Mapping[str, Any]
) -> tuple[str, str, str] | None:
    """(queue it came through, routing key, retry queue `delays` name for that key) when a retry copy
    came back through another queue than the one `delays` name for its routing key, else None.

    Read from the newest `x-death` entry (a TTL expiry on exchange `retry`). Such a copy means a
    queue left bound to `Q_retry_k` (reordered or changed delays): with the right one bound too,
    every retry for attempt k is delivered twice. AMQP cannot list bindings; this is where it shows.
    """
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], Mapping):
        return None
    newest = deaths[0]
    keys = newest.get("routing-keys")
    through = newest.get("queue")
    if newest.get("reason") != "expired" or newest.get("exchange") != RETRY_EXCHANGE:
        return None
    if (
        not isinstance(through, str)
        or not isinstance(keys, list)
        or len(keys) != 1
        or not isinstance(keys[0], str)
    ):
        return None
    prefix = f"{queue}_retry_"
    number = keys[0][len(prefix) :] if keys[0].startswith(prefix) else ""
    if not number.isdigit() or not 1 <= int(number) <= len(delays):
        return None
    expected = swarrot_retry_queue_name(queue, delays[int(number) - 1])
    return None if through == expected else (through, keys[0], expected)


class SwarrotTopology:
    """Declares the toolkit's layout for `queue` (see the module docstring), idempotently.

    Declaring over a layout the toolkit made is a no-op; one that differs (another TTL, a queue `Q`
    without the `dl` dead-letter exchange) raises `ConfigurationError` naming the queue or exchange,
    as RabbitMQ refuses to change arguments. The toolkit takes whole seconds; sub-second delays work
    here (`Q_retry_0.5`, TTL 500 ms) but the toolkit cannot declare them.
    """

    def __init__(self, queue: str, delays: Sequence[float], *, quorum: bool = False) -> None:
        if not queue:
            raise ValueError("queue must be a non-empty queue name")
        if not delays:
            raise ValueError(f"delays must list at least one delay in seconds, got {delays!r}")
        for delay in delays:
            require_seconds("delay", delay)
            if round(delay * 1000) < 1:
                raise ValueError(f"delays must be at least 1 ms (TTLs are whole milliseconds), got {delay!r}")
        self.queue = queue
        self.delays = tuple(float(d) for d in delays)
        self.quorum = quorum

    @property
    def dead_letter_queue(self) -> str:
        """`Q_dl`."""
        return swarrot_dead_letter_queue_name(self.queue)

    def exchanges(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, type, arguments) of every exchange, in declaration order."""
        return [
            (UNROUTABLE, "fanout", {}),
            (DEAD_LETTER_EXCHANGE, "direct", dict(_AE)),
            (RETRY_EXCHANGE, "topic", dict(_AE)),
        ]

    def queues(self) -> list[tuple[str, dict[str, Any]]]:
        """Every queue to declare, in order, with its arguments (durable, like the toolkit's)."""
        base: dict[str, Any] = {"x-queue-type": "quorum"} if self.quorum else {}
        planned: list[tuple[str, dict[str, Any]]] = [
            (UNROUTABLE, {}),
            (self.queue, {**base, "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                          "x-dead-letter-routing-key": self.queue}),
            (self.dead_letter_queue, dict(base)),
        ]  # fmt: skip
        seen: set[str] = set()
        for delay in self.delays:
            name = swarrot_retry_queue_name(self.queue, delay)
            if name in seen:  # the toolkit declares a repeated delay once and binds it twice
                continue
            seen.add(name)
            arguments = {
                **base,
                "x-message-ttl": round(delay * 1000),
                "x-dead-letter-exchange": RETRY_EXCHANGE,
                "x-dead-letter-routing-key": self.queue,
            }
            planned.append((name, arguments))
        return planned

    def bindings(self) -> list[tuple[str, str, str]]:
        """(exchange, queue, routing key) of every binding."""
        bound = [(UNROUTABLE, UNROUTABLE, ""), (DEAD_LETTER_EXCHANGE, self.dead_letter_queue, self.queue)]
        bound.append((RETRY_EXCHANGE, self.queue, self.queue))
        for attempt, delay in enumerate(self.delays, start=1):
            bound.append(
                (
                    RETRY_EXCHANGE,
                    swarrot_retry_queue_name(self.queue, delay),
                    swarrot_retry_routing_key(self.queue, attempt),
                )
            )
        return bound

    def retry_target(self, attempt: int) -> tuple[str, str]:
        """(exchange, routing key) a copy for retry number `attempt` is published to."""
        return RETRY_EXCHANGE, swarrot_retry_routing_key(self.queue, attempt)

    def dead_letter_target(self) -> tuple[str, str]:
        """(exchange, routing key) a dead letter is published to: `dl` with key `Q`, into `Q_dl`."""
        return DEAD_LETTER_EXCHANGE, self.queue

    async def new_retry_bindings(self, broker: Broker) -> list[tuple[str, str]]:
        """(retry queue, routing key) pairs declaring would add to a queue `Q` that already exists.

        AMQP cannot list bindings: when `Q` exists but the retry queue for attempt k does not, some
        other queue (one for an older delay) may still be bound to `Q_retry_k`, and a second binding
        would put every retry for attempt k in both, so the message comes back twice.
        """
        if await broker.inspect_queue(self.queue) is None:
            return []
        missing: list[tuple[str, str]] = []
        for attempt, delay in enumerate(self.delays, start=1):
            name = swarrot_retry_queue_name(self.queue, delay)
            if await broker.inspect_queue(name) is None:
                missing.append((name, swarrot_retry_routing_key(self.queue, attempt)))
        return missing

    async def declare(self, broker: Broker, *, add_retry_queues: bool = False) -> list[QueueInfo]:
        """Declare exchanges, queues and bindings; `ConfigurationError` naming what differs.

        Refuses to add a retry queue to an existing `Q` (see `new_retry_bindings`) unless
        `add_retry_queues`: the caller checked that no other queue holds those routing keys.
        """
        if not add_retry_queues and (new := await self.new_retry_bindings(broker)):
            raise ConfigurationError(self.new_bindings_error(new))
        for name, kind, arguments in self.exchanges():
            await broker.declare_exchange(name, kind, arguments=arguments or None)
        infos = [await broker.declare_queue(name, arguments=args or None) for name, args in self.queues()]
        for exchange, queue, routing_key in self.bindings():
            await broker.bind_queue(queue, exchange, routing_key)
        return [info for info in infos if info.name != UNROUTABLE]

    def new_bindings_error(self, new: Sequence[tuple[str, str]]) -> str:
        spelled = ", ".join(f"{name!r} (routing key {key!r})" for name, key in new)
        keys = "|".join(key for _, key in new)
        return (
            f"queue {self.queue!r} exists but its retry queue(s) {spelled} do not: declaring them binds "
            f"them to exchange {RETRY_EXCHANGE!r}, and if {self.queue!r}'s delays changed, the old retry "
            "queue for that attempt is still bound to the same key, so each retry would be delivered "
            "twice (AMQP cannot list bindings, so swarrow cannot tell). Check with `rabbitmqctl "
            f"list_bindings source_name destination_name routing_key | grep -wE '{keys}'`; unbind or delete "
            f"the old {self.queue}_retry_* queue for that key once it is empty (its copies return to "
            f"{self.queue!r} after its TTL), then run `swarrow declare --queue {self.queue} --retry-topology "
            f"swarrot --retry-delays {','.join(format_duration(d) for d in self.delays)} --add-retry-queues` "
            "(SwarrotTopology.declare(broker, add_retry_queues=True))"
        )

    def __repr__(self) -> str:
        return f"SwarrotTopology({self.queue!r}, {list(self.delays)!r}, quorum={self.quorum})"
