"""`swarrow jobs …`, `consume --track-jobs` and `publish --print-ids` through click's runner."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

from swarrow import MemoryBroker, Message
from swarrow.cli import cli
from swarrow.cli.jobs import status_exit_code
from swarrow.config import load_config
from swarrow.jobs import Job, JobRecord, JobStore

NOW = time.time()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, env=env)


def rec(
    job_id: str, state: str, *, attempts: int = 1, age: float = 60, error: str | None = None
) -> JobRecord:
    started = NOW - age
    finished = None if state in ("running",) else started + 0.25
    return JobRecord(job_id, "orders", state, attempts, started, started, finished,
                     None if finished is None else 0.25, "host", 7, 100, 200 if finished else None,
                     error, "it broke\nsecond line" if error else None)  # fmt: skip


@pytest.fixture
def filled(store_url: str) -> str:
    async def fill() -> None:
        async with JobStore.open(store_url) as store:
            await store.write(
                [rec("ok-1", "succeeded"), rec("ok-2", "succeeded", attempts=2, error="app.Timeout"),
                 rec("dead", "dead_lettered", attempts=4, error="app.Boom"), rec("run", "running"),
                 rec("again", "retrying", error="app.Timeout"), rec("old", "succeeded", age=30 * 86400)]
            )  # fmt: skip

    anyio.run(fill)
    return store_url


@pytest.mark.parametrize(
    ("ids", "code"),
    [
        (["ok-1", "ok-2"], 0),
        (["ok-1", "dead", "nope", "run"], 1),  # failed wins over unknown and running
        (["ok-1", "nope", "run"], 6),  # unknown wins over running
        (["ok-1", "run", "again"], 7),
    ],
)
def test_status_prints_each_job_and_exits_by_the_worst_state(filled: str, ids: list[str], code: int) -> None:
    result = invoke("jobs", "status", *ids, "--store", filled)
    assert result.exit_code == code, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(ids)
    assert [line.split()[0] for line in lines] == ids


def test_status_text_shows_attempts_and_the_last_error_on_one_line(filled: str) -> None:
    result = invoke("jobs", "status", "ok-2", "dead", "nope", "--store", filled)
    assert "ok-2  succeeded  attempts=2  duration=" in result.output
    assert "last error: app.Timeout: it broke\\nsecond line" in result.output  # a newline cannot forge a line
    assert "nope  unknown" in result.output
    assert len(result.output.splitlines()) == 3


def test_status_json_and_ids_from_stdin(filled: str) -> None:
    result = invoke("jobs", "status", "-", "--json", "--store", filled, input="ok-1\n\nnope\n")
    assert result.exit_code == 6
    data = json.loads(result.output)
    assert [(d["id"], d["state"]) for d in data] == [("ok-1", "succeeded"), ("nope", "unknown")]
    assert data[0]["attempts"] == 1 and data[0]["host"] == "host" and data[0]["finished"].endswith("+00:00")


def test_unfinished_prints_running_retrying_and_unknown_and_exits_7(filled: str) -> None:
    result = invoke("jobs", "unfinished", "ok-1", "run", "again", "nope", "dead", "--store", filled)
    assert (result.exit_code, result.output.split()) == (7, ["run", "again", "nope"])
    done = invoke("jobs", "unfinished", "ok-1", "dead", "--store", filled)
    assert (done.exit_code, done.output) == (0, "")


def test_list_filters_and_json(filled: str) -> None:
    result = invoke("jobs", "list", "--store", filled, "--state", "succeeded", "--since", "1d", "--json")
    assert result.exit_code == 0, result.output
    assert sorted(d["id"] for d in json.loads(result.output)) == ["ok-1", "ok-2"]
    text = invoke("jobs", "list", "--store", filled, "--queue", "orders", "--limit", "2")
    assert text.exit_code == 0 and len(text.output.splitlines()) == 2
    assert invoke("jobs", "list", "--store", filled, "--queue", "other").output == ""
    iso = invoke("jobs", "list", "--store", filled, "--since", "2000-01-01T00:00", "--json")
    assert len(json.loads(iso.output)) == 6
    bad = invoke("jobs", "list", "--store", filled, "--since", "yesterday-ish")
    assert bad.exit_code == 2 and "--since" in bad.output


def test_stats_counts_percentiles_and_top_errors(filled: str) -> None:
    result = invoke("jobs", "stats", "--store", filled, "--json")
    data = json.loads(result.output)
    assert data["total"] == 6 and data["by_state"]["succeeded"] == 3 and data["by_state"]["running"] == 1
    assert data["duration_p50"] == pytest.approx(0.25)
    assert data["top_errors"][0] == {"error_type": "app.Timeout", "count": 2}
    text = invoke("jobs", "stats", "--store", filled, "--queue", "orders", "--since", "7d").output
    assert "jobs: 5" in text and "duration p50" in text and "app.Boom" in text


def test_prune_deletes_old_finished_jobs(filled: str) -> None:
    result = invoke("jobs", "prune", "--older-than", "14d", "--store", filled)
    assert (result.exit_code, result.output.strip()) == (0, "pruned 1 finished job older than 14d")
    again = invoke("jobs", "prune", "--older-than", "0s", "--state", "running", "--store", filled)
    assert "pruned 1 running job" in again.output
    assert invoke("jobs", "prune", "--older-than", "soon", "--store", filled).exit_code == 2


def test_store_from_the_environment_and_usage_errors(sqlite_url: str) -> None:
    assert invoke("jobs", "status", "x", env={"SWARROW_TRACK_JOBS": sqlite_url}).exit_code == 6
    missing = invoke("jobs", "status", "x", env={"SWARROW_TRACK_JOBS": ""})
    assert missing.exit_code == 2 and "no job store" in missing.output
    bad = invoke("jobs", "status", "x", "--store", "mysql://u:hunter2@h/db")
    assert bad.exit_code == 2 and "hunter2" not in bad.output and "unsupported job store URL" in bad.output
    assert invoke("jobs", "status", "--store", sqlite_url).exit_code == 2  # no id
    assert invoke("jobs", "list", "--state", "done", "--store", sqlite_url).exit_code == 2


def test_an_unreachable_store_is_exit_4_with_the_password_masked() -> None:
    result = invoke("jobs", "status", "x", "--store", "postgresql://app:s3cret@127.0.0.1:1/jobs")
    assert result.exit_code == 4, result.output
    assert "s3cret" not in result.output and "app:***@127.0.0.1:1" in result.output


def test_status_exit_code_precedence() -> None:
    job = Job.from_row(("a", "q", "retrying", 1, NOW, NOW, None, None, NOW, "h", 1, None, None, None, None))
    assert status_exit_code({}) == 0
    assert status_exit_code({"a": job}) == 7
    assert status_exit_code({"a": job, "b": None}) == 6


def test_consume_track_jobs_records_every_message(sqlite_url: str) -> None:
    name = f"cli-jobs-{uuid.uuid4().hex[:8]}"
    broker = MemoryBroker.named(name)
    broker.declare_queue_nowait("q")
    for n in range(20):
        broker.publish_nowait(Message(b"x", message_id=f"m{n}"), "q")
    result = invoke("consume", "tests.cli_callbacks:ok", "-q", "q", "--url", f"memory://{name}", "--no-retry",
                    "--no-signals", "--max-messages", "20", "--track-jobs", sqlite_url)  # fmt: skip
    assert result.exit_code == 0, result.output
    status = invoke("jobs", "status", *(f"m{n}" for n in range(20)), "--store", sqlite_url)
    assert status.exit_code == 0, status.output
    assert status.output.count(" succeeded ") == 20


def test_consume_rejects_a_bad_track_jobs_url_as_usage(tmp_path: Path) -> None:
    result = invoke("consume", "tests.cli_callbacks:ok", "-q", "q", "--url", "memory://unused",
                    "--track-jobs", "redis://u:pw123@h/0")  # fmt: skip
    assert result.exit_code == 2 and "--track-jobs" in result.output and "pw123" not in result.output


def test_config_track_jobs_key(tmp_path: Path) -> None:
    path = tmp_path / "swarrow.toml"
    path.write_text(
        '[consumers.orders]\nqueue = "orders"\ncallable = "m:f"\ntrack_jobs = "sqlite:///jobs.db"\n'
    )
    assert load_config(str(path)).consumer("orders").values["track_jobs"] == "sqlite:///jobs.db"


def test_print_settings_masks_the_job_store_password() -> None:
    result = invoke("consume", "tests.cli_callbacks:ok", "-q", "q", "--url", "memory://unused",
                    "--print-settings", "--track-jobs", "postgresql://app:Zz-s3cret@db/jobs")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert 'track_jobs = "postgresql://app:***@db/jobs"' in result.output and "Zz-s3cret" not in result.output


def test_swarrow_run_takes_track_jobs_like_default_stack(sqlite_url: str) -> None:
    import swarrow

    name = f"run-jobs-{uuid.uuid4().hex[:8]}"
    broker = MemoryBroker.named(name)
    broker.declare_queue_nowait("q")
    for n in range(5):
        broker.publish_nowait(Message(b"x", message_id=f"r{n}"), "q")

    def handle(message: Message) -> None:
        pass

    reason = swarrow.run(handle, queue="q", url=f"memory://{name}", retry=False, signals=False, log=False,
                         max_messages=5, track_jobs=sqlite_url)  # fmt: skip
    assert reason.code == "max_messages"
    assert invoke("jobs", "status", *(f"r{n}" for n in range(5)), "--store", sqlite_url).exit_code == 0


def test_huge_limits_and_ages_are_answered_not_a_traceback(filled: str) -> None:
    listed = invoke("jobs", "list", "--limit", str(10**20), "--store", filled)
    assert listed.exit_code == 0 and len(listed.output.splitlines()) == 6, listed.output
    pruned = invoke("jobs", "prune", "--older-than", "9999999999999d", "--store", filled)
    assert pruned.exit_code == 0 and pruned.output.startswith("pruned 0 finished jobs"), pruned.output


@pytest.mark.parametrize(
    "sub", [["status", "x"], ["unfinished", "x"], ["list"], ["stats"], ["prune", "--older-than", "1d"]]
)
def test_asking_a_sqlite_store_that_does_not_exist_warns_answers_unseen_and_creates_nothing(
    tmp_path: Path, sub: list[str]
) -> None:
    missing = tmp_path / "jobs.db"
    result = invoke("jobs", *sub, "--store", f"sqlite:///{missing}")
    assert result.exit_code == {"status": 6, "unfinished": 7}.get(sub[0], 0), result.output  # every id unseen
    assert "does not exist" in result.stderr and "the file the workers write to" in result.stderr
    assert not missing.exists() and list(tmp_path.iterdir()) == []
