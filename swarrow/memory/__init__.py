"""An in-process broker with RabbitMQ 3.10's observable behaviour, for tests, demos and `memory://`.

What it models and what it refuses (a `ConfigurationError` naming the argument) is listed in the
README's memory section and proven against RabbitMQ by `tests/parity/`. A product feature, not a
mock: the retry topology runs on it unchanged.
"""

from swarrow.memory.broker import MemoryBroker
from swarrow.memory.provider import MemoryMessageProvider, MemoryPublisher

__all__ = ["MemoryBroker", "MemoryMessageProvider", "MemoryPublisher"]
