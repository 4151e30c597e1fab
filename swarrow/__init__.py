"""swarrow: consume RabbitMQ messages through a composable stack of processors.

`__all__` is what the README documents. `AmqpBroker` is exported lazily, so `import swarrow` (e.g. a
test on `memory://`) does not import aio-pika; `swarrow.urls`, `swarrow.stack`, `swarrow.memory` keep
their other names (`mask_url`, `BuiltStack`, `MemoryPublisher` …).
"""

from typing import TYPE_CHECKING, Any

from swarrow.broker import Broker, QueueInfo
from swarrow.callback import (
    AsyncCallback,
    Callback,
    CallbackProcessor,
    SyncCallback,
    check_callback,
    hung_callback_threads,
    take_overrunning_call,
)
from swarrow.consumer import Consumer
from swarrow.control import ConsumerControl, StopReason, current_control
from swarrow.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    InvalidMessageError,
    InvalidURLError,
    PermanentError,
    PublishError,
    RemoteError,
    RetryLater,
    RpcConnectionLost,
    RpcTimeout,
    StopConsumer,
    SwarrowError,
    TimeLimitExceeded,
    UndecodableMessage,
)
from swarrow.factory import open_broker
from swarrow.memory import MemoryBroker, MemoryMessageProvider
from swarrow.message import Headers, Message
from swarrow.processor import HasLifespan, Processor
from swarrow.provider import MessageProvider
from swarrow.publisher import Publisher
from swarrow.rpc import Reply, ReplyBody, RpcClient
from swarrow.runner import consume, run
from swarrow.settings import Settings
from swarrow.stack import Layer, Stack
from swarrow.urls import BrokerNode, BrokerURL, parse_url

if TYPE_CHECKING:
    from swarrow.amqp import AmqpBroker

__version__ = "0.1.0"

__all__ = [
    "AmqpBroker",
    "AsyncCallback",
    "Broker",
    "BrokerNode",
    "BrokerURL",
    "BrokerUnavailableError",
    "Callback",
    "CallbackProcessor",
    "ConfigurationError",
    "Consumer",
    "ConsumerControl",
    "HasLifespan",
    "Headers",
    "InvalidMessageError",
    "InvalidURLError",
    "Layer",
    "MemoryBroker",
    "MemoryMessageProvider",
    "Message",
    "MessageProvider",
    "PermanentError",
    "Processor",
    "PublishError",
    "Publisher",
    "QueueInfo",
    "RemoteError",
    "Reply",
    "ReplyBody",
    "RetryLater",
    "RpcClient",
    "RpcConnectionLost",
    "RpcTimeout",
    "Settings",
    "Stack",
    "StopConsumer",
    "StopReason",
    "SwarrowError",
    "SyncCallback",
    "TimeLimitExceeded",
    "UndecodableMessage",
    "__version__",
    "check_callback",
    "consume",
    "current_control",
    "hung_callback_threads",
    "open_broker",
    "parse_url",
    "run",
    "take_overrunning_call",
]


def __getattr__(name: str) -> Any:
    # Imported on first use only: aio-pika costs ~100 ms at import and is not needed for memory://.
    if name == "AmqpBroker":
        from swarrow.amqp import AmqpBroker

        return AmqpBroker
    raise AttributeError(f"module 'swarrow' has no attribute {name!r}")
