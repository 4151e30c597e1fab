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
        w.startswith("retries are off and jobs has no dead-letter exchange: a failed message")
        for w in warnings
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


@pytest.mark.parametrize("command", ["list", "show", "replay", "purge"])
def test_dead_commands_document_their_own_exit_codes_not_consumes(command: str) -> None:
    codes = _exit_status(invoke("dead", command, "--help").output)
    assert sorted(codes) == [0, 1, 2, 4]
    assert "not replayed" in codes[1] and "does not exist" in codes[2] and "lost" in codes[4]
    assert "graceful stop" not in " ".join(codes.values()) and "callable" not in " ".join(codes.values())


def test_swarrow_help_summaries_fit_on_one_line_uncut() -> None:
    output = CliRunner().invoke(cli, ["--help"], terminal_width=80).output
    commands = output.split("Commands:")[1].strip().split("\n\n")[0].splitlines()
    assert {"consume", "declare", "publish"} <= {line.split()[0] for line in commands}
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
    broker.declare_exchange_nowait("events", "direct")
    broker.bind_queue_nowait("orders", "events", "order.created")
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
        (["--expiration", "0.1ms"], "at least 1ms"),
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


# -- 3, 23. the same retry rules for flags and config; config errors name the key and the file -------------


def _config(tmp_path: Path, body: str, url: str) -> Path:
    path = tmp_path / "swarrow.toml"
    path.write_text(f'[connection]\nurl = "{url}"\n\n[consumers.jobs]\nqueue = "jobs"\n'
                    f'callable = "tests.first_day_callbacks:ok"\n{body}')  # fmt: skip
    return path


def test_config_attempts_and_delays_that_disagree_are_refused_naming_both_keys(
    memory: tuple[str, MemoryBroker], tmp_path: Path
) -> None:
    url, broker = memory
    path = _config(tmp_path, '[consumers.jobs.retry]\nattempts = 2\ndelays = "1s,2s,4s"\n', url)
    result = invoke("consume", "--config", str(path), "jobs", "--declare")
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"attempts = 2 in [consumers.jobs.retry] of {path} does not match" in result.output
    assert f"delays = 1s,2s,4s in [consumers.jobs.retry] of {path} (3 delays)" in result.output
    assert broker.queue_names() == []


def test_delays_on_the_command_line_beat_the_config_files_attempts(
    memory: tuple[str, MemoryBroker], tmp_path: Path
) -> None:
    url, _ = memory
    path = _config(tmp_path, "[consumers.jobs.retry]\nattempts = 5\n", url)
    result = invoke("consume", "--config", str(path), "jobs", "--retry-delays", "1s,2s", "--print-settings")
    assert result.exit_code == 0, result.output
    assert "retry_delays = [1s, 2s] (2 retries)" in result.output


def test_a_config_error_names_the_key_and_the_file_not_a_flag(
    memory: tuple[str, MemoryBroker], tmp_path: Path
) -> None:
    url, _ = memory
    path = _config(tmp_path, "prefetch = 1\nconcurrency = 5\n", url)
    result = invoke("consume", "--config", str(path), "jobs")
    assert result.exit_code == EXIT_USAGE
    assert (
        f"prefetch = 1 in [consumers.jobs] of {path} must be >= concurrency = 5 in [consumers.jobs] of {path}"
        in (result.output)
    )
    assert "--prefetch" not in result.output


# -- 15. ./swarrow.toml is the default config file ---------------------------------------------------------


def test_swarrow_toml_in_the_working_directory_is_read_for_a_consumer_name(
    memory: tuple[str, MemoryBroker], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = memory
    _config(tmp_path, "prefetch = 7\n", url)
    monkeypatch.chdir(tmp_path)
    result = invoke("consume", "jobs", "--print-settings")
    assert result.exit_code == 0, result.output
    assert f"# config file: {tmp_path / 'swarrow.toml'}" in result.output
    assert (
        "prefetch = 7" in result.output and "# prefetch in [consumers.jobs] of swarrow.toml" in result.output
    )
    # a module:callable target never reads it: only what the command line says
    plain = invoke("consume", "tests.first_day_callbacks:ok", "-q", "other", "--print-settings")
    assert "config file" not in plain.output and "prefetch = 100" in plain.output


def test_a_consumer_name_without_any_config_file_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("consume", "jobs", "-q", "jobs")
    assert result.exit_code == EXIT_USAGE
    assert "expected module:callable" in result.output and "no ./swarrow.toml here" in result.output


# -- 26. --print-settings --------------------------------------------------------------------------------


def test_print_settings_shows_how_values_were_understood_and_where_they_came_from() -> None:
    env = {"SWARROW_URL": "amqp://app:s3cr3t-pw@rabbit:5672/prod"}
    result = invoke("consume", "tests.first_day_callbacks:ok", "-q", "jobs", "--memory-limit", "512mb",
                    "--retry-delays", "exp:1s..16m", "--max-runtime", "1h30m", "--print-settings",
                    env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.output
    assert "memory_limit = 512 MiB (536,870,912 bytes)" in out and "# --memory-limit" in out
    assert "retry_delays = [1s, 2s, 4s, 8s, 16s, 32s, 64s, 128s, 256s, 512s, 16m] (11 retries)" in out
    assert "max_runtime = 90m (5400 s)" in out
    assert 'url = "amqp://app:***@rabbit:5672/prod"' in out and "# SWARROW_URL" in out
    assert "s3cr3t" not in out and "prefetch = 100" in out and "# default" in out


def test_print_settings_says_an_ack_batch_above_half_the_prefetch_is_lowered() -> None:
    # Before: "ack_batch_size = 10" for --prefetch 10 --ack-batch-size 10, which runs with 5 (issue 12 #5).
    result = invoke("consume", "tests.first_day_callbacks:ok", "-q", "jobs", "--prefetch", "10",
                    "--ack-batch-size", "10", "--print-settings")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ack_batch_size = 10 (uses 5: at most half the prefetch)" in result.output
    fits = invoke("consume", "tests.first_day_callbacks:ok", "-q", "jobs", "--prefetch", "10",
                  "--ack-batch-size", "5", "--print-settings")  # fmt: skip
    assert "ack_batch_size = 5 " in fits.output and "uses" not in fits.output


def test_print_settings_shows_every_node_of_a_cluster_url_list(tmp_path: Path) -> None:
    path = tmp_path / "swarrow.toml"
    path.write_text(
        '[connection]\nurl = ["amqp://app:p/#?@1@rabbit1:5672/prod", "amqp://app:p/#?@1@rabbit2:5673/prod"]\n'
        '[consumers.jobs]\ncallable = "tests.first_day_callbacks:ok"\nqueue = "jobs"\n'
    )
    result = invoke("consume", "--config", str(path), "jobs", "--print-settings")
    assert result.exit_code == 0, result.output
    assert 'url = "amqp://app:***@rabbit1:5672,rabbit2:5673/prod"' in result.output
    assert "p/#" not in result.output


# -- 16. layers of your own from the CLI and the config file ------------------------------------------------


def test_layer_adds_a_processor_of_your_own_to_the_cli_stack(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    broker.declare_queue_nowait("jobs")
    broker.publish_nowait(Message(b"probe", headers={"x-synthetic": True}, message_id="synthetic"), "jobs")
    broker.publish_nowait(Message(b"real", message_id="real"), "jobs")
    result = invoke("consume", "tests.cli_callbacks:boom", "--url", url, "-q", "jobs", "--no-retry",
                    "--layer", "examples.skip_test_traffic:SkipTestTraffic", "--max-messages", "2",
                    *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    provider_acks = broker.message_count("jobs")
    assert provider_acks == 0
    assert "message synthetic from jobs acked" in result.output  # skipped by the layer, acked
    assert "message real from jobs rejected" in result.output  # reached the (failing) callback


def test_layers_in_the_config_file_and_bad_layers(memory: tuple[str, MemoryBroker], tmp_path: Path) -> None:
    url, _ = memory
    path = _config(tmp_path, 'layers = ["examples.skip_test_traffic:SkipTestTraffic"]\n', url)
    shown = invoke("consume", "--config", str(path), "jobs", "--print-settings")
    assert "layers = [examples.skip_test_traffic:SkipTestTraffic]" in shown.output
    missing = invoke(
        "consume", "tests.first_day_callbacks:ok", "--url", url, "-q", "jobs", "--layer", "nowhere:Layer"
    )
    assert missing.exit_code == EXIT_IMPORT and "module 'nowhere' not found" in missing.output
    bad = _config(tmp_path, 'layers = ["no-colon"]\n', url)
    result = invoke("consume", "--config", str(bad), "jobs")
    assert result.exit_code == EXIT_USAGE and "'layers' in [consumers.jobs]" in result.output


@pytest.mark.parametrize(
    ("layer", "why"),
    [
        ("examples.callbacks:send_email", "AttributeError"),  # a callback, not a processor factory
        ("builtins:str", "not a processor"),  # builds, but into something that cannot take a message
    ],
)
def test_a_layer_that_does_not_build_a_processor_is_exit_2_naming_it(
    memory: tuple[str, MemoryBroker], layer: str, why: str
) -> None:
    url, _ = memory
    result = invoke("consume", "tests.first_day_callbacks:ok", "--url", url, "-q", "jobs", "--declare",
                    "--layer", layer, "--stop-when-idle", "1s")  # fmt: skip
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"layer {layer.split(':')[1]}" in result.output and why in result.output
    assert "crashed" not in result.output


# -- 22. a pool's default prefetch -------------------------------------------------------------------------


def test_a_pools_default_prefetch_is_two_per_concurrency_slot() -> None:
    args = ["consume", "tests.first_day_callbacks:ok", "-q", "jobs", "--print-settings", "--workers", "3"]
    assert "prefetch = 8" in invoke(*args, "--concurrency", "4").output
    assert "prefetch = 50" in invoke(*args, "--prefetch", "50").output
    assert (
        "prefetch = 100"
        in invoke("consume", "tests.first_day_callbacks:ok", "-q", "jobs", "--print-settings").output
    )


# -- 1. a malformed URL is exit 2 at once, naming what is wrong, password masked ---------------------------


@pytest.mark.parametrize("command", ["consume", "declare", "publish"])
@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("amqp:/user:s3cret@host/", "expected '//' after 'amqp:'"),
        ("amqp://guest:s3cret@127.0.0.1:99999/", "port 99999 of host '127.0.0.1' is out of range"),
        ("amqp://guest:s3cret@127.0.0.1:notaport/", "port 'notaport' of host '127.0.0.1' is not a number"),
    ],
)
@pytest.mark.parametrize("via", ["flag", "env"])
def test_a_malformed_url_is_a_usage_error_naming_the_problem(
    command: str, url: str, needle: str, via: str
) -> None:
    target = ["tests.first_day_callbacks:ok"] if command == "consume" else []
    body = ["--body", "x"] if command == "publish" else []
    args = [command, *target, "-q", "jobs", *body]
    result = invoke(*args, "--url", url) if via == "flag" else invoke(*args, env={"SWARROW_URL": url})
    assert result.exit_code == EXIT_USAGE, result.output
    assert needle in result.output and ("'--url'" if via == "flag" else "SWARROW_URL") in result.output
    assert "s3cret" not in result.output and "Traceback" not in result.output


def test_a_malformed_url_in_the_config_file_names_the_key_and_file(tmp_path: Path) -> None:
    path = _config(tmp_path, "", "amqp://guest:s3cret@127.0.0.1:99999/")
    result = invoke("consume", "--config", str(path), "jobs")
    assert result.exit_code == EXIT_USAGE
    assert (
        f"url in [connection] of {path}: invalid broker URL" in result.output
        and "s3cret" not in result.output
    )


# -- 5. consume uses the retry queues that exist; given delays must match them ------------------------------


def test_consume_without_delays_uses_the_existing_retry_queues(
    memory: tuple[str, MemoryBroker], caplog: pytest.LogCaptureFixture
) -> None:
    url, broker = memory
    assert invoke("declare", "--url", url, "-q", "jobs", "--retry-delays", "200ms,200ms").exit_code == 0
    broker.publish_nowait(Message(b"x", message_id="m-1"), "jobs")
    result = invoke(
        "consume", "tests.cli_callbacks:boom", "--url", url, "-q", "jobs", "--max-messages", "1", *FAST
    )
    assert result.exit_code == 0, result.output
    assert "using the existing retry queues jobs.retry.1..2 (delays 200ms,200ms)" in caplog.text
    assert "retry 1 of 2 in 200ms" in caplog.text  # two attempts, as the queues say, not the default three
    assert broker.message_count("jobs.retry.1") == 1


def test_given_delays_that_differ_from_the_existing_queues_name_the_ones_that_match(
    memory: tuple[str, MemoryBroker],
) -> None:
    url, _ = memory
    assert invoke("declare", "--url", url, "-q", "jobs", "--retry-delays", "200ms,200ms").exit_code == 0
    result = invoke(
        "consume", "tests.cli_callbacks:ok", "--url", url, "-q", "jobs", "--retry-delays", "1s,2s,4s"
    )
    assert result.exit_code == EXIT_USAGE
    assert "retry queues jobs.retry.1..2 exist on" in result.output
    assert "with delays 200ms,200ms, not 1s,2s,4s: consume with --retry-delays 200ms,200ms" in result.output


def test_given_delays_may_use_fewer_of_the_existing_retry_queues(memory: tuple[str, MemoryBroker]) -> None:
    url, broker = memory
    assert invoke("declare", "--url", url, "-q", "jobs", "--retry-delays", "200ms,400ms").exit_code == 0
    broker.publish_nowait(Message(b"x"), "jobs")
    result = invoke("consume", "tests.cli_callbacks:ok", "--url", url, "-q", "jobs",
                    "--retry-delays", "200ms", "--max-messages", "1", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output


def test_no_retry_on_a_queue_with_a_dead_letter_exchange_says_where_failures_go(
    memory: tuple[str, MemoryBroker], caplog: pytest.LogCaptureFixture
) -> None:
    url, broker = memory
    broker.declare_queue_nowait("parked")
    broker.declare_queue_nowait(
        "jobs", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "parked"}
    )
    broker.publish_nowait(Message(b"x", message_id="m"), "jobs")
    result = invoke("consume", "tests.cli_callbacks:boom", "--url", url, "-q", "jobs", "--no-retry",
                    "--max-messages", "1", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "retries are off: a failed message is rejected to jobs's dead-letter exchange" in caplog.text
    assert "DROPPED" not in caplog.text and broker.message_count("parked") == 1


def test_json_log_lines_of_the_cli_carry_pid_and_host(memory: tuple[str, MemoryBroker]) -> None:
    import json
    import socket

    url, broker = memory
    broker.declare_queue_nowait("jobs")
    broker.publish_nowait(Message(b"x", message_id="m-1"), "jobs")
    result = invoke("consume", "tests.first_day_callbacks:ok", "--url", url, "-q", "jobs", "--no-retry",
                    "--max-messages", "1", "--log-format", "json", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    entries = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    message = next(e for e in entries if e.get("message_id") == "m-1")
    assert message["pid"] == os.getpid() and message["host"] == socket.gethostname()
    assert message["attempt"] == 1


@pytest.mark.parametrize(
    "command",
    [
        ["publish", "--queue", "q", "-"],
        ["publish", "--queue", "q", "--file", "-"],
        ["call", "--queue", "q", "-"],
    ],
)
def test_a_body_from_a_closed_stdin_is_a_usage_error_not_an_empty_message(command: list[str]) -> None:
    # `swarrow publish -` with stdin closed (`<&-`, a cron job, a service without input) published an empty
    # message the caller never gave: nothing is sent now, and the error says why (before any connection).
    ran = subprocess.run(
        [sys.executable, "-m", "swarrow", *command, "--url", "memory://closed-stdin"],
        capture_output=True, text=True, preexec_fn=lambda: os.close(0), timeout=60,
    )  # fmt: skip
    assert ran.returncode == 2, ran.stderr
    assert "stdin" in ran.stderr and "closed" in ran.stderr


def test_an_empty_pipe_is_still_an_empty_body() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "swarrow", "publish", "--queue", "nowhere", "-", "--url", "memory://empty-pipe"],
        input="", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # Read as an empty body, the command goes on to the broker (which has no such queue here).
    assert "closed" not in ran.stderr and "queue 'nowhere' does not exist" in ran.stderr
