"""The CLI through click's runner: every exit code, grouped help, precedence, on the in-memory broker."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

from swarrow import MemoryBroker, Message, __version__
from swarrow.cli import EXIT_BROKER, EXIT_CRASH, EXIT_IMPORT, EXIT_OK, EXIT_USAGE, cli

FAST = ["--no-signals", "--grace-period", "1s"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # The CLI configures the root logger onto the runner's (then closed) stderr: undo it after each test.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def memory() -> tuple[str, MemoryBroker]:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    return f"memory://{name}", MemoryBroker.named(name)


def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    # Each run configures the root logger onto its runner's stderr, closed once the run returns: a second
    # run in the same test must not inherit that handler (click < 8.3.2 then fails writing to it).
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return CliRunner().invoke(cli, list(args), input=input, env=env)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def fill(broker: MemoryBroker, queue: str, count: int, *, retry_delays: int = 3) -> None:
    broker.declare_queue_nowait(queue)
    for k in range(1, retry_delays + 1):
        broker.declare_queue_nowait(
            f"{queue}.retry.{k}",
            arguments={
                "x-message-ttl": 1000 * 2 ** (k - 1),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue,
            },
        )
    broker.declare_queue_nowait(f"{queue}.dead")
    for n in range(count):
        broker.publish_nowait(Message(b"x", message_id=f"m{n}"), queue)


# -- help and version ------------------------------------------------------------------------------------


def test_consume_help_reads_like_a_man_page_with_sections_in_order_and_defaults() -> None:
    result = invoke("consume", "--help")
    assert result.exit_code == EXIT_OK
    out = " ".join(result.output.split())  # wrapping depends on the terminal width
    headings = [
        "General:",
        "Connection:",
        "Concurrency:",
        "Limits:",
        "Retry:",
        "Observability:",
        "Lifecycle:",
    ]
    positions = [out.index(h) for h in headings]
    assert positions == sorted(positions)
    assert "[default: 100" in out  # prefetch
    assert "[default: 30s]" in out  # grace period
    assert "[default: amqp://guest:guest@127.0.0.1:5672/]" in out
    for flag in (
        "--max-messages",
        "--memory-limit",
        "--retry-delays",
        "--no-retry",
        "--metrics-addr",
        "--log-format",
        "--stop-when-idle",
        "--requeue-on-error",
        "--no-catch",
        "--declare",
    ):
        assert flag in out
    assert "Exit status:" in out and "4 the broker is unreachable" in out
    assert "SWARROW_URL" in out


@pytest.mark.parametrize("command", ["declare", "publish"])
def test_other_commands_have_grouped_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == EXIT_OK
    assert "Connection:" in result.output and "--url URL" in result.output


def test_version_flag() -> None:
    result = invoke("--version")
    assert result.exit_code == EXIT_OK
    assert __version__ in result.output


def test_python_dash_m_swarrow_runs_the_same_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "swarrow", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    assert __version__ in done.stdout


# -- consume: graceful stops ------------------------------------------------------------------------------


def test_consumes_n_messages_and_exits_0(memory: tuple[str, MemoryBroker], tmp_path: Path) -> None:
    url, broker = memory
    fill(broker, "jobs", 5)
    record = tmp_path / "ids"
    result = invoke(
        "consume",
        "tests.cli_callbacks:record",
        "--url",
        url,
        "-q",
        "jobs",
        "--max-messages",
        "3",
        *FAST,
        env={"SWARROW_TEST_RECORD": str(record)},
    )
    assert result.exit_code == EXIT_OK, result.output
    assert record.read_text().split() == ["m0", "m1", "m2"]
    assert broker.message_count("jobs") == 2
    assert "max_messages" in result.output
    assert url in result.output  # the start line names the broker


def test_stop_when_idle_drains_and_exits_0(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    fill(broker, "jobs", 4)
    result = invoke(
        "consume",
        "tests.cli_callbacks:ok",
        "--url",
        url,
        "-q",
        "jobs",
        "--stop-when-idle",
        "200ms",
        "--concurrency",
        "2",
        *FAST,
    )
    assert result.exit_code == EXIT_OK, result.output
    assert broker.message_count("jobs") == 0
    assert "idle" in result.output


def test_declare_flag_creates_the_queue_and_retry_topology_on_a_fresh_memory_broker(
    memory: tuple[str, MemoryBroker],
) -> None:
    url, broker = memory
    result = invoke(
        "consume",
        "tests.cli_callbacks:ok",
        "--url",
        url,
        "-q",
        "fresh",
        "--declare",
        "--retry-delays",
        "1s,5s",
        "--stop-when-idle",
        "100ms",
        *FAST,
    )
    assert result.exit_code == EXIT_OK, result.output
    assert broker.queue_names() == ["fresh", "fresh.dead", "fresh.retry.1", "fresh.retry.2"]


def test_failures_are_retried_through_the_broker_not_fatal(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    fill(broker, "jobs", 2)
    result = invoke(
        "consume", "tests.cli_callbacks:boom", "--url", url, "-q", "jobs", "--max-messages", "2", *FAST
    )
    assert result.exit_code == EXIT_OK, result.output
    assert broker.message_count("jobs.retry.1") == 2
    # Each failure is one warning naming the error and the retry, not a crash dump.
    assert result.stderr.count("failed on attempt 1 (ValueError: boom on m") == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_time_limit_fails_a_hanging_message_into_the_retry_topology(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    fill(broker, "jobs", 2)
    result = invoke(
        "consume", "tests.cli_callbacks:hang", "--url", url, "-q", "jobs",
        "--time-limit", "100ms", "--max-messages", "2", "--no-uvloop", *FAST,
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    assert broker.message_count("jobs.retry.1") == 2  # each timed out, then was republished for retry
    assert broker.message_count("jobs") == 0


# -- consume: usage errors (exit 2) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-messages", "0"], "'--max-messages'"),
        (["--max-messages", "-3"], "'--max-messages'"),
        (["--memory-limit", "12XB"], "'--memory-limit'"),
        (["--max-runtime", "soon"], "'--max-runtime'"),
        (["--retry-delays", "exp:1s"], "'--retry-delays'"),
        (["--metrics-addr", "localhost:http"], "'--metrics-addr'"),
        (["--log-format", "xml"], "'--log-format'"),
        (["--prefetch", "5", "--concurrency", "10"], "--prefetch 5 must be >= --concurrency 10"),
        (["--retry-attempts", "5", "--retry-delays", "1s,2s"], "--retry-attempts 5 does not match"),
        (["--ack-batch-size", "0"], "'--ack-batch-size'"),
        (["--ack-flush-ms", "0"], "'--ack-flush-ms'"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    memory: tuple[str, MemoryBroker], args: list[str], needle: str
) -> None:
    url, _ = memory
    result = invoke("consume", "tests.cli_callbacks:ok", "--url", url, "-q", "q", *args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert needle in result.output
    assert "Traceback" not in result.output


def test_queue_is_required() -> None:
    result = invoke("consume", "tests.cli_callbacks:ok")
    assert result.exit_code == EXIT_USAGE
    assert "--queue is required" in result.output


def test_missing_queue_on_memory_says_how_to_create_it(memory: tuple[str, MemoryBroker]) -> None:
    url, _ = memory
    result = invoke("consume", "tests.cli_callbacks:ok", "--url", url, "-q", "nowhere", *FAST)
    assert result.exit_code == EXIT_USAGE
    assert "queue 'nowhere' does not exist" in result.output
    assert "--declare" in result.output and "starts empty" in result.output


def test_missing_retry_queues_are_named_before_consuming(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    broker.declare_queue_nowait("bare")
    result = invoke("consume", "tests.cli_callbacks:ok", "--url", url, "-q", "bare", *FAST)
    assert result.exit_code == EXIT_USAGE
    assert "'bare.retry.1'" in result.output and "'bare.dead'" in result.output
    assert "swarrow declare --queue bare --retry-delays 1s,2s,4s" in result.output
    ok = invoke(
        "consume",
        "tests.cli_callbacks:ok",
        "--url",
        url,
        "-q",
        "bare",
        "--no-retry",
        "--stop-when-idle",
        "100ms",
        *FAST,
    )
    assert ok.exit_code == EXIT_OK, ok.output


def test_unsupported_url_scheme_is_a_usage_error() -> None:
    result = invoke("consume", "tests.cli_callbacks:ok", "--url", "redis://u:pw@localhost/", "-q", "q")
    assert result.exit_code == EXIT_USAGE
    assert "unsupported scheme 'redis'" in result.output and "pw@" not in result.output


# -- consume: import errors (exit 3) ----------------------------------------------------------------------


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "cli_app_broken.py").write_text("raise RuntimeError('no database configured')\n")
    (tmp_path / "cli_app_dep.py").write_text("import cli_app_missing_dependency\n")
    (tmp_path / "cli_app_good.py").write_text(
        "class Handlers:\n    def handle(self, m):\n        pass\nhandlers = Handlers()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield tmp_path
    for name in ("cli_app_broken", "cli_app_dep", "cli_app_good"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "cli_no_such_module:handle",
            "cannot import 'cli_no_such_module:handle': module 'cli_no_such_module' not found",
        ),
        ("tests.cli_nope:handle", "module 'tests.cli_nope' not found"),
        ("tests.cli_callbacks:nope", "module 'tests.cli_callbacks' has no attribute 'nope'"),
        ("cli_app_good:handlers.missing", "module 'cli_app_good:handlers' has no attribute 'missing'"),
        ("cli_app_broken:handle", "RuntimeError while importing: no database configured"),
        ("cli_app_dep:handle", "ModuleNotFoundError: No module named 'cli_app_missing_dependency'"),
        ("tests.cli_callbacks:not_callable", "'not_callable' is a int, not a callable"),
    ],
)
def test_import_failures_exit_3_saying_which_part_and_why(app_dir: Path, target: str, message: str) -> None:
    result = invoke("consume", target, "--url", "memory://unused", "-q", "q")
    assert result.exit_code == EXIT_IMPORT, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_imports_from_the_working_directory(app_dir: Path, memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    fill(broker, "jobs", 1)
    result = invoke(
        "consume", "cli_app_good:handlers.handle", "--url", url, "-q", "jobs", "--max-messages", "1", *FAST
    )
    assert result.exit_code == EXIT_OK, result.output


def test_a_target_without_colon_is_a_usage_error() -> None:
    result = invoke("consume", "tests.cli_callbacks", "-q", "q", "--url", "memory://x")
    assert result.exit_code == EXIT_USAGE
    assert "expected module:callable" in result.output


# -- consume: broker unreachable (exit 4) and crash (exit 1) ----------------------------------------------


def test_unreachable_broker_exits_4_with_the_password_masked() -> None:
    result = invoke(
        "consume", "tests.cli_callbacks:ok", "--url", "amqp://guest:s3cr3t@127.0.0.1:1/", "-q", "q"
    )
    assert result.exit_code == EXIT_BROKER, result.output
    assert "amqp://guest:***@127.0.0.1:1/" in result.output
    assert "s3cr3t" not in result.output
    assert "Traceback" not in result.output


def test_swarrow_url_from_the_environment_is_used_and_masked() -> None:
    result = invoke(
        "consume", "tests.cli_callbacks:ok", "-q", "q", env={"SWARROW_URL": "amqp://u:hunter2@127.0.0.1:1/"}
    )
    assert result.exit_code == EXIT_BROKER
    assert "hunter2" not in result.output and "u:***@127.0.0.1:1" in result.output


@pytest.mark.parametrize("command", ["consume", "declare", "publish"])
def test_an_unparsable_cluster_url_is_a_usage_error_naming_what_is_wrong(command: str) -> None:
    url = "amqp://app:s3cr/et@h1:5672,h2:notaport,h3/"
    args = {"consume": ["tests.cli_callbacks:ok"], "declare": [], "publish": ["--body", "x"]}[command]
    result = invoke(command, *args, "--url", url, "-q", "q")
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Invalid value for '--url'" in result.output
    assert "port 'notaport' of host 'h2' is not a number" in result.output
    assert "s3cr" not in result.output and "Traceback" not in result.output


def test_a_cluster_whose_every_node_refuses_exits_4_naming_each_node_masked() -> None:
    result = invoke("declare", "--url", "amqp://guest:s3cr3t@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/", "-q", "q")
    assert result.exit_code == EXIT_BROKER, result.output
    assert (
        "cannot connect to any of the 3 nodes of amqp://guest:***@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/"
        in (result.output)
    )
    assert all(f"127.0.0.1:{port}: " in result.output for port in (1, 2, 3))
    assert "s3cr3t" not in result.output


def test_an_exception_escaping_the_stack_exits_1_with_one_line(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    fill(broker, "jobs", 1)
    result = invoke(
        "consume", "tests.cli_callbacks:boom", "--url", url, "-q", "jobs", "--no-catch", "--no-retry", *FAST
    )
    assert result.exit_code == EXIT_CRASH, result.output
    assert "Error: the consumer crashed: ValueError: boom on m0" in result.output
    assert "Traceback" not in result.output


def test_debug_level_shows_the_crash_traceback(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    fill(broker, "jobs", 1)
    result = invoke(
        "consume",
        "tests.cli_callbacks:boom",
        "--url",
        url,
        "-q",
        "jobs",
        "--no-catch",
        "--no-retry",
        "--log-level",
        "DEBUG",
        *FAST,
    )
    assert result.exit_code == EXIT_CRASH
    assert "Traceback" in result.output


# -- consume: --config and precedence ---------------------------------------------------------------------


def write_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "swarrow.toml"
    path.write_text(
        f"""
[connection]
url = "{url}"

[consumers.emails]
queue = "jobs"
callable = "tests.cli_callbacks:record"
grace_period = "1s"
{extra}
[consumers.emails.limits]
max_messages = 2

[consumers.emails.signal_handler]
enabled = false
"""
    )
    return path


def test_config_values_beat_defaults(memory: tuple[str, MemoryBroker], tmp_path: Path) -> None:
    url, broker = memory
    fill(broker, "jobs", 5)
    record = tmp_path / "ids"
    config = write_config(tmp_path, url)
    result = invoke("consume", "--config", str(config), "emails", env={"SWARROW_TEST_RECORD": str(record)})
    assert result.exit_code == EXIT_OK, result.output
    assert len(record.read_text().split()) == 2


def test_flags_beat_config_values(memory: tuple[str, MemoryBroker], tmp_path: Path) -> None:
    url, broker = memory
    fill(broker, "jobs", 5)
    record = tmp_path / "ids"
    config = write_config(tmp_path, "memory://not-this-one", extra="prefetch = 1\n")
    result = invoke(
        "consume",
        "--config",
        str(config),
        "emails",
        "--max-messages",
        "4",
        "--url",
        url,
        "--prefetch",
        "4",
        "--concurrency",
        "1",
        env={"SWARROW_TEST_RECORD": str(record)},
    )
    assert result.exit_code == EXIT_OK, result.output
    assert len(record.read_text().split()) == 4
    assert "prefetch 4, concurrency 1" in result.output


def test_swarrow_url_env_beats_the_config_url(memory: tuple[str, MemoryBroker], tmp_path: Path) -> None:
    url, broker = memory
    fill(broker, "jobs", 2)
    config = write_config(tmp_path, "memory://not-this-one")
    result = invoke("consume", "-c", str(config), "emails", env={"SWARROW_URL": url})
    assert result.exit_code == EXIT_OK, result.output
    assert broker.message_count("jobs") == 0


def test_config_unknown_key_exits_2_naming_key_table_and_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, "memory://x", extra="concurency = 3\n")
    result = invoke("consume", "--config", str(config), "emails")
    assert result.exit_code == EXIT_USAGE
    assert f"unknown key 'concurency' in [consumers.emails] of {config}" in result.output


def test_config_unknown_consumer_name_lists_the_names(tmp_path: Path) -> None:
    config = write_config(tmp_path, "memory://x")
    result = invoke("consume", "--config", str(config), "sms")
    assert result.exit_code == EXIT_USAGE
    assert "no consumer 'sms'" in result.output and "emails" in result.output


def test_config_file_must_exist(tmp_path: Path) -> None:
    result = invoke("consume", "--config", str(tmp_path / "absent.toml"), "emails")
    assert result.exit_code == EXIT_USAGE
    assert "'--config'" in result.output


# -- declare ----------------------------------------------------------------------------------------------


def test_declare_prints_created_then_found(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    first = invoke("declare", "--url", url, "-q", "orders", "--retry-delays", "1s,5s")
    assert first.exit_code == EXIT_OK, first.output
    assert first.stdout.splitlines() == [
        "created orders",
        "created orders.retry.1 (x-message-ttl=1000ms → orders)",
        "created orders.retry.2 (x-message-ttl=5000ms → orders)",
        "created orders.dead",
    ]
    broker.publish_nowait(Message(b"x"), "orders")
    again = invoke("declare", "--url", url, "-q", "orders", "--retry-delays", "1s,5s")
    assert again.exit_code == EXIT_OK
    assert again.stdout.splitlines()[0] == "found orders (1 message)"
    assert again.stdout.splitlines()[1] == "found orders.retry.1 (x-message-ttl=1000ms → orders, 0 messages)"


def test_declare_conflicting_arguments_exit_2_naming_the_queue(memory: tuple[str, MemoryBroker]) -> None:
    url, _ = memory
    assert invoke("declare", "--url", url, "-q", "orders", "--retry-delays", "1s").exit_code == EXIT_OK
    result = invoke("declare", "--url", url, "-q", "orders", "--retry-delays", "2s")
    assert result.exit_code == EXIT_USAGE
    assert "'orders.retry.1'" in result.output


def test_declare_without_retry_declares_one_queue(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    result = invoke("declare", "--url", url, "-q", "plain", "--no-retry", "--quorum")
    assert result.exit_code == EXIT_OK
    assert result.stdout.strip() == "created plain (quorum)"
    assert broker.queue_names() == ["plain"]


def test_declare_against_an_unreachable_broker_exits_4() -> None:
    result = invoke("declare", "--url", "amqp://guest:pw1234@127.0.0.1:1/", "-q", "q")
    assert result.exit_code == EXIT_BROKER
    assert "pw1234" not in result.output


# -- publish ----------------------------------------------------------------------------------------------


def test_publish_numbers_bodies_and_sets_headers_and_ids(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    broker.declare_queue_nowait("q")
    result = invoke(
        "publish",
        "--url",
        url,
        "-q",
        "q",
        "--body",
        "msg {n}",
        "--count",
        "3",
        "-H",
        "k=v",
        "-H",
        "tenant=a=b",
        "--persistent",
        "--content-type",
        "text/plain",
    )
    assert result.exit_code == EXIT_OK, result.output
    assert "published 3 messages to q in" in result.output and "confirmed" in result.output
    got = [broker.get_nowait("q") for _ in range(3)]
    assert sorted(m.body for m in got if m) == [b"msg 1", b"msg 2", b"msg 3"]
    first = got[0]
    assert first is not None
    assert first.headers == {"k": "v", "tenant": "a=b"}
    assert first.persistent and first.content_type == "text/plain"
    assert len({m.message_id for m in got if m}) == 3


def test_publish_reads_stdin_and_files(memory: tuple[str, MemoryBroker], tmp_path: Path) -> None:
    url, broker = memory
    broker.declare_queue_nowait("q")
    assert invoke("publish", "--url", url, "-q", "q", "-", input="from stdin").exit_code == EXIT_OK
    body = tmp_path / "body.json"
    body.write_bytes(b'{"a": 1}')
    assert invoke("publish", "--url", url, "-q", "q", "--file", str(body)).exit_code == EXIT_OK
    first, second = broker.get_nowait("q"), broker.get_nowait("q")
    assert first is not None and first.body == b"from stdin"
    assert second is not None and second.body == b'{"a": 1}'


@pytest.mark.parametrize("args", [[], ["--body", "a", "-"], ["x"]])
def test_publish_needs_exactly_one_body_source(memory: tuple[str, MemoryBroker], args: list[str]) -> None:
    url, broker = memory
    broker.declare_queue_nowait("q")
    result = invoke("publish", "--url", url, "-q", "q", *args)
    assert result.exit_code == EXIT_USAGE


def test_publish_to_a_missing_queue_exits_2(memory: tuple[str, MemoryBroker]) -> None:
    url, _ = memory
    result = invoke("publish", "--url", url, "-q", "absent", "--body", "x")
    assert result.exit_code == EXIT_USAGE
    assert "queue 'absent' does not exist" in result.output


def test_a_nacked_publish_is_reported_by_id_the_others_go_on_and_it_exits_1(
    memory: tuple[str, MemoryBroker],
) -> None:
    url, broker = memory
    broker.declare_queue_nowait("q")
    broker.fail_next_publishes(1)
    result = invoke(
        "publish",
        "--url",
        url,
        "-q",
        "q",
        "--body",
        "x",
        "--count",
        "3",
        "--window",
        "2",
        "--message-id",
        "run-{n}",
    )
    assert result.exit_code == EXIT_CRASH
    assert "not confirmed: run-1 (" in result.stderr and "nacked" in result.stderr
    assert "published 2 of 3 messages to q" in result.stdout
    assert "1 message(s) not confirmed" in result.stderr
    queued = [broker.get_nowait("q") for _ in range(broker.message_count("q"))]
    assert sorted(m.message_id or "" for m in queued if m is not None) == ["run-2", "run-3"]


def test_publish_gives_up_after_a_window_of_failures_and_nothing_confirmed_for_a_while(
    memory: tuple[str, MemoryBroker],
) -> None:
    url, broker = memory
    broker.declare_queue_nowait("q")
    broker.fail_next_publishes(4)
    args = ["publish", "--url", url, "-q", "q", "--body", "x", "--count", "50", "--window", "4"]
    result = invoke(*args, "--give-up-after", "0s")
    assert result.exit_code == EXIT_CRASH
    assert "gave up after 4 failures in a row and nothing confirmed for 0 s, 46 not sent" in result.stderr
    assert result.stderr.count("\nnot confirmed: ") + result.stderr.startswith("not confirmed: ") == 4
    # A burst of failures (a whole window lost with a node) while confirms still come recently goes on.
    broker.fail_next_publishes(8)
    again = invoke(*args)  # default --give-up-after 60s
    assert again.exit_code == EXIT_CRASH and "gave up" not in again.stderr
    assert "published 42 of 50 messages" in again.stdout


def test_publish_progress_bar_on_request(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    broker.declare_queue_nowait("q")
    result = invoke("publish", "--url", url, "-q", "q", "--body", "x", "--count", "1000", "--progress")
    assert result.exit_code == EXIT_OK
    assert "publishing to q" in result.stderr
    assert broker.message_count("q") == 1000


def test_publish_to_an_unreachable_broker_exits_4() -> None:
    result = invoke("publish", "--url", "amqp://guest:pw1234@127.0.0.1:1/", "-q", "q", "--body", "x")
    assert result.exit_code == EXIT_BROKER
    assert "pw1234" not in result.output and "***" in result.output


def test_metrics_addr_in_use_exits_2(memory: tuple[str, MemoryBroker]) -> None:
    import socket

    url, broker = memory
    fill(broker, "jobs", 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("consume", "tests.cli_callbacks:ok", "--url", url, "-q", "jobs",
                        "--metrics-addr", f"127.0.0.1:{port}", "--max-messages", "1", *FAST)  # fmt: skip
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_consume_ends_the_process_only_for_its_own_hung_threads(
    memory: tuple[str, MemoryBroker], tmp_path: Path
) -> None:
    """A busy worker thread of another event loop is not this run's hung callback: consume returns.

    Before, the CLI counted every "AnyIO worker thread" of the process: in the pytest process one left
    by an earlier test made `consume` call os._exit(0), which ended `make test-lowest`'s unit run at
    37% with exit 0.
    """
    url, broker = memory
    fill(broker, "jobs", 2)
    release = threading.Event()
    started = threading.Event()

    async def busy_elsewhere() -> None:
        started.set()
        await anyio.to_thread.run_sync(release.wait)

    other = threading.Thread(target=anyio.run, args=(busy_elsewhere,), daemon=True)
    other.start()
    try:
        assert started.wait(5)
        record = {"SWARROW_TEST_RECORD": str(tmp_path / "ids")}
        result = invoke("consume", "tests.cli_callbacks:record", "--url", url, "-q", "jobs",
                        "--max-messages", "2", *FAST, env=record)  # fmt: skip
    finally:
        release.set()
        other.join(5)
    assert result.exit_code == EXIT_OK, result.output
    assert "still running after the stop" not in result.output
