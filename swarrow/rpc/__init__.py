"""Request and reply over queues: `RpcClient` for callers, `ReplyBody` for workers that choose their bytes."""

from swarrow.errors import RemoteError, RpcConnectionLost, RpcTimeout
from swarrow.rpc.client import Reply, RpcClient
from swarrow.rpc.deadline import DEADLINE_HEADER, request_deadline
from swarrow.rpc.values import ReplyBody, UnencodableValue, encode_value

__all__ = [
    "DEADLINE_HEADER",
    "RemoteError",
    "Reply",
    "ReplyBody",
    "RpcClient",
    "RpcConnectionLost",
    "RpcTimeout",
    "UnencodableValue",
    "encode_value",
    "request_deadline",
]
