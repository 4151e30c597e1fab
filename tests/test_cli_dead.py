"""`swarrow dead ...` in process on `memory://`: output shapes, escaping, bodies, prompts and exit codes."""

from __future__ import annotations

import importlib
import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from swarrow import MemoryBroker, Message
from swarrow.cli import cli
from swarrow.topology import dead_letter_headers

dead_cli = importlib.import_module("swarrow.cli.dead")  # the package's `dead` attribute is the command


@pytest.fixture
def url() -> str:
    name = f"dead-cli-{uuid.uuid4().hex[:8]}"
    broker = MemoryBroker.named(name)
    broker.declare_queue_nowait("jobs")
    broker.declare_queue_nowait("jobs.dead")
    bodies = [b"plain text\nline two", b"\xff\x00\x01binary", b"x" * 5000]
    for i, body in enumerate(bodies):
        headers = dead_letter_headers(
            "myapp.Boom" if i else "ValueError", f"bad \x1b[31m{i}\u202e", attempts=4, queue="jobs"
        )
        broker.publish_nowait(Message(body, headers=headers, message_id=f"m{i}"), "jobs.dead")
    return f"memory://{name}"


def run(*args: str, url: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["dead", *args, "--url", url], input=input)
    return result.exit_code, result.stdout, result.stderr


def test_list_prints_a_table_with_the_time_it_took_and_json_on_request(url: str) -> None:
    code, out, _ = run("list", "-q", "jobs", url=url)
    assert code == 0 and "jobs.dead: 3 dead letters, grouped by error-type (read in" in out
    assert "myapp.Boom" in out and "ValueError" in out
    code, out, _ = run("list", "-q", "jobs", "--group-by", "error-message", "--json", url=url)
    data = json.loads(out)
    assert data["total"] == 3 and len(data["groups"]) == 3 and "elapsed_seconds" in data


def test_show_escapes_producer_text_and_prints_bodies_as_text_or_hex_cut(url: str) -> None:
    code, out, _ = run("show", "-q", "jobs", "--body", "--body-limit", "100", url=url)
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out and "bad \\x1b[31m0" in out
    assert "body (19 bytes, text):\n    plain text\n    line two" in out
    assert "body (9 bytes, hex):\n    ff 00 01 62" in out
    assert "body (5000 bytes, text, first 100 shown)" in out


def test_show_json_gives_binary_bodies_in_base64_and_finds_by_message_id(url: str) -> None:
    code, out, _ = run("show", "-q", "jobs", "--message-id", "m1", "--body", "--json", url=url)
    [letter] = json.loads(out)
    assert code == 0 and letter["message_id"] == "m1" and letter["body"]["encoding"] == "base64"
    assert letter["headers"]["x-swarrow-error-type"] == "myapp.Boom"
    code, out, _ = run("show", "-q", "jobs", "--message-id", "nope", url=url)
    assert code == 0 and "no dead letters with message id nope in jobs.dead" in out


def test_replay_shows_progress_on_request_and_ends_with_the_closing_line(url: str) -> None:
    code, out, err = run("replay", "-q", "jobs", "--error-type", "Boom", "--progress", url=url)
    assert (
        code == 0 and out.splitlines()[-1] == "replayed 2, kept 1, failed 0" and "replaying jobs.dead" in err
    )
    code, out, err = run("replay", "-q", "jobs", "--to", "missing", url=url)
    assert code == 2 and "target queue 'missing' does not exist" in err


def test_replay_that_leaves_failures_exits_1(url: str) -> None:
    broker = MemoryBroker.named(url.removeprefix("memory://"))
    broker.publish_nowait(Message(b"?", message_id="orphan"), "jobs.dead")
    code, out, err = run("replay", "--dead-queue", "jobs.dead", "--message-id", "orphan", url=url)
    assert code == 1 and "replayed 0, kept 3, failed 1" in out and "still in jobs.dead" in err


def test_purge_asks_on_a_terminal_and_refuses_without_one(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run("purge", "-q", "jobs", url=url)
    assert code == 2 and "refusing to purge without --yes" in err
    monkeypatch.setattr(dead_cli, "_can_ask", lambda: True)
    code, out, err = run("purge", "-q", "jobs", "--error-type", "Boom", url=url, input="n\n")
    assert code == 1 and "Drop 2 dead letter(s) from jobs.dead for good (keep 1)?" in err
    code, out, _ = run("purge", "-q", "jobs", "--error-type", "Boom", url=url, input="y\n")
    assert code == 0 and out.splitlines()[-1] == "purged 2, kept 1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list"], "give the work queue with --queue"),
        (["list", "-q", "jobs", "--group-by", "hour"], "'hour' is not one of"),
        (["replay", "-q", "jobs", "--since", "2h", "--until", "3h"], "is not before --until"),
        (["purge", "-q", "jobs", "--older-than", "soon", "--yes"], "invalid duration 'soon'"),
        (["replay", "-q", "jobs", "--to", "jobs.dead"], "cannot replay 'jobs.dead' into itself"),
        (["replay", "-q", "jobs", "--since", "99999999d"], "out of range"),  # was an OverflowError traceback
        (["purge", "-q", "jobs", "--older-than", "99999999d", "--yes"], "out of range"),  # was exit 1
        (["purge", "-q", "jobs", "--older-than", "999999999999999d", "--yes"], "out of range"),
    ],
)
def test_bad_input_is_exit_2_naming_it(url: str, args: list[str], message: str) -> None:
    code, _, err = run(*args, url=url)
    assert code == 2 and message in err


def test_the_url_comes_from_the_config_file_unless_given(url: str, tmp_path: object) -> None:
    from pathlib import Path

    config = Path(str(tmp_path)) / "swarrow.toml"
    config.write_text(f'[connection]\nurl = "{url}"\n', encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["dead", "list", "-q", "jobs", "--config", str(config)], env={"SWARROW_URL": None}
    )
    assert result.exit_code == 0 and "3 dead letters" in result.stdout
    broken = Path(str(tmp_path)) / "broken.toml"
    broken.write_text("[connection]\nurl = 3\n", encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["dead", "list", "-q", "jobs", "--config", str(broken)], env={"SWARROW_URL": None}
    )
    assert result.exit_code == 2 and "broken.toml" in result.stderr


def test_purge_drops_no_more_than_the_user_agreed_to_when_letters_arrive_meanwhile(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = MemoryBroker.named(url.removeprefix("memory://"))
    monkeypatch.setattr(dead_cli, "_can_ask", lambda: True)
    asked: list[str] = []

    def confirm(text: str, **_: object) -> bool:
        asked.append(text)
        for i in range(4):  # a worker dead-letters more of the same while the person reads the question
            headers = dead_letter_headers("myapp.Boom", "late", attempts=4, queue="jobs")
            broker.publish_nowait(Message(b"late", headers=headers, message_id=f"late{i}"), "jobs.dead")
        return True

    monkeypatch.setattr(dead_cli.click, "confirm", confirm)
    code, out, _ = run("purge", "-q", "jobs", "--error-type", "Boom", url=url)
    assert asked == ["Drop 2 dead letter(s) from jobs.dead for good (keep 1)?"]
    assert code == 0 and out.splitlines()[-1] == "purged 2, kept 5", out
    left = run("show", "-q", "jobs", "--json", url=url)[1]
    assert sorted(x["message_id"] for x in json.loads(left)) == ["late0", "late1", "late2", "late3", "m0"]


def test_a_queue_in_swarrots_layout_is_read_from_its_q_dl_without_dead_queue() -> None:
    name = f"dead-cli-{uuid.uuid4().hex[:8]}"
    broker = MemoryBroker.named(name)
    url = f"memory://{name}"
    broker.declare_queue_nowait("mails")
    broker.declare_queue_nowait("mails_dl")  # swarrot's (and rabbit-mq-admin-toolkit's) dead-letter queue
    headers = dead_letter_headers("myapp.Boom", "no", attempts=3, queue="mails")
    broker.publish_nowait(Message(b"x", headers=headers, message_id="s1"), "mails_dl")
    code, out, err = run("list", "-q", "mails", url=url)
    assert code == 0 and out.startswith("mails_dl: 1 dead letter"), out + err
    assert "'mails.dead' does not exist: reading 'mails_dl'" in err
    code, out, _ = run("replay", "-q", "mails", url=url)
    assert code == 0 and out.splitlines()[-1] == "replayed 1, kept 0, failed 0"
    copy = broker.get_nowait("mails")
    assert copy is not None and copy.message_id == "s1"
    code, out, _ = run("show", "-q", "mails", url=url)
    assert code == 0 and "no dead letters at all in mails_dl" in out
    code, _, err = run("list", "-q", "nothing", url=url)
    assert code == 2 and "queue 'nothing.dead' does not exist" in err and "nothing_dl" not in err


def test_replay_records_replayed_jobs_best_effort_and_refuses_a_bad_store_up_front(
    url: str, tmp_path: object
) -> None:
    bad = CliRunner().invoke(
        cli, ["dead", "replay", "-q", "jobs", "--url", url, "--track-jobs", "redis://u:pw9@h/0"]
    )
    assert bad.exit_code == 2 and "--track-jobs" in bad.stderr and "pw9" not in bad.stderr
    assert MemoryBroker.named(url.removeprefix("memory://")).message_count("jobs.dead") == 3  # nothing moved
    down = "postgresql://app:s3cret@127.0.0.1:1/jobs"
    dry = CliRunner().invoke(
        cli, ["dead", "replay", "-q", "jobs", "--url", url, "--track-jobs", down, "--dry-run"]
    )
    assert dry.exit_code == 0 and "warning" not in dry.stderr  # a dry run records nothing
    done = CliRunner().invoke(cli, ["dead", "replay", "-q", "jobs", "--url", url, "--track-jobs", down])
    assert done.exit_code == 0 and done.stdout.splitlines()[-1] == "replayed 3, kept 0, failed 0"
    assert "warning: 3 replayed job(s) not recorded" in done.stderr and "s3cret" not in done.stderr


def test_config_gives_the_url_of_the_consumer_of_that_queue(url: str, tmp_path: Path) -> None:
    path = tmp_path / "swarrow.toml"
    path.write_text(
        f'[consumers.other]\nqueue = "other"\ncallable = "m:f"\nurl = "memory://nowhere-{uuid.uuid4().hex}"\n'
        f'[consumers.jobs]\nqueue = "jobs"\ncallable = "m:f"\nurl = "{url}"\n'
    )
    result = CliRunner().invoke(cli, ["dead", "list", "-q", "jobs", "--config", str(path)])
    assert result.exit_code == 0 and "jobs.dead: 3 dead letters" in result.stdout, result.output
    args = ["dead", "show", "--dead-queue", "jobs.dead", "--config", str(path)]
    by_dead_queue = CliRunner().invoke(cli, args)
    assert by_dead_queue.exit_code == 0 and "message_id=m0" in by_dead_queue.stdout, by_dead_queue.output
    one = tmp_path / "one.toml"
    one.write_text(f'[consumers.jobs]\nqueue = "elsewhere"\ncallable = "m:f"\nurl = "{url}"\n')
    only = CliRunner().invoke(cli, ["dead", "list", "-q", "jobs", "--config", str(one)])
    assert only.exit_code == 0 and "3 dead letters" in only.stdout, only.output  # the file's only URL


def test_replay_with_config_records_into_the_store_of_the_consumer_of_that_queue(
    url: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/jobs.db"
    path = tmp_path / "swarrow.toml"
    path.write_text(
        f'[consumers.jobs]\nqueue = "jobs"\ncallable = "m:f"\nurl = "{url}"\ntrack_jobs = "{store}"\n'
    )
    done = CliRunner().invoke(
        cli, ["dead", "replay", "-q", "jobs", "--config", str(path)], env={"SWARROW_TRACK_JOBS": ""}
    )
    assert done.exit_code == 0 and done.stdout.splitlines()[-1] == "replayed 3, kept 0, failed 0", done.output
    status = CliRunner().invoke(cli, ["jobs", "status", "m0", "m1", "m2", "--config", str(path)])
    assert status.exit_code == 7 and status.stdout.count(" retrying ") == 3, status.output


def test_a_replayed_swarrot_letter_counts_its_retries_afresh() -> None:
    name = f"dead-cli-{uuid.uuid4().hex[:8]}"
    url = f"memory://{name}"
    broker = MemoryBroker.named(name)
    base = ["-q", "mails", "--url", url, "--retry-topology", "swarrot", "--retry-delays", "60s"]
    assert CliRunner().invoke(cli, ["declare", *base]).exit_code == 0
    # What a PHP swarrot worker (or swarrow with --retry-topology swarrot) leaves after its last retry
    spent = {"swarrot_retry_attempts": 1, "x-swarrow-attempt": 1, "x-swarrow-original-queue": "mails"}
    broker.publish_nowait(Message(b"x", headers=spent, message_id="s1"), "mails_dl")
    assert CliRunner().invoke(cli, ["dead", "replay", "-q", "mails", "--url", url]).exit_code == 0
    copy = broker.get_nowait("mails")
    assert copy is not None and "swarrot_retry_attempts" not in copy.headers, copy.headers
    broker.publish_nowait(copy, "mails")
    consume = ["consume", "tests.cli_callbacks:boom", *base, "--max-messages", "1", "--no-signals"]
    failed = CliRunner().invoke(cli, consume)
    assert failed.exit_code == 0, failed.output
    # retried, not dead-lettered at once
    assert broker.message_count("mails_dl") == 0 and broker.message_count("mails_retry_60") == 1
