"""One contract for every job store: the same tests against SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from swarrow.errors import ConfigurationError
from swarrow.jobs import JobRecord, JobStore, JobStoreError
from swarrow.jobs._sql import SCHEMA_VERSION

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0


def rec(
    job_id: str,
    state: str = "succeeded",
    *,
    attempts: int = 1,
    started: float = T0,
    duration: float | None = 0.5,
    queue: str = "q",
    error: tuple[str, str] | None = None,
) -> JobRecord:
    finished = None if state == "running" else started + (duration or 0.0)
    return JobRecord(
        id=job_id,
        queue=queue,
        state=state,
        attempts=attempts,
        first_seen=started,
        started=started,
        finished=finished,
        duration=None if state == "running" else duration,
        host="host-a",
        pid=4242,
        rss_before=1000,
        rss_after=None if state == "running" else 2000,
        error_type=error[0] if error else None,
        error_message=error[1] if error else None,
    )


async def test_creates_the_schema_on_first_use_and_reopens_idempotently(store_url: str) -> None:
    async with JobStore.open(store_url) as store:
        await store.write([rec("a")])
        rows = await store.backend.fetch("SELECT version FROM swarrow_jobs_schema", [])
        assert rows == [(SCHEMA_VERSION,)]
    async with JobStore.open(store_url) as again:  # migrating again is a no-op, the data stays
        assert (await again.status(["a"]))["a"] is not None
        assert await again.backend.fetch("SELECT version FROM swarrow_jobs_schema", []) == [(SCHEMA_VERSION,)]


async def test_refuses_a_schema_newer_than_it_knows(store_url: str) -> None:
    async with JobStore.open(store_url) as store:
        await store.backend.execute("UPDATE swarrow_jobs_schema SET version = ?", [SCHEMA_VERSION + 1])
    with pytest.raises(JobStoreError, match="newer than this swarrow"):
        async with JobStore.open(store_url):
            pass


async def test_status_returns_every_field_and_none_for_unknown_ids_in_order(store_url: str) -> None:
    async with JobStore.open(store_url) as store:
        await store.write([rec("j1", "dead_lettered", attempts=4, error=("app.Boom", "it broke"))])
        result = await store.status(["nope", "j1"])
    assert list(result) == ["nope", "j1"]
    assert result["nope"] is None
    job = result["j1"]
    assert job is not None
    assert (job.id, job.queue, job.state, job.attempts) == ("j1", "q", "dead_lettered", 4)
    assert job.started == datetime.fromtimestamp(T0, UTC)
    assert job.finished == datetime.fromtimestamp(T0 + 0.5, UTC)
    assert job.duration == pytest.approx(0.5)
    assert (job.host, job.pid, job.rss_before, job.rss_after) == ("host-a", 4242, 1000, 2000)
    assert (job.error_type, job.error_message) == ("app.Boom", "it broke")
    assert job.is_finished
    assert job.to_dict()["finished"] == "2023-11-14T22:13:20.500000+00:00"


async def test_an_older_record_never_overwrites_a_newer_one(store_url: str) -> None:
    async with JobStore.open(store_url) as store:
        # attempt 2 succeeded, written before attempt 1's records arrive (another worker, a retried batch)
        await store.write([rec("j", "succeeded", attempts=2, started=T0 + 10)])
        await store.write([rec("j", "running", attempts=1, started=T0), rec("k", "running", started=T0)])
        await store.write([rec("j", "retrying", attempts=1, started=T0, error=("E", "first try"))])
        job = (await store.status(["j"]))["j"]
    assert job is not None
    assert (job.state, job.attempts) == ("succeeded", 2)
    assert (job.error_type, job.error_message) == ("E", "first try")  # a late error still fills the row


async def test_a_later_delivery_of_the_same_attempt_overwrites_and_finished_beats_running(
    store_url: str,
) -> None:
    async with JobStore.open(store_url) as store:
        # kill -9: running on worker A; redelivered to B, which finishes it; A's stale record comes last
        await store.write([rec("j", "running", started=T0 + 5)])
        await store.write([rec("j", "succeeded", started=T0 + 5)])
        await store.write([rec("j", "running", started=T0 + 5)])
        assert (await store.status(["j"]))["j"].state == "succeeded"  # type: ignore[union-attr]
        # RetryLater: same attempt number, a later start: the new run counts
        await store.write([rec("j", "running", started=T0 + 60)])
        assert (await store.status(["j"]))["j"].state == "running"  # type: ignore[union-attr]


async def test_the_last_error_sticks_and_first_seen_is_the_earliest(store_url: str) -> None:
    async with JobStore.open(store_url) as store:
        await store.write([rec("j", "retrying", started=T0, error=("app.Timeout", "slow"))])
        await store.write([rec("j", "running", attempts=2, started=T0 + 3)])
        await store.write([rec("j", "succeeded", attempts=2, started=T0 + 3)])
        job = (await store.status(["j"]))["j"]
    assert job is not None
    assert (job.state, job.attempts, job.error_type, job.error_message) == (
        "succeeded",
        2,
        "app.Timeout",
        "slow",
    )
    assert job.first_seen == datetime.fromtimestamp(T0, UTC)
    assert job.started == datetime.fromtimestamp(T0 + 3, UTC)


async def test_one_batch_with_several_steps_of_a_job_keeps_the_latest(store_url: str) -> None:
    async with JobStore.open(store_url) as store:
        await store.write(
            [
                rec("j", "running", started=T0),
                rec("j", "retrying", started=T0, error=("E", "x")),
                rec("j", "running", attempts=2, started=T0 + 1),
                rec("j", "dead_lettered", attempts=2, started=T0 + 1, error=("F", "y")),
            ]
        )
        job = (await store.status(["j"]))["j"]
    assert job is not None
    assert (job.state, job.attempts, job.error_type, job.first_seen.timestamp()) == (
        "dead_lettered",
        2,
        "F",
        T0,
    )


async def test_unfinished_lists_running_retrying_and_unknown_ids(store_url: str) -> None:
    async with JobStore.open(store_url) as store:
        await store.write(
            [rec("ok"), rec("run", "running"), rec("again", "retrying"), rec("dead", "dead_lettered"),
             rec("bad", "failed")]
        )  # fmt: skip
        unfinished = await store.unfinished(["ok", "run", "again", "dead", "bad", "never-seen"])
    assert unfinished == ["run", "again", "never-seen"]


async def test_status_answers_for_more_ids_than_one_query_holds(store_url: str) -> None:
    ids = [f"id-{n}" for n in range(1_200)]
    async with JobStore.open(store_url) as store:
        await store.write([rec(i) for i in ids[::2]])
        result = await store.status(ids)
    assert len(result) == 1_200
    assert sum(job is not None for job in result.values()) == 600
    assert result["id-0"] is not None and result["id-1"] is None


async def test_list_filters_by_queue_state_and_since_newest_first(store_url: str) -> None:
    async with JobStore.open(store_url) as store:
        await store.write(
            [rec("a", started=T0, queue="emails"), rec("b", "failed", started=T0 + 100, queue="emails"),
             rec("c", started=T0 + 200, queue="images"),
             rec("d", "running", started=T0 + 300, queue="emails")]
        )  # fmt: skip
        assert [j.id for j in await store.list()] == ["d", "c", "b", "a"]
        assert [j.id for j in await store.list(queue="emails")] == ["d", "b", "a"]
        assert [j.id for j in await store.list(state="failed")] == ["b"]
        assert [j.id for j in await store.list(since=T0 + 150)] == ["d", "c"]
        assert [j.id for j in await store.list(since=datetime.fromtimestamp(T0 + 150, UTC))] == ["d", "c"]
        assert [j.id for j in await store.list(limit=2)] == ["d", "c"]
        with pytest.raises(ValueError, match="state must be one of"):
            await store.list(state="done")
        with pytest.raises(ValueError, match="limit"):
            await store.list(limit=0)


async def test_stats_counts_by_state_with_duration_percentiles_and_top_errors(store_url: str) -> None:
    records = [rec(f"s{n}", duration=float(n + 1)) for n in range(20)]  # durations 1 … 20 s
    records += [rec(f"d{n}", "dead_lettered", error=("app.Boom", "x"), duration=None) for n in range(3)]
    records += [
        rec("r", "retrying", error=("app.Slow", "y"), duration=None),
        rec("q", "running", queue="other"),
    ]
    async with JobStore.open(store_url) as store:
        await store.write(records)
        stats = await store.stats()
        other = await store.stats(queue="other")
        empty = await store.stats(since=T0 + 10_000)
    assert stats.total == 25
    assert stats.by_state["succeeded"] == 20 and stats.by_state["dead_lettered"] == 3
    assert (
        stats.by_state["retrying"] == 1 and stats.by_state["running"] == 1 and stats.by_state["expired"] == 0
    )
    assert (stats.p50, stats.p95) == (10.0, 19.0)
    assert stats.top_errors == [("app.Boom", 3), ("app.Slow", 1)]
    assert (other.total, other.by_state["running"], other.p50) == (1, 1, None)
    assert (empty.total, empty.p95, empty.top_errors) == (0, None, [])


async def test_prune_deletes_old_finished_jobs_only_unless_a_state_is_named(store_url: str) -> None:
    now = T0 + 30 * 86400
    async with JobStore.open(store_url) as store:
        await store.write(
            [rec("old-ok"), rec("old-dead", "dead_lettered"), rec("old-run", "running"),
             rec("new-ok", started=now - 3600)]
        )  # fmt: skip
        assert await store.prune(timedelta(days=14), state="dead_lettered", now=now) == 1
        assert await store.prune(timedelta(days=14), now=now) == 1
        remaining = {
            i for i, job in (await store.status(["old-ok", "old-dead", "old-run", "new-ok"])).items() if job
        }
        assert remaining == {"old-run", "new-ok"}
        assert await store.prune(14 * 86400, state="running", now=now) == 1
        assert (
            await store.prune(timedelta(days=14), now=time.time() + 10**9) == 1
        )  # everything is old by then
        with pytest.raises(ValueError, match="older_than"):
            await store.prune(-1)


async def test_two_stores_writing_one_database_at_once(store_url: str) -> None:
    async with JobStore.open(store_url) as first, JobStore.open(store_url) as second:

        async def write(store: JobStore, prefix: str) -> None:
            for batch in range(20):
                await store.write(
                    [rec(f"{prefix}{batch}-{n}") for n in range(50)] + [rec("shared", attempts=batch + 1)]
                )

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, first, "a")
            tg.start_soon(write, second, "b")
        stats = await first.stats()
        shared = (await second.status(["shared"]))["shared"]
    assert stats.total == 2 * 20 * 50 + 1
    assert shared is not None and shared.attempts == 20


def test_open_rejects_an_unknown_scheme_naming_the_url_without_its_password() -> None:
    with pytest.raises(ConfigurationError, match=r"unsupported job store URL 'mysql://u:\*\*\*@db/x'") as err:
        JobStore.open("mysql://u:hunter2@db/x")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigurationError, match="names a file"):
        JobStore.open("sqlite://")
    with pytest.raises(ConfigurationError, match="memory"):
        JobStore.open("sqlite:///:memory:")


async def test_a_sqlite_store_in_a_missing_directory_is_a_clear_error(tmp_path: object) -> None:
    store = JobStore.open(f"sqlite:///{tmp_path}/no/such/dir/jobs.db")
    with pytest.raises(JobStoreError, match="does not exist"):
        await store.connect()


async def test_an_unreachable_postgresql_is_a_store_error_without_the_password() -> None:
    store = JobStore.open("postgresql://app:s3cr3t-pw@127.0.0.1:1/jobs")
    assert "s3cr3t" not in repr(store)
    with pytest.raises(
        JobStoreError, match=r"cannot connect to the job store postgresql://app:\*\*\*@127.0.0.1:1/jobs"
    ) as err:
        await store.connect()
    assert "s3cr3t" not in str(err.value)


async def test_hostile_text_is_stored_cleaned_without_losing_the_batch(store_url: str) -> None:
    weird = "id-\x00-\ud800-é"
    bad = rec(weird, "failed", error=("Err\x00", "broken \udcff text\nsecond line"))
    async with JobStore.open(store_url) as store:
        await store.write([bad, rec("neighbour")])
        found = await store.status([weird, "neighbour"])
    job = found[weird]
    assert job is not None and job.id == "id-\ufffd-?-é" and job.state == "failed"
    assert (job.error_type, job.error_message) == ("Err\ufffd", "broken ? text\nsecond line")
    assert found["neighbour"] is not None  # the rest of the batch was written


async def test_a_refused_postgresql_password_is_a_store_error_without_it(postgres_url: str) -> None:
    wrong = postgres_url.replace(":swarrow@", ":Wr0ng-Pa55@")
    assert wrong != postgres_url
    with pytest.raises(JobStoreError, match="password authentication failed") as err:
        async with JobStore.open(wrong):
            pass
    assert "Wr0ng-Pa55" not in str(err.value) and ":***@" in str(err.value)


def _replayed(record: JobRecord, replays: int) -> JobRecord:
    return record._replace(replays=replays)


async def test_a_replayed_job_outranks_its_dead_letter_in_any_order(store_url: str) -> None:
    dead = rec("r", "dead_lettered", attempts=4, error=("app.Boom", "no"))
    running = _replayed(rec("r", "running", attempts=1, started=T0 + 60), 1)
    done = _replayed(rec("r", "succeeded", attempts=1, started=T0 + 60), 1)
    again = _replayed(rec("r", "dead_lettered", attempts=2, started=T0 + 90, error=("app.Boom", "still")), 1)
    async with JobStore.open(store_url) as store:
        for order in ([dead], [running], [done]), ([done], [dead, running]), ([dead, done, running],):
            await store.prune(timedelta(0), state="succeeded")
            for batch in order:
                await store.write(batch)
            job = (await store.status(["r"]))["r"]
            assert job is not None and (job.state, job.attempts, job.replays) == ("succeeded", 1, 1), order
            assert job.error_type == "app.Boom"  # the last error sticks, as after a retried success
        await store.write([again, dead])
        job = (await store.status(["r"]))["r"]
        assert job is not None and (job.state, job.attempts, job.replays) == ("dead_lettered", 2, 1)
        assert job.to_dict()["replays"] == 1 and job.error_message == "still"


async def test_a_version_1_store_is_migrated_keeping_its_jobs(store_url: str) -> None:
    async with JobStore.open(store_url) as store:
        await store.write([rec("old", "dead_lettered", attempts=4)])
        # back to what swarrow wrote before replays were tracked
        await store.backend.execute("ALTER TABLE swarrow_jobs DROP COLUMN replays", [])
        await store.backend.execute("UPDATE swarrow_jobs_schema SET version = 1", [])
    async with JobStore.open(store_url) as store:
        job = (await store.status(["old"]))["old"]
        assert job is not None and (job.state, job.replays) == ("dead_lettered", 0)
        await store.write([_replayed(rec("old", "succeeded", started=T0 + 5), 1)])
        job = (await store.status(["old"]))["old"]
        assert job is not None and (job.state, job.replays) == ("succeeded", 1)
        assert await store.backend.fetch("SELECT version FROM swarrow_jobs_schema", []) == [(SCHEMA_VERSION,)]
