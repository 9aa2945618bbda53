"""The `regime-pipeline run` command, on a short range, against a throw-away instance."""

from __future__ import annotations

import pytest

from regime_pipeline import cli


def test_run_materializes_and_prints_a_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REGIME_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "home").mkdir()
    cli.main(["run", "--start", "2021-09-28", "--end", "2021-09-30", "--until", "bars"])
    out = capsys.readouterr().out
    assert "==> bars: minute_bars, daily_bars 2021-09-28 .. 2021-09-30" in out
    btc = next(line for line in out.splitlines() if line.startswith("BTCUSDT"))
    assert "2021-09-28" in btc and "2021-09-30" in btc and btc.split()[3] == "3" and btc.split()[4] == "3"


def test_a_failing_run_exits_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REGIME_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("REGIME_MARKET_DATA", "binance_files")
    monkeypatch.setenv("REGIME_FILES_DIR", str(tmp_path / "missing"))
    (tmp_path / "home").mkdir()
    with pytest.raises(SystemExit, match="bars failed"):
        cli.main(["run", "--start", "2021-09-28", "--end", "2021-09-30"])
