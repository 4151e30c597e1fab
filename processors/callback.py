"""The innermost processor, re-exported so every processor is importable from `processors`."""

from swarrow.callback import CallbackProcessor

__all__ = ["CallbackProcessor"]
