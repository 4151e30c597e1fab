"""`swarrow jobs`: what became of jobs X, Y, Z — status, unfinished, list, stats, prune over a `JobStore`."""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from swarrow.cli._jobs_store import store_options
from swarrow.cli.bootstrap import run_anyio
from swarrow.cli.errors import CliError
from swarrow.errors import ConfigurationError
from swarrow.exits import (
    EXIT_BROKER,
    EXIT_CRASH,
    EXIT_JOBS_UNFINISHED,
    EXIT_JOBS_UNKNOWN,
    EXIT_OK,
    EXIT_USAGE,
)
from swarrow.jobs import FINAL_STATES, JOB_STATES, Job, JobStore, JobStoreError
from swarrow.units import format_duration, parse_duration

__all__ = ["EXIT_JOBS_UNFINISHED", "EXIT_JOBS_UNKNOWN", "JOBS_EXIT_CODES", "jobs", "status_exit_code"]

T = TypeVar("T")

JOBS_EXIT_CODES: Final = {
    EXIT_OK: "every job succeeded (unfinished: none is unfinished)",
    EXIT_CRASH: "a job failed, was dead-lettered or expired (wins over 6 and 7)",
    EXIT_USAGE: "usage: a bad flag or value, no --store, a store URL swarrow cannot use",
    EXIT_BROKER: "the job store is unreachable or refused the credentials (the URL is shown masked)",
    EXIT_JOBS_UNKNOWN: "a job id the store has never seen (wins over 7)",
    EXIT_JOBS_UNFINISHED: "a job is still running or retrying (unfinished: some id is unfinished)",
}
_EPILOG = (
    "\b\nExit status (status, unfinished):\n"
    + "\n".join(f"  {code}  {text}" for code, text in JOBS_EXIT_CODES.items())
    + "\n\n\b\nEnvironment:\n  SWARROW_TRACK_JOBS  the job store URL used when --store is not given"
    " (wins over --config)"
)
_FAILED_STATES: Final = frozenset({"failed", "dead_lettered", "expired"})


def status_exit_code(jobs: dict[str, Job | None]) -> int:
    """0 all succeeded; 1 any failed, dead-lettered or expired; else 6 any unknown; else 7 any unfinished."""
    states = {job.state if job is not None else None for job in jobs.values()}
    if states & _FAILED_STATES:
        return EXIT_CRASH
    if None in states:
        return EXIT_JOBS_UNKNOWN
    if states - FINAL_STATES:
        return EXIT_JOBS_UNFINISHED
    return EXIT_OK


def _json_option(func: Callable[..., T]) -> Callable[..., T]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(func)


def _since(text: str | None) -> float | None:
    """`1h` (that long ago) or an ISO-8601 time (UTC unless it says otherwise) as Unix seconds."""
    if text is None:
        return None
    try:
        return time.time() - parse_duration(text, allow_zero=True)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"expected a duration (30m, 2h, 7d) or an ISO-8601 time (2026-11-28T12:00), got {text!r}",
            param_hint="--since",
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _ask(store_url: str | None, question: Callable[[JobStore], Awaitable[T]]) -> T:
    """Open the store, ask, close; store errors become exit codes 2 (unusable URL) and 4 (unreachable)."""
    if not store_url:
        raise CliError(
            "no job store: pass --store URL, set SWARROW_TRACK_JOBS, or --config FILE naming one "
            "(no ./swarrow.toml here)",
            EXIT_USAGE,
        )
    try:
        store = JobStore.open(store_url)
    except ConfigurationError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    path = getattr(store.backend, "path", None)
    if isinstance(path, str) and Path(path).parent.is_dir() and not Path(path).exists():
        # SQLite: asking must not create a store. No worker wrote there (yet?): every id is unseen.
        click.echo(
            f"warning: {store.url} does not exist (in {os.getcwd()}): no worker has tracked a job there yet; "
            "is it the file the workers write to? A relative path is relative to the working directory",
            err=True,
        )
        with tempfile.TemporaryDirectory(prefix="swarrow-jobs-") as empty:
            return _answer(JobStore.open(f"sqlite:///{empty}/jobs.db"), question)
    return _answer(store, question)


def _answer(store: JobStore, question: Callable[[JobStore], Awaitable[T]]) -> T:
    async def run() -> T:
        async with store:
            return await question(store)

    try:
        result: T = run_anyio(run, use_uvloop=False)
    except JobStoreError as exc:
        raise CliError(str(exc), EXIT_BROKER) from None
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return result


def _ids(ids: Sequence[str]) -> list[str]:
    """The ids given, or read from stdin one per line with `-` (so `publish --print-ids | jobs status -`)."""
    out: list[str] = []
    for value in ids:
        if value == "-":
            out.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            out.append(value)
    if not out:
        raise click.UsageError("give at least one job id (or '-' to read them from stdin)")
    return out


def _one_line(text: str | None, limit: int = 120) -> str:
    """Producer- and callback-controlled text on one bounded line (no forged lines in a terminal)."""
    if text is None:
        return ""
    flat = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _seconds(value: float | None) -> str:
    """A job's duration for people: 85µs, 12.3ms, 1.24s, 2m05s."""
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}µs"
    if value < 1:
        return f"{value * 1e3:.1f}ms"
    if value < 60:
        return f"{value:.2f}s"
    return format_duration(round(value))


def _duration(job: Job) -> str:
    return _seconds(job.duration)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=None, ensure_ascii=False))


@click.group(epilog=_EPILOG)
def jobs() -> None:
    """Ask the job store (consume --track-jobs) what became of jobs.

    The store is the one `swarrow consume --track-jobs URL` writes to: give it with --store URL,
    SWARROW_TRACK_JOBS, or --config FILE (its [jobs] store or its consumers' track_jobs).
    """


@jobs.command(epilog=_EPILOG)
@click.argument("ids", nargs=-1, metavar="ID...")
@store_options
@_json_option
def status(ids: Sequence[str], store_url: str | None, as_json: bool) -> None:
    """Print each job's state, attempts and last error.

    Exits 0, 1, 6 or 7 (below) so a script can branch on the outcome; `-` reads ids from stdin.
    """
    wanted = _ids(ids)
    found = _ask(store_url, lambda store: store.status(wanted))
    if as_json:
        _echo_json(
            [{"id": i, **(job.to_dict() if job else {"state": "unknown"})} for i, job in found.items()]
        )
    else:
        for job_id, job in found.items():
            if job is None:
                click.echo(f"{_one_line(job_id)}  unknown")
                continue
            replays = f"  replays={job.replays}" if job.replays else ""
            line = f"{_one_line(job_id)}  {job.state}  attempts={job.attempts}{replays}"
            line += f"  duration={_duration(job)}"
            if job.error_type:
                line += f"  last error: {_one_line(job.error_type)}: {_one_line(job.error_message)}"
            click.echo(line)
    sys.exit(status_exit_code(found))


@jobs.command(epilog=_EPILOG)
@click.argument("ids", nargs=-1, metavar="ID...")
@store_options
@_json_option
def unfinished(ids: Sequence[str], store_url: str | None, as_json: bool) -> None:
    """Print the ids not finished: running, retrying or never seen.

    Exits 7 when any is printed, 0 when none; `-` reads ids from stdin.
    """
    wanted = _ids(ids)
    left = _ask(store_url, lambda store: store.unfinished(wanted))
    if as_json:
        _echo_json(left)
    else:
        for job_id in left:
            click.echo(job_id)
    sys.exit(EXIT_JOBS_UNFINISHED if left else EXIT_OK)


@jobs.command(name="list", epilog=_EPILOG)
@click.option("--queue", "-q", metavar="Q", help="Only jobs of this queue.")
@click.option("--state", type=click.Choice(JOB_STATES), help="Only jobs in this state.")
@click.option(
    "--since", metavar="T", help="Only jobs updated since T: a duration ago (2h, 7d) or an ISO time."
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most N jobs.")
@store_options
@_json_option
def list_(queue: str | None, state: str | None, since: str | None, limit: int, store_url: str | None,
          as_json: bool) -> None:  # fmt: skip
    """List jobs, the most recently updated first."""
    after = _since(since)
    found = _ask(store_url, lambda store: store.list(queue=queue, state=state, since=after, limit=limit))
    if as_json:
        _echo_json([job.to_dict() for job in found])
        return
    for job in found:
        error = f"  {_one_line(job.error_type)}: {_one_line(job.error_message, 60)}" if job.error_type else ""
        click.echo(
            f"{job.updated.strftime('%Y-%m-%d %H:%M:%S')}  {_one_line(job.id)}  {job.queue}  {job.state}"
            f"  attempts={job.attempts}{f'  replays={job.replays}' if job.replays else ''}"
            f"  {_duration(job)}  {job.host}:{job.pid}{error}"
        )


@jobs.command(epilog=_EPILOG)
@click.option("--queue", "-q", metavar="Q", help="Only jobs of this queue.")
@click.option(
    "--since", metavar="T", help="Only jobs updated since T: a duration ago (2h, 7d) or an ISO time."
)
@store_options
@_json_option
def stats(queue: str | None, since: str | None, store_url: str | None, as_json: bool) -> None:
    """Count jobs by state, with duration percentiles and top errors."""
    after = _since(since)
    result = _ask(store_url, lambda store: store.stats(queue=queue, since=after))
    if as_json:
        _echo_json(result.to_dict())
        return
    click.echo(f"jobs: {result.total}")
    for name, count in result.by_state.items():
        click.echo(f"  {name:<14}{count:>10}")
    p50, p95 = _seconds(result.p50), _seconds(result.p95)
    click.echo(f"duration p50 {p50}, p95 {p95}")
    if result.top_errors:
        click.echo("top errors:")
        for name, count in result.top_errors:
            click.echo(f"  {count:>10}  {_one_line(name)}")


@jobs.command(epilog=_EPILOG)
@click.option(
    "--older-than", required=True, metavar="AGE", help="Jobs last updated longer ago than AGE (14d, 12h)."
)
@click.option(
    "--state", type=click.Choice(JOB_STATES), help="Only this state (default: every finished state)."
)
@store_options
def prune(older_than: str, state: str | None, store_url: str | None) -> None:
    """Delete finished jobs last updated more than AGE ago.

    adt's clear-finished. Jobs left running or retrying by a dead worker go only with --state.
    """
    try:
        age = parse_duration(older_than, allow_zero=True)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    deleted = _ask(store_url, functools.partial(_prune, age=age, state=state))
    which = state or "finished"
    click.echo(f"pruned {deleted} {which} job{'' if deleted == 1 else 's'} older than {format_duration(age)}")


async def _prune(store: JobStore, *, age: float, state: str | None) -> int:
    return await store.prune(age, state=state)  # seconds: a timedelta cannot hold 9999999999999d
