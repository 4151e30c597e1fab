"""swarrow.dead_letters on the in-memory broker: reading, grouping, selecting, replaying and purging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import swarrow.dead_letters as dl
from swarrow import ConfigurationError, MemoryBroker, Message
from swarrow.topology import (
    ATTEMPTS_HEADER,
    ERROR_TYPE_HEADER,
    FAILED_AT_HEADER,
    RETRY_ATTEMPT_HEADER,
    dead_letter_headers,
)

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def _letter(i: int, error: str = "ValueError", *, at: datetime | None = None, queue: str = "jobs",
            body: bytes | None = None) -> Message:  # fmt: skip
    headers = dead_letter_headers(error, f"failed {i}", attempts=4, queue=queue)
    if at is not None:
        headers[FAILED_AT_HEADER] = at.isoformat()
    return Message(body if body is not None else f"body {i}".encode(), headers=headers, message_id=f"m{i}")


def _foreign(i: int, reason: str = "rejected", queue: str = "jobs") -> Message:
    death = {
        "count": 2,
        "reason": reason,
        "queue": queue,
        "time": T0,
        "exchange": "",
        "routing-keys": [queue],
    }
    return Message(f"foreign {i}".encode(), headers={"x-death": [death], "x-first-death-queue": queue},
                   message_id=f"f{i}")  # fmt: skip


def _broker(*letters: Message) -> MemoryBroker:
    broker = MemoryBroker("dead-letters")
    broker.declare_queue_nowait("jobs")
    broker.declare_queue_nowait("jobs.dead")
    for letter in letters:
        broker.publish_nowait(letter, "jobs.dead")
    return broker


def _ids(broker: MemoryBroker, queue: str) -> list[str | None]:
    found = []
    while (message := broker.get_nowait(queue)) is not None:
        found.append(message.message_id)
    return found


def test_a_swarrow_dead_letter_tells_its_error_attempts_time_and_queue() -> None:
    letter = dl.DeadLetter.from_message(_letter(1, "myapp.Boom", at=T0), 3)
    assert (letter.origin, letter.error_type, letter.error_message) == ("swarrow", "myapp.Boom", "failed 1")
    assert (letter.attempts, letter.failed_at, letter.original_queue, letter.position) == (4, T0, "jobs", 3)


def test_a_broker_dead_letter_is_read_from_its_latest_x_death() -> None:
    letter = dl.DeadLetter.from_message(_foreign(1, "delivery_limit", "orders"))
    assert (letter.origin, letter.error_type, letter.original_queue) == (
        "x-death",
        "x-death:delivery_limit",
        "orders",
    )
    assert letter.failed_at == T0 and letter.attempts == 2


@pytest.mark.parametrize(
    "headers",
    [
        {ERROR_TYPE_HEADER: 7, FAILED_AT_HEADER: "yesterday", ATTEMPTS_HEADER: -1},
        {"x-death": "not a list"},
        {"x-death": [42, {"reason": None, "time": "garbage"}]},
        {ERROR_TYPE_HEADER: b"\xffBoom", FAILED_AT_HEADER: b"2026-01-10T12:00:00"},
    ],
)
def test_garbage_headers_read_as_unknown_and_never_raise(headers: dict[str, Any]) -> None:
    letter = dl.DeadLetter.from_message(Message(b"x", headers=headers))
    assert letter.error_type  # always some group to count it under
    assert letter.attempts is None  # a negative or missing count is unknown, not a number


def test_naive_failure_times_are_utc() -> None:
    letter = dl.DeadLetter.from_message(
        Message(b"", headers={ERROR_TYPE_HEADER: "E", FAILED_AT_HEADER: "2026-01-10T12:00:00"})
    )
    assert letter.failed_at == T0


def test_selection_matches_a_class_name_or_a_full_name_and_time_bounds() -> None:
    boom = dl.DeadLetter.from_message(_letter(1, "myapp.errors.Boom", at=T0))
    assert dl.Selection(error_types=["Boom"]).matches(boom)
    assert dl.Selection(error_types=["myapp.errors.Boom"]).matches(boom)
    assert not dl.Selection(error_types=["other.Boom"]).matches(boom)
    assert dl.Selection(since=T0, until=T0 + timedelta(seconds=1)).matches(boom)
    assert not dl.Selection(since=T0 + timedelta(seconds=1)).matches(boom)
    assert not dl.Selection(until=T0).matches(boom)
    assert dl.Selection(since=datetime(2026, 1, 10, 12, 0)).matches(boom)  # naive means UTC
    timeless = dl.DeadLetter.from_message(Message(b"", headers={ERROR_TYPE_HEADER: "Boom"}))
    assert not dl.Selection(since=T0).matches(timeless)


def test_selection_rejects_a_single_string_and_a_negative_limit() -> None:
    with pytest.raises(ValueError, match="collection"):
        dl.Selection(error_types="Boom")
    with pytest.raises(ValueError, match="limit"):
        dl.Selection(limit=-1)


def test_replay_copy_resets_the_failure_headers_and_stamps_the_replay() -> None:
    original = _letter(1).replace(user_id="someone", content_type="application/json", body=b"\xff\x00")
    original = original.replace(
        headers={**original.headers, RETRY_ATTEMPT_HEADER: 3, "x-death": [{}], "keep": "me"}
    )
    now = datetime(2026, 2, 1, tzinfo=UTC)
    copy = dl.replay_copy(original, now)
    assert copy.body == b"\xff\x00" and copy.content_type == "application/json" and copy.message_id == "m1"
    assert copy.user_id is None
    assert copy.headers == {"keep": "me", dl.REPLAY_COUNT_HEADER: 1, dl.REPLAYED_AT_HEADER: now.isoformat()}
    assert dl.replay_copy(copy, now).headers[dl.REPLAY_COUNT_HEADER] == 2


async def test_list_groups_and_leaves_every_letter_in_place_in_order() -> None:
    letters = [_letter(i, "A" if i % 3 else "B", at=T0 + timedelta(minutes=i)) for i in range(9)]
    broker = _broker(*letters, _foreign(9))
    summary = await dl.list_dead_letters(broker, "jobs.dead")
    assert summary.total == 10
    assert [(g.key, g.count) for g in summary.groups] == [("A", 6), ("B", 3), ("x-death:rejected", 1)]
    a = summary.groups[0]
    assert (a.first_failed_at, a.last_failed_at, a.sample_message_id) == (
        T0 + timedelta(minutes=1),
        T0 + timedelta(minutes=8),
        "m1",
    )
    assert _ids(broker, "jobs.dead") == [f"m{i}" for i in range(9)] + ["f9"]


async def test_list_by_day_and_by_message_bounds_its_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "MAX_GROUPS", 3)
    broker = _broker(*(_letter(i, at=T0 + timedelta(days=i % 2)) for i in range(6)))
    by_day = await dl.list_dead_letters(broker, "jobs.dead", group_by="day")
    assert [(g.key, g.count) for g in by_day.groups] == [("2026-01-10", 3), ("2026-01-11", 3)]
    by_message = await dl.list_dead_letters(broker, "jobs.dead", group_by="error-message")
    assert sum(g.count for g in by_message.groups) == 6
    assert len(by_message.groups) == 4 and by_message.groups[0].key == dl.OTHER_GROUP


async def test_show_finds_by_message_id_without_taking_anything() -> None:
    broker = _broker(*(_letter(i) for i in range(5)))
    found = await dl.show_dead_letters(broker, "jobs.dead", message_id="m3")
    assert [(x.message_id, x.position) for x in found] == [("m3", 4)]
    assert len(await dl.show_dead_letters(broker, "jobs.dead", limit=2)) == 2
    assert broker.message_count("jobs.dead") == 5


async def test_replay_publishes_the_selected_and_keeps_the_rest_in_order() -> None:
    broker = _broker(*(_letter(i, "A" if i % 2 else "B") for i in range(10)))
    result = await dl.replay_dead_letters(
        broker, "jobs.dead", selection=dl.Selection(error_types=["A"]), batch_size=2
    )
    assert (result.replayed, result.kept, result.failed) == (5, 5, 0)
    assert result.line() == "replayed 5, kept 5, failed 0" and result.targets == {"jobs": 5}
    assert _ids(broker, "jobs") == ["m1", "m3", "m5", "m7", "m9"]
    assert _ids(broker, "jobs.dead") == ["m0", "m2", "m4", "m6", "m8"]


async def test_replay_sends_broker_dead_letters_to_the_queue_their_x_death_names() -> None:
    broker = _broker(_foreign(1, queue="jobs"))
    result = await dl.replay_dead_letters(
        broker, "jobs.dead", selection=dl.Selection(error_types=["x-death:rejected"])
    )
    assert result.replayed == 1
    replayed = broker.get_nowait("jobs")
    assert replayed is not None and "x-death" not in replayed.headers and replayed.body == b"foreign 1"


async def test_replay_keeps_what_cannot_go_and_counts_it_failed() -> None:
    broker = _broker(_letter(1, queue="gone"), _letter(2), Message(b"orphan", message_id="m3"))
    result = await dl.replay_dead_letters(broker, "jobs.dead")
    assert (result.replayed, result.kept, result.failed) == (1, 0, 2)
    assert set(result.failures) == {
        "target queue 'gone' does not exist",
        "no original queue in its headers (give a target queue: --to)",
    }
    assert _ids(broker, "jobs.dead") == ["m1", "m3"]


async def test_replay_to_another_queue_with_a_limit_and_a_nack() -> None:
    broker = _broker(*(_letter(i) for i in range(6)))
    broker.declare_queue_nowait("fixed")
    broker.fail_next_publishes(1)
    result = await dl.replay_dead_letters(broker, "jobs.dead", to="fixed", selection=dl.Selection(limit=3))
    assert (result.replayed, result.kept, result.failed) == (2, 3, 1)
    assert _ids(broker, "fixed") == ["m1", "m2"]
    assert _ids(broker, "jobs.dead") == ["m0", "m3", "m4", "m5"]


async def test_replay_to_a_missing_queue_is_refused_before_anything_moves() -> None:
    broker = _broker(_letter(1))
    with pytest.raises(ConfigurationError, match="target queue 'nowhere' does not exist"):
        await dl.replay_dead_letters(broker, "jobs.dead", to="nowhere")
    assert broker.message_count("jobs.dead") == 1


async def test_an_original_queue_header_that_cannot_name_a_queue_fails_the_letter_only() -> None:
    broker = _broker(_letter(1, queue="q" * 300), _letter(2))
    result = await dl.replay_dead_letters(broker, "jobs.dead")
    assert (result.replayed, result.failed) == (1, 1)
    assert _ids(broker, "jobs.dead") == ["m1"]


async def test_a_dry_run_replay_changes_nothing() -> None:
    broker = _broker(*(_letter(i) for i in range(4)))
    result = await dl.replay_dead_letters(broker, "jobs.dead", dry_run=True)
    assert result.line() == "would replay 4, kept 0, failed 0"
    assert broker.message_count("jobs") == 0 and broker.message_count("jobs.dead") == 4


async def test_replay_reports_progress_against_the_count_at_start() -> None:
    broker = _broker(*(_letter(i) for i in range(3)))
    seen: list[tuple[int, int]] = []
    await dl.replay_dead_letters(broker, "jobs.dead", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


async def test_purge_drops_only_the_old_enough_and_keeps_unknown_times() -> None:
    now = T0 + timedelta(days=20)
    old, recent = _letter(1, at=T0), _letter(2, at=now - timedelta(days=1))
    broker = _broker(old, recent, Message(b"no time", headers={ERROR_TYPE_HEADER: "E"}, message_id="m3"))
    result = await dl.purge_dead_letters(broker, "jobs.dead", older_than=timedelta(days=14), now=lambda: now)
    assert (result.purged, result.kept, result.line()) == (1, 2, "purged 1, kept 2")
    assert _ids(broker, "jobs.dead") == ["m2", "m3"]


async def test_purge_by_error_type_and_dry_run() -> None:
    broker = _broker(*(_letter(i, "A" if i % 2 else "B") for i in range(4)))
    dry = await dl.purge_dead_letters(
        broker, "jobs.dead", selection=dl.Selection(error_types=["B"]), dry_run=True
    )
    assert (dry.purged, dry.kept, dry.line()) == (2, 2, "would purge 2, keep 2")
    assert broker.message_count("jobs.dead") == 4
    await dl.purge_dead_letters(broker, "jobs.dead", selection=dl.Selection(error_types=["B"]))
    assert _ids(broker, "jobs.dead") == ["m1", "m3"]


async def test_a_missing_queue_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        await dl.list_dead_letters(MemoryBroker("empty"), "nope.dead")


def test_public_names_are_sorted_and_exist() -> None:
    from tests.test_core_public_api import _ruff_sort_key

    assert list(dl.__all__) == sorted(dl.__all__, key=_ruff_sort_key)
    for name in dl.__all__:
        assert hasattr(dl, name), name
