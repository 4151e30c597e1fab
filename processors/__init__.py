"""The processors: one small layer per module, composed with `swarrow.Stack` (first listed = outermost)."""

from processors.ack import AckProcessor
from processors.callback import CallbackProcessor
from processors.defaults import default_stack
from processors.delivery_limit import DeliveryLimitProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.instant_retry import InstantRetryProcessor
from processors.job_tracker import JobTrackerProcessor
from processors.logger import LoggerProcessor
from processors.max_messages import MaxMessagesProcessor
from processors.max_runtime import MaxRuntimeProcessor
from processors.memory_limit import MemoryLimitProcessor
from processors.metrics import MetricsProcessor
from processors.pool_status import PoolStatusProcessor
from processors.reply import ReplyProcessor
from processors.retry import RepublishFailed, RetryProcessor
from processors.serial_group import SerialGroupProcessor
from processors.signal_handler import SignalHandlerProcessor
from processors.stop_when_idle import StopWhenIdleProcessor
from processors.time_limit import TimeLimitProcessor
from processors.tracing import TracingProcessor

__all__ = [
    "AckProcessor",
    "CallbackProcessor",
    "DeliveryLimitProcessor",
    "ExceptionCatcherProcessor",
    "InstantRetryProcessor",
    "JobTrackerProcessor",
    "LoggerProcessor",
    "MaxMessagesProcessor",
    "MaxRuntimeProcessor",
    "MemoryLimitProcessor",
    "MetricsProcessor",
    "PoolStatusProcessor",
    "ReplyProcessor",
    "RepublishFailed",
    "RetryProcessor",
    "SerialGroupProcessor",
    "SignalHandlerProcessor",
    "StopWhenIdleProcessor",
    "TimeLimitProcessor",
    "TracingProcessor",
    "default_stack",
]
