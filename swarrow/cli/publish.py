"""`swarrow publish`: test messages with publisher confirms, and the confirmed rate."""

from __future__ import annotations

import functools
import sys
import time
import uuid
from collections.abc import Sequence
from typing import IO

import anyio
import click

from swarrow.cli.bootstrap import connected, run_anyio
from swarrow.cli.errors import fail
from swarrow.cli.help import ENV_EPILOG, EXIT_EPILOG, ManCommand, option
from swarrow.cli.params import Header, url_option
from swarrow.errors import ConfigurationError, PublishError
from swarrow.message import Message

__all__ = ["publish"]


@click.command(cls=ManCommand, no_args_is_help=True, epilog=f"{ENV_EPILOG}\n\n{EXIT_EPILOG}")
@click.argument("stdin", required=False, metavar="[-]")
@option(
    "--queue",
    "-q",
    section="General",
    required=True,
    metavar="QUEUE",
    help="Queue to publish to (default exchange).",
)
@option(
    "--body",
    "-b",
    section="General",
    default=None,
    metavar="TEXT",
    help="Message body; {n} is replaced by the message's number (1..N).",
)
@option(
    "--file",
    "-f",
    "file",
    section="General",
    type=click.File("rb"),
    default=None,
    help="Read the body from a file ('-' for stdin).",
)
@option(
    "--count", "-n", section="General", type=click.IntRange(min=1), default=1, help="Messages to publish."
)
@option(
    "--header",
    "-H",
    "headers",
    section="General",
    type=Header(),
    multiple=True,
    help="Add a header (repeatable).",
)
@option(
    "--persistent/--transient",
    section="General",
    default=False,
    help="Delivery mode 2: stored on disk by durable queues.",
)
@option(
    "--content-type",
    section="General",
    default=None,
    help="The content_type property (e.g. application/json).",
)
@url_option()
@option(
    "--window",
    section="Concurrency",
    type=click.IntRange(min=1),
    default=100,
    help="Publishes awaiting their confirm at once.",
)
@option(
    "--progress/--no-progress",
    section="Observability",
    default=None,
    show_default="when --count >= 1000 and stderr is a terminal",
    help="Show a progress bar on stderr.",
)
def publish(
    stdin: str | None,
    queue: str,
    body: str | None,
    file: IO[bytes] | None,
    count: int,
    headers: Sequence[tuple[str, str]],
    persistent: bool,
    content_type: str | None,
    url: str,
    window: int,
    progress: bool | None,
) -> None:
    """Publish messages to QUEUE with publisher confirms and report the confirmed rate.

    The body comes from --body, --file, or '-' (stdin). Each message gets a unique message_id.
    A queue that does not exist is an error (exit 2); a nacked publish stops with exit 1 and says
    how many were confirmed before it.
    """
    sources = [s for s in (body is not None, file is not None, stdin is not None) if s]
    if stdin is not None and stdin != "-":
        raise click.BadParameter(f"only '-' (stdin) is accepted here, got {stdin!r}", param_hint="[-]")
    if len(sources) != 1:
        raise click.UsageError("give the body with exactly one of --body TEXT, --file FILE or - (stdin)")
    if body is not None:
        payload = body.encode()
    elif file is not None:
        payload = file.read()
    else:
        payload = sys.stdin.buffer.read()
    template = Message(
        payload,
        headers=dict(headers),
        content_type=content_type,
        delivery_mode=2 if persistent else None,
    )
    show = progress if progress is not None else count >= 1000 and sys.stderr.isatty()
    try:
        elapsed = run_anyio(functools.partial(_publish, url, queue, template, count, window, show))
    except Exception as exc:
        fail(exc)
    rate = count / elapsed if elapsed > 0 else float("inf")
    plural = "" if count == 1 else "s"
    click.echo(
        f"published {count} message{plural} to {queue} in {elapsed:.2f} s ({rate:,.0f} msg/s, confirmed)"
    )


async def _publish(url: str, queue: str, template: Message, count: int, window: int, show: bool) -> float:
    run_id = uuid.uuid4().hex[:12]
    numbered = b"{n}" in template.body
    done = 0
    async with connected(url) as broker:
        if await broker.inspect_queue(queue) is None:
            raise ConfigurationError(
                f"queue {queue!r} does not exist on {broker.url}: "
                f"create it with `swarrow declare --queue {queue}`"
            )
        publisher = broker.publisher()
        next_n = 1
        bar = (
            click.progressbar(
                length=count,
                label=f"publishing to {queue}",
                file=sys.stderr,
                update_min_steps=max(1, count // 200),
            )
            if show
            else None
        )

        async def worker() -> None:
            nonlocal next_n, done
            while next_n <= count:
                n = next_n
                next_n += 1
                body = template.body.replace(b"{n}", str(n).encode()) if numbered else template.body
                message = template.replace(body=body, message_id=f"{run_id}-{n}")
                try:
                    await publisher.publish(message, queue)
                except PublishError as exc:
                    raise PublishError(f"{exc} (after {done} of {count} confirmed)") from None
                done += 1
                if bar is not None:
                    bar.update(1)

        started = time.perf_counter()
        try:
            async with anyio.create_task_group() as group:
                for _ in range(min(window, count)):
                    group.start_soon(worker)
        finally:
            if bar is not None:
                bar.render_finish()
        return time.perf_counter() - started
