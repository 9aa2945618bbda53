"""Stage 1, features: volatility, trend and cross-sectional features per UTC day.

Each per-day asset reads only the look-back it needs from `daily_bars` (a time-window
mapping with a negative start offset), so one new day is computed from ~a year of bars,
not from all of history. GARCH parameters are fitted once, on `train`.
"""

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd

from regime_pipeline.assets.bars import window_days
from regime_pipeline.assets.metadata import add_run_metadata, warnings_to_log
from regime_pipeline.checks.gate import checked_output
from regime_pipeline.configs import history_start, splits
from regime_pipeline.configs import universe as universe_config
from regime_pipeline.core.data import quality
from regime_pipeline.core.features import daily as features
from regime_pipeline.partitions import DAILY

GROUP = "features"


def train_days() -> list[str]:
    """The DAILY partition keys of the train split."""
    train = splits()["train"]
    return DAILY.get_partition_keys_in_range(dg.PartitionKeyRange(train.start.isoformat(), train.end.isoformat()))


TRAIN_DAYS = dg.SpecificPartitionsPartitionMapping(train_days())
LOOKBACK = dg.TimeWindowPartitionMapping(start_offset=-features.LOOKBACK_DAYS, allow_nonexistent_upstream_partitions=True)


# What the three per-day feature assets share: daily partitions, one run per backfill,
# a warehouse table sliced by date.
PER_DAY = {
    "group_name": GROUP,
    "partitions_def": DAILY,
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "metadata": {"partition_expr": "date"},
    "pool": "warehouse",
}


def _finite_check(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec("all_values_finite", asset=asset, blocking=True,
                             description="no NaN or infinite feature value: short histories are masked, never filled")


def _check_finite(asset: str, frame: pd.DataFrame) -> dg.AssetCheckResult:
    bad = ~np.isfinite(frame.select_dtypes("number").to_numpy(float))
    return dg.AssetCheckResult(
        asset_key=asset, check_name="all_values_finite", passed=not bad.any(),
        metadata={"violations": int(bad.sum()), "non_finite_values": int(bad.sum())},
    )


def require_bars(
    daily_bars: pd.DataFrame, start: dt.date, end: dt.date, lookback_days: int = features.LOOKBACK_DAYS,
    log=None,
) -> None:
    """Fail unless `daily_bars` holds a bar for every listed asset on every day of ``[start, end)``
    and the `lookback_days` before it: values computed from missing bars would be masked, and would
    replace good stored rows with fewer or none.

    A listed asset without a single bar in that window is one the market data source has no data
    for at all (`daily_bars`' coverage check warned about it): it is masked, as before its listing,
    and named in a warning to `log`. With no bar for any asset, `daily_bars` was not materialized.
    """
    first = max(start - dt.timedelta(days=lookback_days), history_start())
    known = universe_config()
    listed = {s: d for s, d in known.listing_dates().items() if s in known.candidates}
    missing, _ = quality.coverage_gaps(daily_bars, listed, first, end, known.last_bars())
    present = set(daily_bars["symbol"]) if len(daily_bars) else set()
    absent = sorted(set(missing["symbol"]) - present) if present else []
    if absent:
        missing = missing.loc[~missing["symbol"].isin(absent)]
        if log is not None:
            log.warning(f"no daily bar at all for {', '.join(absent)} in {first}..{end - dt.timedelta(days=1)} "
                        "(no market data for them): masked, as if not listed")
    if missing.empty:
        return
    examples = ", ".join(f"{s} {d}" for s, d in missing.head(5).itertuples(index=False))
    raise dg.Failure(
        description=(
            f"daily_bars has no bar for {len(missing)} asset-days of {first}..{end - dt.timedelta(days=1)}, the days "
            f"this run's values are computed from (e.g. {examples}): materialize daily_bars for them first. "
            "Nothing was stored."
        ),
        metadata={"missing_asset_days": len(missing), "first_missing": str(missing["date"].min())},
    )


def _feature_output(context: dg.AssetExecutionContext, name: str, frame: pd.DataFrame, start: dt.date, end: dt.date):
    """Log and describe a feature frame, then check it and yield it (only if the check passed)."""
    keys = ["date", "symbol"] if "symbol" in frame.columns else ["date"]
    values = frame.drop(columns=keys)
    context.log.info(f"{name} {start}..{end - dt.timedelta(days=1)}: {len(frame)} rows, {values.shape[1]} features")
    summary = values.describe().T[["mean", "std", "min", "50%", "max"]] if len(frame) else pd.DataFrame()
    add_run_metadata(context, {
        "rows": len(frame),
        "days": int(frame["date"].nunique()) if len(frame) else 0,
        "masked_days": (end - start).days - (int(frame["date"].nunique()) if len(frame) else 0),
        "summary": dg.MetadataValue.md(summary.to_markdown(floatfmt=".4g") if len(summary) else "no rows"),
    })
    yield from checked_output(dg.Output(frame), [_check_finite(name, frame)], [_finite_check(name)])


@dg.asset(
    group_name=GROUP,
    io_manager_key="model_io_manager",
    ins={"daily_bars": dg.AssetIn(partition_mapping=TRAIN_DAYS)},
    kinds={"arch"},
)
def garch_params(context: dg.AssetExecutionContext, daily_bars: pd.DataFrame) -> dict:
    """GARCH(1,1) parameters per candidate asset (mu, omega, alpha, beta, in daily-return units),
    fitted with `arch` on the train split's returns only; `vol_features` filters them forward. An
    asset with too few train returns (listed late in train, or after it) gets the median of the
    fitted assets' parameters."""
    train = splits()["train"]
    candidates = universe_config().candidates
    params, pooled = features.fit_garch_pooled(
        daily_bars.loc[daily_bars["symbol"].isin(candidates)], train.start, train.end + dt.timedelta(days=1), candidates,
    )
    table = pd.DataFrame({s: p.to_dict() for s, p in params.items()}).T
    table["persistence"] = table["alpha"] + table["beta"]
    context.add_output_metadata({"params": dg.MetadataValue.md(table.to_markdown(floatfmt=".4g")),
                                 "median_for": ", ".join(pooled) or "none"})
    return {symbol: p.to_dict() for symbol, p in params.items()}


def candidate_bars(daily_bars: pd.DataFrame) -> pd.DataFrame:
    """The bars of the assets the universe is chosen from (configs/universe.yaml `mode`)."""
    return daily_bars.loc[daily_bars["symbol"].isin(universe_config().candidates)]


@dg.asset(
    **PER_DAY,
    ins={"daily_bars": dg.AssetIn(partition_mapping=LOOKBACK), "garch_params": dg.AssetIn()},
    check_specs=[_finite_check("vol_features")],
)
def vol_features(context: dg.AssetExecutionContext, daily_bars: pd.DataFrame, garch_params: dict):
    """Per (date, symbol): realized_vol_20d, garch_sigma, har_daily, har_weekly, vol_ratio
    (annualised with 365 days; formulas in configs/features.yaml)."""
    start, end = window_days(context)
    require_bars(daily_bars, start, end, log=context.log)
    params = {s: features.GarchParams.from_dict(p) for s, p in garch_params.items()}
    with warnings_to_log(context):
        frame = features.vol_features(candidate_bars(daily_bars), params, start, end)
    yield from _feature_output(context, "vol_features", frame, start, end)


@dg.asset(**PER_DAY, ins={"daily_bars": dg.AssetIn(partition_mapping=LOOKBACK)}, check_specs=[_finite_check("trend_features")])
def trend_features(context: dg.AssetExecutionContext, daily_bars: pd.DataFrame):
    """Per (date, symbol): rate_of_change, close_normalized, momentum_50d,
    return_skewness_30d, trend_strength, volume_trend (configs/features.yaml)."""
    start, end = window_days(context)
    require_bars(daily_bars, start, end, log=context.log)
    frame = features.trend_features(candidate_bars(daily_bars), start, end)
    yield from _feature_output(context, "trend_features", frame, start, end)


@dg.asset(
    **PER_DAY,
    ins={"daily_bars": dg.AssetIn(partition_mapping=LOOKBACK), "universe": dg.AssetIn(partition_mapping=LOOKBACK)},
    check_specs=[_finite_check("cross_features")],
)
def cross_features(context: dg.AssetExecutionContext, daily_bars: pd.DataFrame, universe: pd.DataFrame):
    """Per date, across the universe's members that day: n_assets, avg_pairwise_corr,
    btc_dominance, vol_dispersion, corr_stability (configs/features.yaml)."""
    start, end = window_days(context)
    require_bars(daily_bars, start, end, log=context.log)
    members = universe.loc[universe["member"].astype(bool), ["date", "symbol"]]
    frame = features.cross_features(candidate_bars(daily_bars), start, end, members=members)
    yield from _feature_output(context, "cross_features", frame, start, end)
