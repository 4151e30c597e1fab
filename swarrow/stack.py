"""Composes processors into an onion: the first layer listed is the outermost."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Concatenate, Generic, ParamSpec

from swarrow.callback import Callback, CallbackProcessor
from swarrow.control import ConsumerControl, _current
from swarrow.errors import ConfigurationError
from swarrow.processor import HasLifespan, Processor

__all__ = ["BuiltStack", "Layer", "Stack"]

P = ParamSpec("P")


class Layer(Generic[P]):
    """A processor declared now and built later around its inner processor, typed like its constructor.

    `Layer(MaxMessagesProcessor, limit=1000)` type-checks `limit` against `MaxMessagesProcessor.__init__`.
    """

    def __init__(
        self,
        factory: Callable[Concatenate[Processor, P], Processor],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None:
        self.factory = factory
        self.args = args
        self.kwargs = kwargs
        self._options: dict[str, Any] = dict(kwargs)

    def wrap(self, inner: Processor) -> Processor:
        """Build this layer around `inner`."""
        return self.factory(inner, *self.args, **self.kwargs)

    def __repr__(self) -> str:
        name = getattr(self.factory, "__name__", repr(self.factory))
        options = ", ".join(f"{key}={value!r}" for key, value in self._options.items())
        return f"Layer({name}{', ' + options if options else ''})"


LayerLike = Layer[Any] | Callable[[Processor], Processor]


class BuiltStack:
    """The processors of one stack, built: `processor` is the outermost, `processors` lists all."""

    def __init__(self, processors: Sequence[Processor]) -> None:
        self.processors = tuple(processors)
        self.processor = self.processors[0]

    @asynccontextmanager
    async def lifespan(self, control: ConsumerControl) -> AsyncIterator[None]:
        """Enter every layer's lifespan outermost first; leave them innermost first, always."""
        token = _current.set(control)  # what `current_control()` returns inside this run
        try:
            async with AsyncExitStack() as stack:
                for processor in self.processors:
                    if isinstance(processor, HasLifespan):
                        await stack.enter_async_context(processor.lifespan(control))
                yield
        finally:
            _current.reset(token)


def _build(layer: LayerLike, inner: Processor) -> Processor:
    """One layer around `inner`; `ConfigurationError` naming it when it fails or builds no processor."""
    try:
        built = layer.wrap(inner) if isinstance(layer, Layer) else layer(inner)
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"layer {_name(layer)} failed to build around {type(inner).__name__}: "
            f"{type(exc).__name__}: {exc} "
            "(a layer takes the inner processor and returns an async callable taking a message)"
        ) from exc
    if not callable(built):
        raise ConfigurationError(
            f"layer {_name(layer)} built {type(built).__name__} {built!r:.60}, not a processor "
            "(an async callable taking a message)"
        )
    return built


def _name(layer: LayerLike) -> str:
    factory = layer.factory if isinstance(layer, Layer) else layer
    return str(getattr(factory, "__qualname__", None) or getattr(factory, "__name__", None) or factory)


class Stack:
    """Layers around a callback, swarrot's order: the first layer listed sees the message first.

    ```
    Stack(Layer(MaxMessagesProcessor, limit=100), Layer(AckProcessor, provider=p), callback=handle)
    ```
    A layer is a `Layer(...)` or any `inner -> processor` callable.
    """

    def __init__(self, *layers: LayerLike, callback: Callback) -> None:
        for layer in layers:
            if not callable(layer) and not isinstance(layer, Layer):
                raise TypeError(
                    f"a stack layer must be a Layer or a callable taking the inner processor, got {layer!r}"
                )
        self.layers: tuple[LayerLike, ...] = layers
        self.callback = callback

    def build(self) -> BuiltStack:
        """Instantiate every layer, innermost first, and return them outermost first."""
        inner: Processor = CallbackProcessor(self.callback)
        built: list[Processor] = [inner]
        for layer in reversed(self.layers):
            inner = _build(layer, inner)
            built.append(inner)
        built.reverse()
        return BuiltStack(built)

    def __repr__(self) -> str:
        return f"Stack({', '.join(map(repr, self.layers))}, callback={self.callback!r})"
