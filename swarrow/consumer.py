"""The consumer loop: at most `concurrency` messages in flight, one stop path for every reason."""

from __future__ import annotations

import logging

import anyio

from swarrow.callback import Callback
from swarrow.control import ConsumerControl, StopReason
from swarrow.errors import ConfigurationError
from swarrow.processor import Processor
from swarrow.provider import MessageProvider
from swarrow.stack import BuiltStack, Stack
from swarrow.validation import require_int, require_seconds

__all__ = ["Consumer"]

logger = logging.getLogger(__name__)


class Consumer:
    """Runs each delivery of `provider` through `stack`, `concurrency` at a time.

    Concurrency comes from `concurrency` long-lived worker tasks that take buffered deliveries
    without awaiting (a task per message costs ten times a whole stack). Every stop — a processor
    returning False, `control.stop()`, `StopConsumer`, the provider closing, an exception escaping
    the stack — takes the same path: stop taking deliveries, let in-flight messages finish within
    `grace_period` seconds, cancel the rest (left unacked, so the broker redelivers them), leave the
    lifespans, close the provider.
    """

    def __init__(
        self,
        provider: MessageProvider,
        stack: Stack | Callback,
        *,
        concurrency: int = 1,
        grace_period: float = 30.0,
    ) -> None:
        try:
            require_int("concurrency", concurrency)
            require_seconds("grace_period", grace_period, allow_zero=True)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        prefetch = provider.prefetch
        if prefetch and prefetch < concurrency:
            raise ConfigurationError(
                f"prefetch ({prefetch}) must be >= concurrency ({concurrency}): "
                "workers beyond the prefetch window would never get a message"
            )
        self.provider = provider
        self.stack = stack if isinstance(stack, Stack) else Stack(callback=stack)
        self.concurrency = concurrency
        self.grace_period = grace_period
        self.control = ConsumerControl(queue_name=provider.queue_name, concurrency=concurrency)
        self._crash: BaseException | None = None
        self._started = False

    @property
    def in_flight(self) -> int:
        """Messages currently inside the stack."""
        return self.control.in_flight

    async def run(self) -> StopReason:
        """Consume until something asks to stop; return why. Re-raises an exception that escaped the stack."""
        if self._started:
            raise RuntimeError("a Consumer runs once; build a new one to consume again")
        self._started = True
        control = self.control
        control._bind()
        built = self.stack.build()
        try:
            async with built.lifespan(control):
                try:
                    if not control.stop_requested and await self._start(control):
                        # Logged once it is true: after the lifespans (signals, metrics) and the consume call.
                        logger.info(
                            "consuming %s (prefetch %d, concurrency %d)",
                            control.queue_name,
                            self.provider.prefetch,
                            self.concurrency,
                            extra={"queue": control.queue_name},
                        )
                        await self._consume(built, control)
                finally:
                    # Inside the lifespans, so the signal layer still answers while the last acks go
                    # out: a further Ctrl-C or SIGTERM there was Python's own (KeyboardInterrupt, or
                    # death), the acks never left and finished messages ran again.
                    with anyio.CancelScope(shield=True):
                        await self.provider.close()
        finally:
            with anyio.CancelScope(shield=True):
                await self.provider.close()  # a no-op after the close above; a lifespan may fail to enter
        if self._crash is not None:
            raise self._crash
        if control.reason is None:
            raise RuntimeError("internal state: control.reason is unset here")
        logger.info(
            "consumer of %s stopped: %s",
            control.queue_name,
            control.reason,
            extra={"queue": control.queue_name, "stop_reason": control.reason.code},
        )
        return control.reason

    async def _start(self, control: ConsumerControl) -> bool:
        """Start the provider unless a stop comes first (a broker gone silent must not outlast a SIGTERM)."""
        async with anyio.create_task_group() as race:
            race.start_soon(_cancel_when_stopping, control, race.cancel_scope)
            await self.provider.start()
            race.cancel_scope.cancel()
            return True
        logger.info("stopped while starting to consume %s: %s", control.queue_name, control.reason)
        return False

    async def _consume(self, built: BuiltStack, control: ConsumerControl) -> None:
        idle = anyio.Event()
        async with anyio.create_task_group() as workers:
            for _ in range(self.concurrency):
                workers.start_soon(self._work, built.processor, control, idle)
            await control.wait_stop_requested()
            await self.provider.stop_consuming()
            if control.in_flight and not control.stop_now_requested:
                logger.info(
                    "draining %d in-flight message(s) from %s (grace period %.1fs)",
                    control.in_flight,
                    control.queue_name,
                    self.grace_period,
                )
                with anyio.move_on_after(self.grace_period):
                    async with anyio.create_task_group() as drain:
                        drain.start_soon(_cancel_when, control, drain.cancel_scope)
                        await idle.wait()
                        drain.cancel_scope.cancel()
            if control.in_flight:
                logger.warning(
                    "cancelling %d in-flight message(s) from %s; the broker will redeliver them",
                    control.in_flight,
                    control.queue_name,
                )
            workers.cancel_scope.cancel()

    async def _work(self, processor: Processor, control: ConsumerControl, idle: anyio.Event) -> None:
        provider = self.provider
        while not control.stop_requested:
            message = provider.receive_nowait()
            if message is None:
                message = await provider.receive()
                if message is None:
                    control.stop("provider_closed", "the provider stopped delivering")
                    break
            if control.is_stopping():
                break  # not started: left unsettled, so it goes back to the queue
            control.in_flight += 1
            try:
                keep_going = await processor(message)
            except Exception as exc:
                if self._crash is None:
                    self._crash = exc
                logger.error(
                    "an exception escaped the processor stack on %s; stopping: %r",
                    control.queue_name,
                    exc,
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                    extra={"queue": control.queue_name, "message_id": message.message_id},
                )
                control.stop("crashed", f"{type(exc).__name__}: {exc}")
                keep_going = True
            finally:
                control.in_flight -= 1
                if control.in_flight == 0 and control.is_stopping():
                    idle.set()
            if not keep_going:
                control.stop("processor", "a processor returned False")
        if control.in_flight == 0:
            idle.set()


async def _cancel_when_stopping(control: ConsumerControl, scope: anyio.CancelScope) -> None:
    await control.wait_stop_requested()
    scope.cancel()


async def _cancel_when(control: ConsumerControl, scope: anyio.CancelScope) -> None:
    await control.wait_stop_now_requested()
    scope.cancel()
