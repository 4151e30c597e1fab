"""`swarrow jobs … --config FILE`: the job store named by the config file `consume --config` runs with."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

from swarrow.cli import cli
from swarrow.jobs import JobRecord, JobStore

SUBCOMMANDS = [
    ["status", "done-1"],
    ["unfinished", "done-1"],
    ["list"],
    ["stats"],
    ["prune", "--older-than", "30d"],
]


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={"SWARROW_TRACK_JOBS": "", **(env or {})})


def _fill(url: str, job_id: str) -> None:
    now = time.time()

    async def fill() -> None:
        async with JobStore.open(url) as store:
            await store.write(
                [
                    JobRecord(
                        job_id, "orders", "succeeded", 1, now, now, now + 0.1, 0.1, "h", 1, 1, 2, None, None
                    )
                ]
            )

    anyio.run(fill)


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/jobs.db"
    _fill(url, "done-1")
    return url


def _toml(tmp_path: Path, text: str, name: str = "swarrow.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=lambda s: s[0])
def test_every_jobs_command_reads_the_store_a_consumer_of_the_config_tracks_into(
    tmp_path: Path, db: str, sub: list[str]
) -> None:
    path = _toml(tmp_path, f'[consumers.orders]\nqueue = "orders"\ncallable = "m:f"\ntrack_jobs = "{db}"\n')
    result = invoke("jobs", *sub, "--config", path)
    assert result.exit_code == 0, result.output
    if sub[0] in ("status", "list"):
        assert "done-1" in result.output and "succeeded" in result.output


def test_a_jobs_table_names_the_store_for_jobs_and_for_every_consumer(tmp_path: Path, db: str) -> None:
    path = _toml(
        tmp_path,
        f'[jobs]\nstore = "{db}"\n[consumers.a]\nqueue = "a"\ncallable = "m:f"\n'
        '[consumers.b]\nqueue = "b"\ncallable = "m:f"\n',
    )
    result = invoke("jobs", "status", "done-1", "--config", path)
    assert result.exit_code == 0, result.output
    shown = invoke("consume", "b", "--config", path, "--print-settings")
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.output.splitlines() if x.startswith("track_jobs"))
    assert db in line and "[jobs]" in line


def test_a_consumer_can_opt_out_of_the_files_job_store(tmp_path: Path, db: str) -> None:
    path = _toml(
        tmp_path,
        f'[jobs]\nstore = "{db}"\n[consumers.a]\nqueue = "a"\ncallable = "m:f"\ntrack_jobs = false\n',
    )
    shown = invoke("consume", "a", "--config", path, "--print-settings")
    assert shown.exit_code == 0, shown.output
    assert "track_jobs = none" in shown.output.replace('"', "")
    assert invoke("jobs", "status", "done-1", "--config", path).exit_code == 0  # [jobs] store still asked


def test_consumers_with_different_stores_need_consumer(tmp_path: Path, db: str) -> None:
    other = f"sqlite:///{tmp_path}/other.db"
    _fill(other, "other-1")
    path = _toml(
        tmp_path,
        f'[consumers.a]\nqueue = "a"\ncallable = "m:f"\ntrack_jobs = "{db}"\n'
        f'[consumers.b]\nqueue = "b"\ncallable = "m:f"\ntrack_jobs = "{other}"\n'
        '[consumers.c]\nqueue = "c"\ncallable = "m:f"\n',
    )
    ambiguous = invoke("jobs", "status", "done-1", "--config", path)
    assert ambiguous.exit_code == 2, ambiguous.output
    assert "--consumer" in ambiguous.output and "'a'" in ambiguous.output and "'b'" in ambiguous.output
    assert invoke("jobs", "status", "done-1", "--config", path, "--consumer", "a").exit_code == 0
    assert invoke("jobs", "status", "other-1", "--config", path, "--consumer", "b").exit_code == 0
    assert invoke("jobs", "status", "done-1", "--config", path, "--consumer", "b").exit_code == 6
    untracked = invoke("jobs", "status", "x", "--config", path, "--consumer", "c")
    assert untracked.exit_code == 2 and "'c'" in untracked.output and "track_jobs" in untracked.output
    missing = invoke("jobs", "status", "x", "--config", path, "--consumer", "zz")
    assert missing.exit_code == 2 and "no consumer 'zz'" in missing.output


def test_store_and_its_environment_variable_win_over_the_config(tmp_path: Path, db: str) -> None:
    other = f"sqlite:///{tmp_path}/other.db"
    _fill(other, "other-1")
    path = _toml(tmp_path, f'[jobs]\nstore = "{db}"\n')
    assert invoke("jobs", "status", "other-1", "--config", path, "--store", other).exit_code == 0
    assert (
        invoke("jobs", "status", "other-1", "--config", path, env={"SWARROW_TRACK_JOBS": other}).exit_code
        == 0
    )
    assert invoke("jobs", "status", "other-1", "--config", path).exit_code == 6


def test_the_config_in_the_working_directory_is_read_without_config(
    tmp_path: Path, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _toml(tmp_path, f'[jobs]\nstore = "{db}"\n')
    monkeypatch.chdir(tmp_path)
    assert invoke("jobs", "status", "done-1").exit_code == 0
    (tmp_path / "swarrow.toml").unlink()
    missing = invoke("jobs", "status", "done-1")
    assert missing.exit_code == 2 and "no job store" in missing.output and "--config" in missing.output


def test_config_errors_are_usage_errors_naming_the_file_and_key_with_the_password_masked(
    tmp_path: Path,
) -> None:
    gone = invoke("jobs", "status", "x", "--config", str(tmp_path / "nope.toml"))
    assert gone.exit_code == 2 and "nope.toml" in gone.output
    bad = _toml(
        tmp_path, '[consumers.a]\nqueue = "a"\ncallable = "m:f"\ntrack_jobs = "mysql://u:hunter2@h/db"\n'
    )
    result = invoke("jobs", "status", "x", "--config", bad)
    assert result.exit_code == 2, result.output
    assert "track_jobs in [consumers.a]" in result.output and "hunter2" not in result.output
    pg = _toml(tmp_path, '[jobs]\nstore = "postgresql://app:p/#?@%:x@127.0.0.1:1/jobs"\n', "pg.toml")
    down = invoke("jobs", "status", "x", "--config", pg)
    assert down.exit_code in (2, 4), down.output
    assert "p/#?@%:x" not in down.output and "#?@%" not in down.output
    none = _toml(tmp_path, '[consumers.a]\nqueue = "a"\ncallable = "m:f"\n', "none.toml")
    empty = invoke("jobs", "status", "x", "--config", none)
    assert empty.exit_code == 2 and "none.toml" in empty.output and "track_jobs" in empty.output
    typo = _toml(tmp_path, '[jobs]\nstor = "sqlite:///x.db"\n', "typo.toml")
    wrong = invoke("jobs", "status", "x", "--config", typo)
    assert wrong.exit_code == 2 and "unknown key 'stor' in [jobs]" in wrong.output


def test_jobs_help_names_config_and_consumer() -> None:
    for sub in ("status", "unfinished", "list", "stats", "prune"):
        text = invoke("jobs", sub, "--help").output
        assert "--config" in text and "--consumer" in text, sub


def test_the_readme_example_config_is_asked_by_jobs_and_read_by_consume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "jobs.toml"
    monkeypatch.chdir(tmp_path)  # sqlite:///jobs.db is relative to the working directory
    _fill("sqlite:///jobs.db", "order-7")
    assert invoke("jobs", "status", "order-7", "--config", str(example)).exit_code == 0
    orders = invoke("consume", "orders", "--config", str(example), "--print-settings").output
    reports = invoke("consume", "reports", "--config", str(example), "--print-settings").output
    assert 'track_jobs = "sqlite:///jobs.db"' in orders and "track_jobs = none" in reports
