"""One table for every allocation comparison: each strategy's metrics net of costs beside its
differences to equal weight and to BTC in Sharpe ratio and CAGR, with stationary-bootstrap
intervals; the PPO seeds summarised as mean and sd beside the deployed ensemble.

A strategy here is its daily net returns and its turnover per rebalance over a common window;
:func:`run_strategies` produces them from policies and rule/benchmark strategies on one
accounting (:func:`portfolio.simulate`), :func:`table` compares them. The same table serves one
split, one walk-forward origin, or all origins pooled (their days concatenated).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from regime_pipeline.configs import load_yaml
from regime_pipeline.core.allocation import bootstrap, performance
from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.core.allocation.portfolio import Result
from regime_pipeline.core.allocation.strategies import Strategy, benchmark_results

EQUAL_WEIGHT, BTC = "equal_weight", "btc_buy_and_hold"
REFERENCES = {EQUAL_WEIGHT: "ew", BTC: "btc"}
ENSEMBLE = "ppo_ensemble"
SEED_PREFIX = "ppo_seed_"
METRICS = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "calmar", "annual_turnover")


@dataclass(frozen=True)
class Series:
    """A strategy's run over a window: daily net returns (n,) and turnover per rebalance (k,)."""

    returns: np.ndarray
    turnover: np.ndarray

    @classmethod
    def of(cls, result: Result) -> Series:
        return cls(result.period_returns, result.turnover)


def variants_tried() -> int:
    """How many strategy variants have been evaluated out of sample on this data
    (configs/allocation.yaml ``variants_tried``): the count a report states beside its table."""
    return sum(int(v.get("count", 1)) for v in load_yaml("allocation")["variants_tried"])


def run_strategies(
    data: allocation.AllocationData,
    start: dt.date,
    end: dt.date,
    ensemble: allocation.Policy,
    seeds: Mapping[int, allocation.Policy],
    strategies: Mapping[str, Strategy],
) -> dict[str, Result]:
    """Backtests over ``start..end`` on one accounting: ``ppo_ensemble`` (the deployed policy),
    ``ppo_seed_<s>`` for each seed alone, then `strategies` (benchmarks and rules) by name."""
    results = {ENSEMBLE: allocation.backtest_policy(ensemble, data, start, end)}
    results.update({f"{SEED_PREFIX}{s}": allocation.backtest_policy(p, data, start, end) for s, p in seeds.items()})
    results.update(benchmark_results(data.prices, start, end, dict(strategies)))
    return results


def metrics(series: Series) -> dict[str, float | bool]:
    summary = performance.summary(series.returns, series.turnover, performance.periods_per_year())
    return {**{k: summary[k] for k in METRICS}, "sortino_mean_negative": summary["sortino_mean_negative"]}


def table(series: Mapping[str, Series], settings: bootstrap.BootstrapSettings | None = None) -> pd.DataFrame:
    """The comparison table of `series` (every strategy over the same days, the references
    equal weight and BTC among them).

    Rows: every strategy except the single seeds, which are summarised by two rows after the
    ensemble, ``ppo_seeds_mean (n=S)`` and ``ppo_seeds_sd`` (metrics only). Columns: ``strategy``,
    :data:`METRICS`, ``sortino_mean_negative`` (Sortino misranks such rows), and for each
    reference r in (ew, btc) and metric m in (sharpe, cagr): ``m_vs_r`` (strategy minus
    reference), ``m_vs_r_low``, ``m_vs_r_high`` (the bootstrap interval).
    """
    missing = [r for r in REFERENCES if r not in series]
    if missing:
        raise ValueError(f"a comparison needs {missing} among its strategies")
    strategies = {name: s for name, s in series.items() if not name.startswith(SEED_PREFIX)}
    seeds = {name: s for name, s in series.items() if name.startswith(SEED_PREFIX)}
    diffs = bootstrap.compare({n: s.returns for n, s in strategies.items()}, list(REFERENCES), settings,
                              performance.periods_per_year())
    rows = []
    for name, s in strategies.items():
        row: dict[str, object] = {"strategy": name, **metrics(s)}
        for reference, short in REFERENCES.items():
            hit = diffs.loc[(diffs["strategy"] == name) & (diffs["reference"] == reference)]
            for metric in bootstrap.METRICS:
                if hit.empty:  # the reference itself
                    row[f"{metric}_vs_{short}"], row[f"{metric}_vs_{short}_low"], row[f"{metric}_vs_{short}_high"] = 0.0, 0.0, 0.0
                else:
                    r = hit.iloc[0]
                    row[f"{metric}_vs_{short}"] = r[f"{metric}_diff"]
                    row[f"{metric}_vs_{short}_low"], row[f"{metric}_vs_{short}_high"] = r[f"{metric}_low"], r[f"{metric}_high"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    if seeds:
        per_seed = pd.DataFrame([metrics(s) for s in seeds.values()])[list(METRICS)]
        at = int(frame.index[frame["strategy"] == ENSEMBLE][0]) + 1 if ENSEMBLE in strategies else 0
        mean = {"strategy": f"ppo_seeds_mean (n={len(seeds)})", **per_seed.mean().to_dict()}
        sd = {"strategy": "ppo_seeds_sd", **(per_seed.std(ddof=1) if len(seeds) > 1 else per_seed.iloc[0] * 0).to_dict()}
        frame = pd.concat([frame.iloc[:at], pd.DataFrame([mean, sd]), frame.iloc[at:]], ignore_index=True)
    frame["sortino_mean_negative"] = frame["sortino_mean_negative"].astype("boolean")  # NA on the seed summary rows
    return frame


def seed_table(series: Mapping[str, Series]) -> pd.DataFrame:
    """The single seeds' metrics, one row each (what the mean and sd rows summarise)."""
    return pd.DataFrame([{"strategy": n, **metrics(s)} for n, s in series.items() if n.startswith(SEED_PREFIX)])


def pooled(per_window: Sequence[Mapping[str, Series]]) -> dict[str, Series]:
    """The windows' series of each strategy, concatenated in order (each window's run starts
    from cash on its first day, as it was backtested): only strategies present in every window."""
    names = [n for n in per_window[0] if all(n in w for w in per_window)]
    return {n: Series(np.concatenate([w[n].returns for w in per_window]), np.concatenate([w[n].turnover for w in per_window]))
            for n in names}


def formatted(frame: pd.DataFrame) -> pd.DataFrame:
    """A readable copy for reports: percentages, Sortino marked ``†`` where the mean return is
    negative, and each difference as ``estimate [low, high]``."""
    out = pd.DataFrame({"strategy": frame["strategy"]})
    pct = lambda v: "" if pd.isna(v) else f"{v:+.1%}"  # noqa: E731
    num = lambda v: "" if pd.isna(v) else f"{v:.2f}"  # noqa: E731
    out["total return"] = frame["total_return"].map(pct)
    out["CAGR"] = frame["cagr"].map(pct)
    out["Sharpe"] = frame["sharpe"].map(num)
    flag = frame.get("sortino_mean_negative", pd.Series(False, index=frame.index)).fillna(False).astype(bool)
    out["Sortino"] = [num(v) + (" †" if f else "") for v, f in zip(frame["sortino"], flag)]
    out["max DD"] = frame["max_drawdown"].map(pct)
    out["Calmar"] = frame["calmar"].map(num)
    out["turnover/yr"] = frame["annual_turnover"].map(num)
    for short in REFERENCES.values():
        if f"sharpe_vs_{short}" not in frame:
            continue
        for metric, fmt in (("sharpe", "{:+.2f}"), ("cagr", "{:+.1%}")):
            col = f"{metric}_vs_{short}"
            reference = _reference_of(col)
            out[f"Δ{'Sharpe' if metric == 'sharpe' else 'CAGR'} vs {short.upper()} [95%]"] = [
                "" if pd.isna(e) or name == reference else
                f"{fmt.format(e)} [{fmt.format(lo) if pd.notna(lo) else '?'}, {fmt.format(hi) if pd.notna(hi) else '?'}]"
                for name, e, lo, hi in zip(frame["strategy"], frame[col], frame[f"{col}_low"], frame[f"{col}_high"])
            ]
    return out


def long_returns(results: Mapping[str, Result]) -> pd.DataFrame:
    """Every strategy's evaluated days as rows ``strategy, date, net_return, turnover`` (the
    turnover of the trade made at that day's open, 0 on other days): what a comparison needs
    to be recomputed or pooled later."""
    frames = []
    for name, r in results.items():
        turnover = np.zeros(r.returns.size)
        turnover[r.rebalance_days] = r.turnover
        frames.append(pd.DataFrame({"strategy": name, "date": r.dates[1:], "net_return": r.period_returns,
                                    "turnover": turnover[1:]}))
    return pd.concat(frames, ignore_index=True)


def series_from_long(frame: pd.DataFrame) -> dict[str, Series]:
    """The inverse of :func:`long_returns`, strategies in their order of appearance (turnover
    per day, which gives the same annual turnover as per rebalance)."""
    out = {}
    for name in dict.fromkeys(frame["strategy"]):
        rows = frame.loc[frame["strategy"] == name].sort_values("date", kind="stable")
        out[name] = Series(rows["net_return"].to_numpy(dtype="float64"), rows["turnover"].to_numpy(dtype="float64"))
    return out


def pivot(tables: Mapping[str, pd.DataFrame], column: str, fmt: str = "{:+.2f}") -> pd.DataFrame:
    """Strategy x window: ``column`` with its interval (``estimate [low, high]``) from each
    window's :func:`table` (e.g. ``sharpe_vs_ew`` per origin and pooled)."""
    reference = _reference_of(column)
    rows: dict[str, dict[str, str]] = {}
    for window, frame in tables.items():
        for _, r in frame.iterrows():
            if r["strategy"].startswith("ppo_seeds_") or r["strategy"] == reference or pd.isna(r.get(column)):
                continue
            low, high = r.get(f"{column}_low"), r.get(f"{column}_high")
            cell = fmt.format(r[column])
            if pd.notna(low) and pd.notna(high):
                cell += f" [{fmt.format(low)}, {fmt.format(high)}]"
            rows.setdefault(r["strategy"], {})[window] = cell
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(tables)).fillna("")
    return frame.rename_axis("strategy").reset_index()


def _reference_of(column: str) -> str | None:
    """The reference strategy a ``<metric>_vs_<short>`` column compares with, if any."""
    if "_vs_" not in column:
        return None
    short = column.split("_vs_", 1)[1].split("_", 1)[0]
    return {v: k for k, v in REFERENCES.items()}.get(short)


def scorecard(per_window: Mapping[str, pd.DataFrame], pooled_table: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: in how many windows its Sharpe ratio beat equal weight, BTC, and both
    (point estimates), in how many the interval against equal weight lay above zero, and the
    pooled Sharpe difference to equal weight with its interval."""
    rows = []
    names = [s for s in pooled_table["strategy"] if not s.startswith("ppo_seeds_") and s not in REFERENCES]
    for name in names:
        hits = [f.loc[f["strategy"] == name].iloc[0] for f in per_window.values() if (f["strategy"] == name).any()]
        beats_ew = sum(bool(h["sharpe_vs_ew"] > 0) for h in hits)
        beats_btc = sum(bool(h["sharpe_vs_btc"] > 0) for h in hits)
        both = sum(bool(h["sharpe_vs_ew"] > 0 and h["sharpe_vs_btc"] > 0) for h in hits)
        above = sum(bool(h["sharpe_vs_ew_low"] > 0) for h in hits)
        p = pooled_table.loc[pooled_table["strategy"] == name].iloc[0]
        rows.append({"strategy": name, "windows": len(hits), "beats_ew": beats_ew, "beats_btc": beats_btc,
                     "beats_both": both, "ew_interval_above_zero": above, "pooled_sharpe_vs_ew": p["sharpe_vs_ew"],
                     "pooled_sharpe_vs_ew_low": p["sharpe_vs_ew_low"], "pooled_sharpe_vs_ew_high": p["sharpe_vs_ew_high"],
                     "pooled_sharpe_vs_btc": p["sharpe_vs_btc"], "pooled_sharpe_vs_btc_low": p["sharpe_vs_btc_low"],
                     "pooled_sharpe_vs_btc_high": p["sharpe_vs_btc_high"]})
    return pd.DataFrame(rows)
