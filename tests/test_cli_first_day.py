"""Issue 23, "tried as a new user would": each item through the CLI (click's runner, or a subprocess)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from swarrow import MemoryBroker, Message
from swarrow.cli import EXIT_IMPORT, EXIT_USAGE, cli

FAST = ["--no-signals", "--grace-period", "1s"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def memory() -> tuple[str, MemoryBroker]:
    name = f"first-{uuid.uuid4().hex[:8]}"
    return f"memory://{name}", MemoryBroker.named(name)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


# -- 3. bad retry input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["consume", "declare"])
@pytest.mark.parametrize("delays", ["1s,,2s", "1s,2s,", ","])
def test_an_empty_retry_delay_is_a_usage_error(
    memory: tuple[str, MemoryBroker], command: str, delays: str
) -> None:
    url, broker = memory
    target = ["tests.first_day_callbacks:ok"] if command == "consume" else []
    result = invoke(command, *target, "--url", url, "-q", "jobs", "--declare" * (command == "consume"),
                    "--retry-delays", delays)  # fmt: skip
    assert result.exit_code == EXIT_USAGE, result.output
    assert "'--retry-delays'" in result.output and "is empty" in result.output
    assert broker.queue_names() == []


# -- 18. a memory limit below the current RSS -------------------------------------------------------------


def test_a_memory_limit_below_the_current_rss_is_refused_at_start(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    result = invoke("consume", "tests.first_day_callbacks:ok", "--url", url, "-q", "jobs", "--declare",
                    "--memory-limit", "1MiB", *FAST)  # fmt: skip
    assert result.exit_code == EXIT_USAGE, result.output
    assert "memory limit 1 MiB is at or below the process's current RSS (" in result.output
    assert "Traceback" not in result.output


# -- 19. a callable that cannot take one message ----------------------------------------------------------


def test_a_callable_that_cannot_take_one_message_exits_3_naming_its_signature(
    memory: tuple[str, MemoryBroker],
) -> None:
    url, broker = memory
    broker.declare_queue_nowait("jobs")
    result = invoke(
        "consume", "tests.first_day_callbacks:two_args", "--url", url, "-q", "jobs", "--no-retry", *FAST
    )
    assert result.exit_code == EXIT_IMPORT, result.output
    assert "two_args(a, b) cannot be called with one message" in result.output


# -- 6. --no-retry says where failures go ------------------------------------------------------------------


def test_no_retry_warns_at_start_once_per_failure_run_and_in_the_summary(
    memory: tuple[str, MemoryBroker], caplog: pytest.LogCaptureFixture
) -> None:
    url, broker = memory
    broker.declare_queue_nowait("jobs")
    for n in range(3):
        broker.publish_nowait(Message(b"x", message_id=f"m{n}"), "jobs")
    result = invoke("consume", "tests.cli_callbacks:boom", "--url", url, "-q", "jobs", "--no-retry",
                    "--max-messages", "3", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        w.startswith("retries are off: a failed message is rejected without requeue") for w in warnings
    )
    assert sum("rejected without requeue: RabbitMQ dead-letters it if jobs has" in w for w in warnings) == 1
    assert "3 message(s) from jobs were rejected without requeue this run" in "\n".join(warnings)
    assert broker.message_count("jobs") == 0  # gone: the queue has no dead-letter exchange


def test_consume_help_says_where_no_retry_sends_failures() -> None:
    text = " ".join(invoke("consume", "--help").output.split())
    assert "--no-retry" in text and "dropped by RabbitMQ unless QUEUE has a dead-letter exchange" in text


# -- 26. shell completion, documented ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "cword", "expected"),
    [("swarrow cons", "1", "consume"), ("swarrow consume --max-m", "2", "--max-messages")],
)
def test_shell_completion_completes_commands_and_flags(words: str, cword: str, expected: str) -> None:
    env = {**os.environ, "COMP_WORDS": words, "COMP_CWORD": cword, "_SWARROW_COMPLETE": "bash_complete"}
    done = subprocess.run(
        [sys.executable, "-m", "swarrow"], env=env, capture_output=True, text=True, timeout=30
    )
    assert f"plain,{expected}" in done.stdout.splitlines(), done.stdout + done.stderr


def test_the_readme_documents_shell_completion() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for shell in ("bash", "zsh", "fish"):
        assert f"_SWARROW_COMPLETE={shell}_source swarrow" in readme


# -- 20. a pool imports the callable before it checks the queues -------------------------------------------


def test_a_pool_reports_an_import_error_as_one_before_checking_queues(
    memory: tuple[str, MemoryBroker],
) -> None:
    url, _ = memory  # the queue does not exist: an import error must still be reported as one
    result = invoke("consume", "tests.no_such_module:handle", "--url", url, "-q", "missing", "--workers", "2")
    assert result.exit_code == EXIT_IMPORT, result.output
    assert result.output.count("Error:") == 1
    assert (
        "module 'tests.no_such_module' not found" in result.output and "does not exist" not in result.output
    )


# -- 8, 24. each command's own exit codes; summaries that fit ----------------------------------------------


def _exit_status(help_text: str) -> dict[int, str]:
    block = help_text.split("Exit status:")[1]
    return {int(line.split()[0]): line for line in block.strip().splitlines() if line.strip()[:1].isdigit()}


def test_each_command_documents_its_own_exit_codes() -> None:
    consume, declare, publish = (
        _exit_status(invoke(c, "--help").output) for c in ("consume", "declare", "publish")
    )
    assert sorted(consume) == [0, 1, 2, 3, 4] and "callable" in consume[3]
    assert sorted(declare) == [0, 2, 4] and "other arguments" in declare[2]
    assert sorted(publish) == [0, 1, 2, 4] and "nacked" in publish[1]
    assert "graceful stop" not in " ".join(declare.values()) + " ".join(publish.values())


def test_swarrow_help_summaries_fit_on_one_line_uncut() -> None:
    output = CliRunner().invoke(cli, ["--help"], terminal_width=80).output
    commands = output.split("Commands:")[1].strip().split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in commands][:3] == ["consume", "declare", "publish"]
    for line in commands:
        assert len(line) <= 80 and not line.rstrip().endswith("..."), line
        assert line.rstrip().endswith("."), line  # a whole sentence, not one cut mid-way


# -- 12. memory:// with declare / publish ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["declare", "publish"])
def test_memory_urls_say_they_live_in_one_process(memory: tuple[str, MemoryBroker], command: str) -> None:
    url, broker = memory
    broker.declare_queue_nowait("jobs")
    extra = ["--body", "x"] if command == "publish" else ["--no-retry"]
    result = invoke(command, "--url", url, "-q", "jobs", *extra)
    assert result.exit_code == 0, result.output
    assert "memory:// lives inside one process" in result.stderr


# -- 27. publish: exchange, routing key and properties -----------------------------------------------------


def test_publish_sets_every_property_flag(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    broker.declare_queue_nowait("jobs")
    result = invoke("publish", "--url", url, "-q", "jobs", "--body", "b{n}", "--count", "2",
                    "--message-id", "order-{n}", "--correlation-id", "c-{n}", "--reply-to", "answers",
                    "--expiration", "1m", "--type", "order.created", "--app-id", "shop",
                    "--priority", "7")  # fmt: skip
    assert result.exit_code == 0, result.output
    got = sorted((broker.get_nowait("jobs"), broker.get_nowait("jobs")), key=lambda m: m.message_id or "")
    assert [m.message_id for m in got] == ["order-1", "order-2"]
    assert [m.correlation_id for m in got] == ["c-1", "c-2"]
    first = got[0]
    assert (first.reply_to, first.expiration, first.type, first.app_id, first.priority) == (
        "answers", "60000", "order.created", "shop", 7,
    )  # fmt: skip


def test_publish_to_an_exchange_with_a_routing_key(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    broker.declare_queue_nowait("orders")
    broker.declare_exchange("events", "direct")
    broker.bind_queue("orders", "events", "order.created")
    result = invoke(
        "publish", "--url", url, "--exchange", "events", "--routing-key", "order.created", "--body", "x"
    )
    assert result.exit_code == 0, result.output
    assert "to exchange events (routing key 'order.created')" in result.output
    assert broker.message_count("orders") == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--priority", "256"], "'--priority'"),
        (["--priority", "-1"], "'--priority'"),
        (["--expiration", "soon"], "'--expiration'"),
        (["--count", "2", "--message-id", "same"], "would share the id 'same'"),
        (["--message-id", ""], "'--message-id'"),
        (["--routing-key", "other"], "the default exchange routes by queue name"),
    ],
)
def test_bad_publish_flags_exit_2_naming_them(
    memory: tuple[str, MemoryBroker], args: list[str], needle: str
) -> None:
    url, broker = memory
    broker.declare_queue_nowait("jobs")
    result = invoke("publish", "--url", url, "-q", "jobs", "--body", "x", *args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert needle in result.output and broker.message_count("jobs") == 0


def test_publish_needs_a_queue_or_an_exchange(memory: tuple[str, MemoryBroker]) -> None:
    url, _ = memory
    result = invoke("publish", "--url", url, "--body", "x")
    assert result.exit_code == EXIT_USAGE and "give --queue QUEUE (or --exchange" in result.output


# -- 7. --metrics-addr: one meaning, documented ------------------------------------------------------------


def test_a_metrics_url_is_refused_saying_what_to_give(memory: tuple[str, MemoryBroker]) -> None:
    url, _ = memory
    result = invoke("consume", "tests.first_day_callbacks:ok", "--url", url, "-q", "jobs",
                    "--metrics-addr", "http://127.0.0.1:9100")  # fmt: skip
    assert result.exit_code == EXIT_USAGE
    assert (
        "'--metrics-addr'" in result.output
        and "give HOST:PORT (e.g. 127.0.0.1:9100), not a URL" in result.output
    )
