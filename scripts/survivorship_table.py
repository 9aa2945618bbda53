"""Survivorship bias, measured: every benchmark and the PPO seeds on the fixed survivors and on
the point-in-time universe, side by side, from two pipeline runs' data directories.

    REGIME_UNIVERSE=fixed REGIME_DATA_DIR=data/fixed_run regime-pipeline run --until probabilities
    REGIME_UNIVERSE=fixed REGIME_DATA_DIR=data/fixed_run regime-pipeline run --from policy --until policy
    regime-pipeline run                                   # point_in_time, into data/
    python scripts/survivorship_table.py data/fixed_run data [--out data/reports/survivorship.md]

Each directory's warehouse gives its daily bars, close-only days, universe, regime probabilities
and volatility forecasts, and its ``models/ppo_policy.json`` the PPO seeds. Periods: 2018-2025,
2018-2022 (the train years: PPO's numbers there are in-sample), 2023-2025 (2023 is PPO's val year,
used for early stopping and the seed choice) and 2024-2025 (out of sample for every model).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

import pandas as pd

from regime_pipeline.configs import UNIVERSE_ENV, universe
from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.core.allocation.policy import AllocationPolicy
from regime_pipeline.core.allocation.survivorship import UniverseRun, comparison_table
from regime_pipeline.resources.warehouse import read_table

D = dt.date
PERIODS = {"2018-2025": (D(2018, 1, 1), D(2025, 12, 31)), "2018-2022": (D(2018, 1, 1), D(2022, 12, 31)),
           "2023-2025": (D(2023, 1, 1), D(2025, 12, 31)), "2024-2025": (D(2024, 1, 1), D(2025, 12, 31))}


def load_run(name: str, mode: str, data_dir: Path) -> UniverseRun:
    """The tables and policies of a pipeline run made in universe `mode`."""
    os.environ[UNIVERSE_ENV] = mode
    universe.cache_clear()
    database = str(data_dir / "warehouse.duckdb")
    tables = {t: read_table(database, t) for t in
              ("daily_bars", "daily_closes", "universe", "regime_probabilities", "vol_forecasts")}
    for frame in tables.values():
        if "date" in frame.columns:
            frame["date"] = pd.to_datetime(frame["date"]).dt.date
    data = allocation.allocation_data(tables["daily_bars"], tables["regime_probabilities"], tables["daily_closes"],
                                      tables["universe"])
    artifact = json.loads((data_dir / "models" / "ppo_policy.json").read_text())
    if all("policy" in v for v in artifact["seeds"].values()):  # an artifact of single deployed seeds
        policies = {s: AllocationPolicy.from_dict(v["policy"]) for s, v in artifact["seeds"].items()}
    else:  # an ensemble artifact: its members in the order of its seeds
        deployed = allocation.load_policy(artifact["policy"])
        members = deployed.members if isinstance(deployed, allocation.EnsemblePolicy) else (deployed,)
        policies = dict(zip(artifact["seeds"], members))
    return UniverseRun(name, data, tables["vol_forecasts"], policies)


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def readme_table(table: pd.DataFrame) -> str:
    """One row per strategy: 2018-2025 total return, Sortino and max drawdown on each universe, and
    the CAGR difference (fixed - point in time) with its interval for each period."""
    periods = list(dict.fromkeys(table["period"]))
    lines = ["| strategy | fixed 2018–2025 | point in time 2018–2025 | "
             + " | ".join(f"CAGR fixed − point in time, {p} [90% CI]" for p in periods) + " |",
             "|---|---|---|" + "---|" * len(periods)]
    full = table.loc[table["period"] == periods[0]].set_index("strategy")
    for strategy in full.index:
        row = full.loc[strategy]
        if strategy == "ppo_seeds":
            cells = [f"{row['fixed_total_return']}, Sortino {row['fixed_sortino']}",
                     f"{row['point_in_time_total_return']}, Sortino {row['point_in_time_sortino']}"]
            lines.append(f"| PPO, each seed (mean ± sd of total return) | {cells[0]} | {cells[1]} |" + " |" * len(periods))
            continue
        cells = []
        for label in ("fixed", "point_in_time"):
            cells.append(f"{_pct(row[f'{label}_total_return'])}, {row[f'{label}_sortino']:.2f}, "
                         f"{_pct(row[f'{label}_max_drawdown'])}")
        diffs = []
        for period in periods:
            r = table.loc[(table["period"] == period) & (table["strategy"] == strategy)].iloc[0]
            diffs.append(f"{100 * r['cagr_difference']:+.1f} [{100 * r['cagr_difference_low']:+.1f}, "
                         f"{100 * r['cagr_difference_high']:+.1f}]")
        lines.append(f"| {strategy} | {cells[0]} | {cells[1]} | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixed_dir", type=Path)
    parser.add_argument("point_in_time_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("data/reports/survivorship.md"))
    args = parser.parse_args()
    fixed = load_run("fixed", "fixed", args.fixed_dir)
    point_in_time = load_run("point_in_time", "point_in_time", args.point_in_time_dir)
    table = comparison_table(fixed, point_in_time, PERIODS)
    text = table.to_markdown(index=False, floatfmt=".4f")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Survivorship bias: fixed survivors against the point-in-time universe\n\n"
                        "cagr_difference = fixed - point_in_time, 90% paired moving-block bootstrap "
                        "(30-day blocks, 1,000 resamples, seed 7).\n\n" + text + "\n")
    print(text)
    print()
    print(readme_table(table))


if __name__ == "__main__":
    main()
