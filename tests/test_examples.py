"""Every README snippet is a file under examples/ that a test runs or loads, so the README cannot drift."""

from __future__ import annotations

import configparser
import importlib.util
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import anyio
import pytest
from click.testing import CliRunner

from processors import AckProcessor, MaxMessagesProcessor
from swarrow import Consumer, Layer, MemoryBroker, Message, Stack
from swarrow.amqp import AmqpBroker
from swarrow.cli import cli
from swarrow.config import load_config
from swarrow.topology import RetryTopology, exponential_delays

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Fenced blocks in these languages are code a reader copies; bash blocks are commands, tested where they run.
CHECKED = ("python", "toml", "ini", "yaml")

pytestmark = pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="needs the source checkout")


def _snippets() -> list[tuple[int, str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else ""
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL):
        if match.group(1) in CHECKED:
            found.append((text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2)))
    return found


def _contains(text: str, snippet: str) -> bool:
    want = snippet.rstrip().splitlines()
    lines = text.splitlines()
    for start in range(len(lines) - len(want) + 1):
        window = textwrap.dedent("\n".join(lines[start : start + len(want)]))
        if [line.rstrip() for line in window.splitlines()] == [line.rstrip() for line in want]:
            return True
    return False


def test_the_readme_has_the_snippets_this_file_expects() -> None:
    assert {lang for _, lang, _ in _snippets()} == set(CHECKED)
    assert len(_snippets()) >= 7


@pytest.mark.parametrize(("line", "lang", "snippet"), _snippets(), ids=lambda v: str(v)[:20])
def test_every_readme_snippet_is_in_a_file_under_examples(line: int, lang: str, snippet: str) -> None:
    files = [p for p in EXAMPLES.rglob("*") if p.is_file() and p.suffix in (".py", ".toml", ".conf", ".yml")]
    holders = [p for p in files if _contains(p.read_text(encoding="utf-8"), snippet)]
    assert holders, f"README.md line {line}: this {lang} snippet is in no file under examples/ (they drifted)"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seed(broker: MemoryBroker, queue_name: str, count: int) -> None:
    for name, arguments in RetryTopology(queue_name, exponential_delays(3)).queues():
        broker.declare_queue_nowait(name, arguments=arguments or None)
    for n in range(count):
        broker.publish_nowait(Message(f"order {n}".encode(), message_id=f"m-{n}"), queue_name)


# -- the examples, run --------------------------------------------------------------------------------------


def _lines(stream: object) -> Iterator[str]:
    yield from iter(stream.readline, "")  # type: ignore[attr-defined]


def test_quickstart_starts_logs_without_any_logging_set_up_and_stops_cleanly_on_ctrl_c() -> None:
    env = {**os.environ, "SWARROW_URL": f"memory://quick-{uuid.uuid4().hex[:6]}", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    seen: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [seen.put(line) for line in _lines(process.stderr)], daemon=True).start()
    try:
        while "consuming emails (prefetch" not in (line := seen.get(timeout=30)):
            assert "Traceback" not in line, line
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    assert (
        " INFO swarrow.consumer: consuming emails (prefetch 100, concurrency 10)" in line
    )  # the CLI's format, though the script set up nothing


@pytest.mark.anyio
async def test_compose_consumes_through_the_onion_and_closes_the_broker_in_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"compose-{uuid.uuid4().hex[:6]}"
    broker = MemoryBroker.named(name)
    _seed(broker, "emails", 1000)
    await _load("compose").main(f"memory://{name}")
    out = capsys.readouterr().out
    assert out.count("e-mailing order") == 1000
    assert "stopped: max_messages" in out
    assert broker.message_count("emails") == 0


@pytest.mark.anyio
async def test_dead_letters_example_lists_then_replays_one_error_type(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from swarrow.topology import dead_letter_headers

    name = f"dead-{uuid.uuid4().hex[:6]}"
    broker = MemoryBroker.named(name)
    _seed(broker, "emails", 0)
    for n, error in enumerate(
        ["smtplib.SMTPServerDisconnected", "ValueError", "smtplib.SMTPServerDisconnected"]
    ):
        headers = dead_letter_headers(error, "boom", attempts=4, queue="emails")
        broker.publish_nowait(Message(b"mail %d" % n, headers=headers, message_id=f"d{n}"), "emails.dead")
    await _load("dead_letters").main(f"memory://{name}")
    out = capsys.readouterr().out
    assert "2 smtplib.SMTPServerDisconnected" in out and "1 ValueError" in out
    assert "replayed 2, kept 1, failed 0" in out
    assert broker.message_count("emails") == 2 and broker.message_count("emails.dead") == 1


@pytest.mark.anyio
@pytest.mark.integration
async def test_compose_consumes_from_rabbitmq_and_leaves_nothing_open(
    amqp_broker: AmqpBroker, amqp_url: str, queue_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await RetryTopology(queue_name, exponential_delays(3)).declare(amqp_broker)
    publisher = amqp_broker.publisher()
    numbers = iter(range(1000))

    async def publish() -> None:
        for n in numbers:
            await publisher.publish(Message(f"order {n}".encode()), queue_name)

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(publish)
    with anyio.fail_after(60):
        await _load("compose").main(amqp_url, queue_name)
    out = capsys.readouterr().out
    assert out.count("e-mailing order") == 1000 and "stopped: max_messages" in out
    info = await amqp_broker.inspect_queue(queue_name)
    assert info is not None and info.message_count == 0


@pytest.mark.anyio
async def test_default_stack_example_runs_the_recommended_layers(capsys: pytest.CaptureFixture[str]) -> None:
    name = f"default-{uuid.uuid4().hex[:6]}"
    broker = MemoryBroker.named(name)
    _seed(broker, "emails", 1000)
    with anyio.fail_after(30):
        await _load("default_stack").main(f"memory://{name}")
    assert capsys.readouterr().out.count("e-mailing order") == 1000
    assert broker.message_count("emails") == 0


@pytest.mark.anyio
async def test_skip_test_traffic_acks_synthetic_messages_without_the_callback() -> None:
    skip = _load("skip_test_traffic").SkipTestTraffic
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    broker.publish_nowait(Message(b"real"), "q")
    broker.publish_nowait(Message(b"probe", headers={"x-synthetic": True}), "q")
    provider = broker.provider("q", prefetch=10)
    seen: list[bytes] = []
    stack = Stack(
        Layer(MaxMessagesProcessor, limit=2),
        Layer(AckProcessor, provider=provider),
        Layer(skip),
        callback=lambda message: seen.append(message.body),
    )
    with anyio.fail_after(5):
        assert (await Consumer(provider, stack).run()).code == "max_messages"
    assert seen == [b"real"] and len(provider.acked) == 2 and broker.message_count("q") == 0


def test_the_readme_config_file_loads() -> None:
    emails = load_config(EXAMPLES / "emails.toml").consumer("emails")
    assert emails.values["queue"] == ("emails",) and emails.values["concurrency"] == 10
    assert emails.values["retry_delays"] == (5.0, 60.0, 600.0)
    assert emails.values["memory_limit"] == 512 and emails.values["log_format"] == "json"


def test_the_supervisord_program_uses_only_flags_consume_has() -> None:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",))
    parser.read(EXAMPLES / "supervisord" / "emails.conf")
    program = parser["program:emails"]
    argv = shlex.split(program["command"])
    assert argv[0].endswith("/swarrow") and argv[1] == "consume"
    consume = cli.commands["consume"]  # type: ignore[attr-defined]
    known = {opt for param in consume.params for opt in param.opts}
    flags = [arg for arg in argv if arg.startswith("--")]
    assert flags and set(flags) <= known, set(flags) - known
    assert program["stopsignal"] == "TERM" and int(program["stopwaitsecs"]) > 30  # above --grace-period 30s
    # the whole command line parses and checks, values included (with a callable that imports here)
    args = ["consume", "examples.callbacks:send_email", *argv[3:], "--print-settings"]
    checked = CliRunner().invoke(cli, args)
    assert checked.exit_code == 0, checked.output
    assert "retry_delays = [5s, 1m, 10m] (3 retries)" in checked.output
    assert "memory_limit = 512 MiB" in checked.output


@pytest.mark.anyio
@pytest.mark.integration
async def test_async_with_a_broker_connects_and_closes_even_when_the_block_fails(amqp_url: str) -> None:
    broker = AmqpBroker(amqp_url)
    seen: list[bool] = []

    async def fail_inside() -> None:
        async with broker as entered:
            seen.append(entered is broker and broker.is_connected)
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        await fail_inside()
    assert seen == [True] and not broker.is_connected
    async with MemoryBroker("with") as memory:
        assert isinstance(memory, MemoryBroker)
