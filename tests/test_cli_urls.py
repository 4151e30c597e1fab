"""Broker URLs through the CLI: checked once up front (exit 2, one line, password masked) and never printed
with their password, whatever its shape (issue 23 item 1, hardening item 9)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from swarrow.cli import EXIT_BROKER, EXIT_USAGE, cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


BAD_URLS = [
    ("amqp:/user:pa55@localhost/", "expected '//' after 'amqp:'"),
    ("amqp://user:pa55@localhost:99999/", "port 99999 of host 'localhost' is out of range"),
    ("amqp://user:pa55@localhost:notaport/", "port 'notaport' of host 'localhost' is not a number"),
    ("http://user:pa55@localhost/", "unsupported scheme 'http'"),
    ("amqp://user:pa55@/vhost", "no host"),
    ("amqp://user:pa55@h1,,h3/", "empty host in the node list"),
]


def _assert_one_clear_line(result: Result, names: str) -> None:
    assert result.exit_code == EXIT_USAGE, result.output
    assert names in result.output
    assert "pa55" not in result.output and "user:***@" in result.output
    assert "Traceback" not in result.output and "crashed" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output


@pytest.mark.parametrize(("url", "names"), BAD_URLS)
def test_consume_refuses_a_bad_url_with_exit_2(url: str, names: str) -> None:
    _assert_one_clear_line(invoke("consume", "tests.cli_callbacks:ok", "-q", "q", "--url", url), names)


@pytest.mark.parametrize(("url", "names"), BAD_URLS)
def test_a_bad_swarrow_url_is_exit_2_naming_the_variable(url: str, names: str) -> None:
    result = invoke("consume", "tests.cli_callbacks:ok", "-q", "q", env={"SWARROW_URL": url})
    _assert_one_clear_line(result, names)
    assert "SWARROW_URL" in result.output


@pytest.mark.parametrize("command", [["declare", "--queue", "q"], ["publish", "--queue", "q", "--body", "x"]])
@pytest.mark.parametrize(("url", "names"), BAD_URLS[:3])
def test_declare_and_publish_refuse_a_bad_url_with_exit_2(command: list[str], url: str, names: str) -> None:
    _assert_one_clear_line(invoke(*command, "--url", url), names)


def test_a_bad_url_in_the_config_file_is_exit_2_naming_the_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "swarrow.toml"
    config.write_text(
        '[connection]\nurl = "amqp://user:pa55@localhost:99999/"\n'
        '[consumers.jobs]\nqueue = "q"\ncallable = "tests.cli_callbacks:ok"\n'
    )
    result = invoke("consume", "--config", str(config), "jobs")
    _assert_one_clear_line(result, "port 99999")
    assert "swarrow.toml" in result.output and "url" in result.output


def test_a_list_of_nodes_in_the_config_file_is_one_cluster_url(tmp_path: Path) -> None:
    from swarrow.config import load_config

    config = tmp_path / "swarrow.toml"
    config.write_text(
        '[connection]\nurl = ["amqp://app:pw@h1:5672/prod", "amqp://app:pw@h2:5673/prod"]\n'
        '[consumers.jobs]\nqueue = "q"\ncallable = "m:f"\n'
    )
    from swarrow.urls import parse_url

    url = load_config(config).shared["url"]
    assert [str(node) for node in parse_url(url).nodes] == ["h1:5672", "h2:5673"]


def test_a_config_list_of_urls_that_disagree_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "swarrow.toml"
    config.write_text(
        '[connection]\nurl = ["amqp://user:pa55@h1/a", "amqp://user:pa55@h2/b"]\n'
        '[consumers.jobs]\nqueue = "q"\ncallable = "tests.cli_callbacks:ok"\n'
    )
    _assert_one_clear_line(invoke("consume", "--config", str(config), "jobs"), "differ in vhost")


@pytest.mark.parametrize("secret", ["s3cr/et", "s3cr#et", "s3cr?et", "s3c@ret"])
def test_a_password_with_url_characters_is_never_printed(secret: str) -> None:
    url = f"amqp://svc:{secret}@127.0.0.1:1/"
    result = invoke("consume", "tests.cli_callbacks:ok", "-q", "q", "--url", url, "--log-level", "DEBUG")
    assert result.exit_code == EXIT_BROKER, result.output
    assert "svc:***@127.0.0.1:1" in result.output
    assert secret not in result.output
    assert secret.split("/")[0].split("#")[0].split("?")[0] not in result.output


def test_a_one_slash_url_is_refused_at_once_not_retried_forever() -> None:
    started = time.monotonic()
    process = subprocess.run(
        [sys.executable, "-m", "swarrow", "declare", "--queue", "q", "--url", "amqp:/user:pa55@127.0.0.1/"],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert process.returncode == EXIT_USAGE, process.stderr.decode()[-2000:]
    assert time.monotonic() - started < 30
    assert b"pa55" not in process.stderr + process.stdout


def test_pool_workers_get_the_url_in_their_environment_not_on_their_command_line(tmp_path: Path) -> None:
    # `ps` shows every process's arguments to every local user: the password must not be among them.
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("reads /proc")
    import json
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    queue = f"h12b-urls-{uuid.uuid4().hex[:8]}"
    url = os.environ.get("SWARROW_URL", "amqp://guest:guest@127.0.0.1:5672/")
    from swarrow.urls import parse_url

    password = parse_url(url).password or "guest"
    command = [sys.executable, "-m", "swarrow", "consume", "tests.cli_callbacks:ok", "--queue", queue]
    command += ["--url", url, "--declare", "--workers", "2", "--metrics-addr", f"127.0.0.1:{port}"]
    env = {k: v for k, v in os.environ.items() if k not in ("SWARROW_URL", "SWARROW_POOL_WORKER")}
    log = tmp_path / "log"
    with log.open("wb") as sink:
        supervisor = subprocess.Popen(command, env=env, stderr=sink, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60  # two workers connecting on a loaded 2-core machine
        status: dict[str, object] = {}
        while time.monotonic() < deadline and status.get("workers_consuming") != 2:
            assert supervisor.poll() is None, log.read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
                    status = json.loads(response.read())
            except OSError:
                pass
            time.sleep(0.1)
        assert status.get("workers_consuming") == 2, f"{status}\n{log.read_text()[-2000:]}"
        pids = [worker["pid"] for worker in status["workers"]]  # type: ignore[attr-defined]
        for pid in pids:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert not any(password.encode() in arg for arg in argv), argv
            assert b"--url" not in argv and b"--queue" in argv
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=30)
        _delete_queues(url, queue)
    text = log.read_text()
    assert f":{password}@" not in text and "***@" in text


def _delete_queues(url: str, queue: str) -> None:
    import anyio

    from swarrow.factory import open_broker

    async def delete() -> None:
        broker = open_broker(url)
        try:
            for name in (queue, f"{queue}.retry.1", f"{queue}.retry.2", f"{queue}.retry.3", f"{queue}.dead"):
                await broker.delete_queue(name)
        finally:
            await broker.close()

    anyio.run(delete)
