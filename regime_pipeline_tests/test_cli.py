"""The `regime-pipeline run` command, on a short range, against a throw-away instance."""

from __future__ import annotations

import dataclasses
import io
import logging

import dagster as dg
import pytest
from dagster._core.events.log import EventLogEntry

from regime_pipeline import cli
from regime_pipeline.instance import BatchingSqliteEventLogStorage
from regime_pipeline.instance.event_log import BATCH_SIZE_ENV
from regime_pipeline_tests.conftest import write_instance_yaml


@pytest.fixture
def project_home(tmp_path, monkeypatch):
    """A Dagster home configured as the project's (batching event log), and a data directory.
    The batch size the storage sets in the environment is undone afterwards."""
    monkeypatch.setenv(BATCH_SIZE_ENV, "unset")
    monkeypatch.delenv(BATCH_SIZE_ENV)
    write_instance_yaml(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REGIME_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "home"


def test_run_prints_a_line_per_stage_and_the_results(project_home, monkeypatch, capsys):
    instances, real = [], cli._instance
    monkeypatch.setattr(cli, "_instance", lambda: instances.append(real()) or instances[-1])
    cli.main(["run", "--start", "2021-09-28", "--end", "2021-09-30", "--until", "bars"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "==> bars: minute_bars, daily_bars 2021-09-28 .. 2021-09-30"
    assert lines[1].startswith("    6/6 partitions, ")  # two assets, three days
    assert " - DEBUG - " not in out and "STEP_START" not in out
    btc = next(line for line in lines if line.startswith("BTCUSDT"))
    assert "2021-09-28" in btc and "2021-09-30" in btc and btc.split()[3] == "3" and btc.split()[4] == "3"
    assert "Dagster run history: " in out and " events written in " in out
    # The run's events went through the batching event log, in batches.
    storage = instances[0].event_log_storage
    assert isinstance(storage, BatchingSqliteEventLogStorage) and storage.batches_written > 0


def test_verbose_prints_dagsters_event_lines(project_home, capsys):
    cli.main(["run", "--start", "2021-09-28", "--end", "2021-09-28", "--until", "bars", "--verbose"])
    out = capsys.readouterr()
    assert " - DEBUG - " in out.out + out.err and "ASSET_MATERIALIZATION" in out.out + out.err


def test_a_failing_run_exits_with_a_message(project_home, monkeypatch, capsys):
    monkeypatch.setenv("REGIME_MARKET_DATA", "binance_files")
    monkeypatch.setenv("REGIME_FILES_DIR", str(project_home.parent / "missing"))
    with pytest.raises(SystemExit, match="bars failed"):
        cli.main(["run", "--start", "2021-09-28", "--end", "2021-09-30"])
    out = capsys.readouterr().out
    assert "    error [minute_bars]: " in out and "Traceback" not in out and "missing" in out


def _log(message: str, level: int, step: str | None = "features") -> EventLogEntry:
    return EventLogEntry(error_info=None, level=level, user_message=message, run_id="r", timestamp=0.0,
                         step_key=step, job_name="job", dagster_event=None)


def test_progress_redraws_one_line_and_prints_warnings_in_full():
    out = io.StringIO()
    progress = cli.Progress(out=out, live=True)
    stage = cli.Stage("features", ("vol_features", "trend_features"), "daily")
    progress.begin(stage, [cli.StageRun("2024-01-01 .. 2024-01-10", {}, 10)])
    progress.on_event(_log("vol_features 2024-01-01..2024-01-10: 130 rows", logging.INFO))
    progress.on_event(_log("regimes with no day at all:\nvol.spike", logging.WARNING))
    progress.end()
    text = out.getvalue()
    assert text.startswith("==> features: vol_features, trend_features 2024-01-01 .. 2024-01-10\n")
    assert "\r\033[K    0/20 partitions, " in text and "vol_features 2024-01-01..2024-01-10: 130 rows" in text
    assert "    warning [features]: regimes with no day at all:\nvol.spike\n" in text
    # the final line stays, without the stage's latest message
    assert text.endswith("\n") and text.rstrip("\n").split("\r\033[K")[-1].startswith("    0/20 partitions, ")
    assert "130 rows" not in text.rstrip("\n").split("\r\033[K")[-1]


def test_progress_off_a_terminal_prints_the_line_once():
    out = io.StringIO()
    progress = cli.Progress(out=out, live=False)
    progress.begin(cli.Stage("labels", ("regime_labels",), "split"), [cli.StageRun(s, {}, 1) for s in ("train", "val")])
    progress.on_event(_log("train: 100 rows", logging.INFO))
    progress.end()
    lines = out.getvalue().splitlines()
    assert lines[0] == "==> labels: regime_labels train, val"
    assert len(lines) == 2 and lines[1].startswith("    0/2 partitions, ") and "\r" not in out.getvalue()


def test_progress_prints_a_warning_once_per_stage_and_every_error():
    """A stage of one run per origin logs the same caveat in each run: it is printed once; an
    error is printed each time; the next stage prints its own warnings again."""
    out = io.StringIO()
    progress = cli.Progress(out=out, live=False)
    stage = cli.Stage("walk_forward_reports", ("walk_forward_reports",), "origin")
    for _ in range(2):
        progress.begin(stage, [cli.StageRun(o, {}, 1) for o in ("2020", "2021")])
        for level in (logging.WARNING, logging.WARNING, logging.ERROR, logging.ERROR):
            progress.on_event(_log("garch beta^180 > 1e-3", level, "walk_forward_reports"))
        progress.on_event(_log("another caveat", logging.WARNING, "walk_forward_reports"))
        progress.end()
    text = out.getvalue()
    assert text.count("warning [walk_forward_reports]: garch beta^180 > 1e-3") == 2  # once per stage
    assert text.count("error [walk_forward_reports]: garch beta^180 > 1e-3") == 4
    assert text.count("warning [walk_forward_reports]: another caveat") == 2


def test_ppo_seeds_run_as_ranges_of_seed_partitions(monkeypatch):
    """Every (origin, seed) of a profile that trains all seed partitions in one run (its seeds
    share the worker processes); a profile with fewer seeds one run per origin; the fixed
    split's seeds in one run; seeds that are not a range of the partitions are refused before
    anything runs."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as END, ASSET_PARTITION_RANGE_START_TAG as START

    from regime_pipeline.core.allocation import ppo
    from regime_pipeline.partitions import POLICY_ORIGIN, POLICY_SEED

    stage = next(s for s in cli.STAGES if s.assets == ("walk_forward_seed_policy",))
    (light,) = cli.stage_runs(stage, None, None, "light")
    assert light.partitions == 40 == len(POLICY_SEED.get_partition_keys())
    tags = light.kwargs["tags"]
    keys = POLICY_SEED.get_partition_keys_in_range(dg.PartitionKeyRange(tags[START], tags[END]))
    assert sorted(keys) == sorted(POLICY_SEED.get_partition_keys())
    fast = cli.stage_runs(stage, None, None, "fast")
    assert [r.kwargs["tags"][START] for r in fast] == [f"{o}|0" for o in POLICY_ORIGIN.get_partition_keys()]
    assert {r.kwargs["tags"][END].split("|")[1] for r in fast} == {"1"} and {r.partitions for r in fast} == {2}
    # The fixed split's seeds: one run over the profile's seed partitions.
    fixed = next(s for s in cli.STAGES if s.assets == ("ppo_seed_policy",))
    (default,) = cli.stage_runs(fixed, None, None, "")
    assert (default.kwargs["tags"][START], default.kwargs["tags"][END], default.partitions) == ("0", "9", 10)
    odd = dataclasses.replace(ppo.settings("fast"), seeds=(0, 2))
    monkeypatch.setattr(ppo, "settings", lambda profile="default": odd)
    with pytest.raises(SystemExit, match=r"trains seeds \['0', '2'\].*contiguous range"):
        cli.stage_runs(stage, None, None, "odd")


def test_a_steps_python_warnings_go_to_its_run_log_once_each(capfd) -> None:
    """What a computation warns (the GARCH filter's start value, a library's caveat) reaches the
    run's log, where the UI and the command line show it with the asset's name, once per text,
    and not the process's stderr."""
    import warnings

    from regime_pipeline.assets.metadata import warnings_to_log

    @dg.asset
    def warns(context) -> int:
        with warnings_to_log(context):
            for origin in (2020, 2021, 2022):
                warnings.warn("garch beta^180 > 1e-3", UserWarning, stacklevel=1)
            warnings.warn(f"origin {origin} has no day", RuntimeWarning, stacklevel=1)
        return 1

    with dg.instance_for_test() as instance:
        result = dg.materialize([warns], instance=instance)
        logged = [r.user_message for r in instance.all_logs(result.run_id) if r.level == logging.WARNING]
    assert logged == ["UserWarning: garch beta^180 > 1e-3", "RuntimeWarning: origin 2022 has no day"]
    # Only Dagster's log lines name it (with the step), not Python's "file:line: UserWarning" print.
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if "garch beta" in line and " - warns - " not in line] == []
