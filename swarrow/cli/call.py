"""`swarrow call`: send one request to a worker queue and print its reply (RPC from a shell)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import IO

import click

from swarrow.cli.bootstrap import connected, read_body, run_anyio
from swarrow.cli.errors import CliError, fail
from swarrow.cli.help import ENV_EPILOG, ManCommand, option
from swarrow.cli.params import Duration, Header, url_option
from swarrow.errors import PublishError, RemoteError, RpcTimeout
from swarrow.exits import EXIT_BROKER, EXIT_CRASH, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE
from swarrow.rpc import Reply, RpcClient

__all__ = ["EXIT_TIMEOUT", "call"]

_EXITS = (
    "\b\nExit status:\n"
    f"  {EXIT_OK}  a reply came: its body is on stdout\n"
    f"  {EXIT_CRASH}  an error reply (its type and message on stderr), or no queue took the request\n"
    f"  {EXIT_USAGE}  usage: a bad flag or value\n"
    f"  {EXIT_BROKER}  the broker is unreachable, refused the credentials, or the connection dropped\n"
    f"  {EXIT_TIMEOUT}  no reply within --timeout"
)


@click.command(
    cls=ManCommand,
    no_args_is_help=True,
    short_help="Send one request and print the worker's reply.",
    epilog=f"{ENV_EPILOG}\n\n{_EXITS}",
)
@click.argument("stdin", required=False, metavar="[-]")
@option("--queue", "-q", section="General", required=True, metavar="QUEUE", help="Queue the worker consumes.")
@option("--body", "-b", section="General", default=None, metavar="TEXT", help="Request body, as given.")
@option(
    "--file",
    "-f",
    "file",
    section="General",
    type=click.File("rb"),
    default=None,
    help="Read the request body from a file ('-' for stdin).",
)
@option(
    "--header",
    "-H",
    "headers",
    section="General",
    type=Header(),
    multiple=True,
    help="Add a header to the request (repeatable).",
)
@option(
    "--content-type",
    section="General",
    default=None,
    help="The request's content_type property (e.g. application/json).",
)
@option(
    "--timeout",
    "-t",
    section="General",
    type=Duration(),
    default="10s",
    show_default=True,
    help="How long to wait for the reply (e.g. 500ms, 10s, 2m); the request carries it as its deadline.",
)
@option(
    "--otel",
    section="General",
    is_flag=True,
    help="Trace the call: a PRODUCER span for the request, its context in the headers, so the worker's "
    "span and its reply join this trace (pip install 'swarrow[otel]'; the SDK from OTEL_* variables as "
    "for consume; OTEL_TRACES_EXPORTER=console prints the spans on stderr, the reply stays alone on stdout).",
)
@url_option()
def call(
    stdin: str | None,
    queue: str,
    body: str | None,
    file: IO[bytes] | None,
    headers: Sequence[tuple[str, str]],
    content_type: str | None,
    timeout: float,
    otel: bool,
    url: str,
) -> None:
    """Send one request to a worker and print its reply.

    Publishes the body to QUEUE with a reply address, waits for the worker's answer and prints its
    body. The body comes from --body, --file, or '-' (stdin), sent as bytes. A worker running the default
    stack answers with its callback's return value; a request it gives up for good comes back as an
    error reply (exit 1). A worker that takes the request after --timeout skips it.
    """
    if stdin is not None and stdin != "-":
        raise click.BadParameter(f"only '-' (stdin) is accepted here, got {stdin!r}", param_hint="[-]")
    if sum(source is not None for source in (body, file, stdin)) != 1:
        raise click.UsageError(
            "give the request body with exactly one of --body TEXT, --file FILE or - (stdin)"
        )
    payload = body.encode() if body is not None else read_body(file)
    sdk = None
    try:
        if otel:
            from swarrow.otel import configure_sdk

            sdk = configure_sdk(console=sys.stderr)
        reply = run_anyio(
            functools.partial(_call, url, queue, payload, dict(headers), content_type, timeout, otel)
        )
    except RpcTimeout as exc:
        raise CliError(str(exc), EXIT_TIMEOUT) from None
    except RemoteError as exc:
        raise CliError(
            f"the worker gave the request up: {exc.error_type}: {exc.error_message}", EXIT_CRASH
        ) from None
    except PublishError as exc:
        raise CliError(f"{exc} (is a worker's queue named {queue!r}?)", EXIT_CRASH) from None
    except Exception as exc:
        fail(exc)
    finally:
        if sdk is not None:
            from swarrow.otel import shutdown_sdk

            shutdown_sdk(sdk)  # exports the request's span before the command exits, within a budget
    out = sys.stdout.buffer
    out.write(reply.body)
    if reply.body and not reply.body.endswith(b"\n") and sys.stdout.isatty():
        out.write(b"\n")
    out.flush()


async def _call(
    url: str,
    queue: str,
    payload: bytes,
    headers: dict[str, str],
    content_type: str | None,
    timeout: float,
    otel: bool,
) -> Reply:
    async with connected(url) as broker, RpcClient(broker, timeout=timeout, otel=otel) as client:
        return await client.call(queue, payload, headers=headers, content_type=content_type)
