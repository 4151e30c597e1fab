"""The exception tree: one root, a few documented leaves."""

from __future__ import annotations

__all__ = [
    "BrokerUnavailableError",
    "ConfigurationError",
    "InvalidMessageError",
    "InvalidURLError",
    "PermanentError",
    "PublishError",
    "RemoteError",
    "RetryLater",
    "RpcConnectionLost",
    "RpcTimeout",
    "StopConsumer",
    "SwarrowError",
    "TimeLimitExceeded",
    "UndecodableMessage",
]


class SwarrowError(Exception):
    """Root of every error swarrow raises on purpose."""


class ConfigurationError(SwarrowError):
    """Raised when options, topology or a URL cannot work as given (the message names the culprit)."""


class InvalidURLError(ConfigurationError, ValueError):
    """Raised when a broker URL cannot work: the message names scheme, host or port, the password masked."""


class BrokerUnavailableError(SwarrowError):
    """Raised when the broker cannot be reached or refuses the credentials (URL shown masked)."""


class PublishError(SwarrowError):
    """Raised when the broker nacks a publish, returns it as unroutable, or the channel dies first."""


class InvalidMessageError(PublishError, ValueError):
    """Raised before publishing when a property or header cannot go over AMQP (the message names it)."""


class PermanentError(SwarrowError):
    """Raised by a callback for a failure no retry can fix: the message goes to the dead-letter queue now."""


class UndecodableMessage(PermanentError):
    """A delivery whose properties cannot be decoded (header tables nested deeper than Python recurses):
    it never reaches the callback and is dead-lettered at once, its properties' raw bytes in the
    `x-swarrow-undecodable-properties` header (base64) so nothing of it is lost."""

    requeue = False  # never requeued, even with `requeue_on_error`: it would come back forever


class RetryLater(SwarrowError):  # a control-flow signal, not an error report
    """Raised by a callback to have the message retried later without spending an attempt."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        if delay is not None and delay < 0:
            raise ValueError(f"RetryLater delay must be >= 0 seconds, got {delay!r}")
        super().__init__(reason or f"retry later (delay={delay!r})")
        self.delay = delay
        self.reason = reason


class StopConsumer(SwarrowError):  # a control-flow signal, not an error report
    """Raised by a callback to finish this message normally, then stop the consumer."""


class TimeLimitExceeded(SwarrowError):  # mirrors the name users know from dramatiq and Celery
    """Raised when a message ran past the time limit; outer layers treat it as a failure."""


class RpcTimeout(SwarrowError):
    """Raised by `RpcClient.call` when no reply came within the call's timeout."""


class RpcConnectionLost(BrokerUnavailableError):
    """Raised by `RpcClient.call` when the connection dropped while the call waited: no reply can come."""


class RemoteError(SwarrowError):
    """Raised by `RpcClient.call` when the worker gave the request up (`error_type`, `error_message`)."""

    def __init__(self, error_type: str, error_message: str, *, reply: object = None) -> None:
        super().__init__(f"{error_type}: {error_message}" if error_message else error_type)
        self.error_type = error_type
        self.error_message = error_message
        self.reply = reply
