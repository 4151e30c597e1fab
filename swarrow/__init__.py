"""swarrow: consume RabbitMQ messages through a composable stack of processors."""

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
)
from swarrow.factory import open_broker
from swarrow.memory import MemoryBroker, MemoryMessageProvider, MemoryPublisher
from swarrow.message import Headers, Message
from swarrow.processor import HasLifespan, Processor
from swarrow.provider import MessageProvider
from swarrow.publisher import Publisher
from swarrow.rpc import Reply, ReplyBody, RpcClient
from swarrow.runner import consume, run
from swarrow.stack import BuiltStack, Layer, Stack
from swarrow.urls import DEFAULT_URL, BrokerNode, BrokerURL, mask_url, parse_url

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "AsyncCallback",
    "Broker",
    "BrokerNode",
    "BrokerURL",
    "BrokerUnavailableError",
    "BuiltStack",
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
    "MemoryPublisher",
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
    "Stack",
    "StopConsumer",
    "StopReason",
    "SwarrowError",
    "SyncCallback",
    "TimeLimitExceeded",
    "__version__",
    "check_callback",
    "consume",
    "current_control",
    "hung_callback_threads",
    "mask_url",
    "open_broker",
    "parse_url",
    "run",
    "take_overrunning_call",
]
