"""Volatility forecasts: HAR and LightGBM fitted on train, daily forecasts, a report per split.

`vol_forecasts` reads only its look-back of `daily_bars` (the longest HAR window), the same
day's `vol_features`, and the train-fitted `garch_params` and `vol_forecast_models`; the
report scores every model against a naive last-value forecast on each split.
"""

import base64
import datetime as dt
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from regime_pipeline.assets.bars import window_days
from regime_pipeline.assets.features import PER_DAY, TRAIN_DAYS, candidate_bars, require_bars
from regime_pipeline.checks.gate import checked_output
from regime_pipeline.assets.metadata import add_run_metadata
from regime_pipeline.configs import splits
from regime_pipeline.configs import universe as universe_config
from regime_pipeline.core.features import daily as features
from regime_pipeline.core.features import vol_forecasts as vf
from regime_pipeline.core.plots import save_figure
from regime_pipeline.partitions import SPLIT
from regime_pipeline.resources.storage import ProjectStorage

GROUP = "forecasts"
LOOKBACK = dg.TimeWindowPartitionMapping(start_offset=-vf.LOOKBACK_DAYS, allow_nonexistent_upstream_partitions=True)
ALL = dg.AllPartitionMapping()


def _md(frame: pd.DataFrame, floatfmt: str = ".4g") -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown(index=False, floatfmt=floatfmt))


@dg.asset(
    group_name=GROUP,
    io_manager_key="model_io_manager",
    ins={
        "daily_bars": dg.AssetIn(partition_mapping=TRAIN_DAYS),
        "vol_features": dg.AssetIn(partition_mapping=TRAIN_DAYS),
    },
    kinds={"lightgbm"},
)
def vol_forecast_models(context: dg.AssetExecutionContext, daily_bars: pd.DataFrame, vol_features: pd.DataFrame) -> dict:
    """HAR-RV coefficients per asset and horizon (OLS) and one LightGBM model per horizon
    (pooled across assets), fitted on train rows whose inputs and targets lie in train
    (configs/forecasts.yaml). Stored as JSON: coefficients and LightGBM's text model format."""
    train = splits()["train"]
    models = vf.fit_models(candidate_bars(daily_bars), vol_features, train.start, train.end + dt.timedelta(days=1),
                           symbols=universe_config().candidates)
    har = pd.DataFrame([
        {"horizon_days": h, "symbol": s, "rows": models.n_rows[h][s], **dict(zip(["b0", *vf.RV_COLUMNS], c))}
        for h, by in models.har.items() for s, c in by.items()
    ])
    gain = pd.DataFrame({f"h{h}": models.booster(h).feature_importance("gain") for h in vf.HORIZONS}, index=vf.LGBM_FEATURES)
    gain = (gain / gain.sum()).reset_index(names="feature")
    context.log.info(f"vol forecast models fitted on {train.start}..{train.end}: {har['rows'].sum()} HAR rows")
    context.add_output_metadata({
        "har_coefficients": _md(har),
        "lgbm_gain_share": _md(gain, ".3f"),
        "train_rows": {str(h): int(sum(models.n_rows[h].values())) for h in vf.HORIZONS},
    })
    return models.to_dict()


VALID_CHECK = dg.AssetCheckSpec(
    "valid_forecasts", asset="vol_forecasts", blocking=True,
    description="every forecast is finite and >= 0 (late listings are masked, never filled)",
)


@dg.asset(
    **{**PER_DAY, "group_name": GROUP},
    ins={
        "daily_bars": dg.AssetIn(partition_mapping=LOOKBACK),
        "vol_features": dg.AssetIn(),
        "garch_params": dg.AssetIn(),
        "vol_forecast_models": dg.AssetIn(),
    },
    check_specs=[VALID_CHECK],
)
def vol_forecasts(
    context: dg.AssetExecutionContext, daily_bars: pd.DataFrame, vol_features: pd.DataFrame,
    garch_params: dict, vol_forecast_models: dict,
):
    """Per (date, symbol, horizon_days): forecasts of the next h days' realized vol
    sqrt(mean(r_{d+1}^2 .. r_{d+h}^2)) made at the close of d by the naive, GARCH, HAR and
    LightGBM models; daily vol, fraction (not annualised); h = 1 and 7 days."""
    start, end = window_days(context)
    require_bars(daily_bars, start, end, vf.LOOKBACK_DAYS, log=context.log)
    params = {s: features.GarchParams.from_dict(p) for s, p in garch_params.items()}
    models = vf.VolForecastModels.from_dict(vol_forecast_models)
    frame = vf.forecast(candidate_bars(daily_bars), vol_features, params, models, start, end)
    context.log.info(f"vol_forecasts {start}..{end - dt.timedelta(days=1)}: {len(frame)} rows")
    values = frame[list(vf.MODELS)].to_numpy(dtype="float64")
    bad = ~np.isfinite(values) | (values < 0)
    summary = frame.groupby("horizon_days")[list(vf.MODELS)].mean().reset_index() if len(frame) else pd.DataFrame()
    add_run_metadata(context, {
        "rows": len(frame),
        "days": int(frame["date"].nunique()) if len(frame) else 0,
        "mean_forecast": _md(summary) if len(summary) else dg.MetadataValue.md("no rows"),
    })
    check = dg.AssetCheckResult(check_name="valid_forecasts", passed=not bad.any(),
                                metadata={"violations": int(bad.sum()), "invalid_values": int(bad.sum())})
    yield from checked_output(dg.Output(frame), [check], [VALID_CHECK])


@dg.asset(
    group_name=GROUP,
    partitions_def=SPLIT,
    ins={"vol_forecasts": dg.AssetIn(partition_mapping=ALL), "daily_bars": dg.AssetIn(partition_mapping=ALL)},
    metadata={"partition_expr": "split"},
    pool="warehouse",
)
def vol_forecast_report(
    context: dg.AssetExecutionContext, storage: ProjectStorage, vol_forecasts: pd.DataFrame, daily_bars: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """RMSE and QLIKE of each model per asset and pooled, against the naive last-value
    forecast, on the split's days whose h-day target lies in the split; also written to
    data/reports/vol_forecasts_<split>.md (with .json and .png)."""
    split = splits()[context.partition_key]
    end = split.end + dt.timedelta(days=1)
    targets = vf.realized(candidate_bars(daily_bars), split.start, end)
    scores = vf.evaluate(vol_forecasts, targets)
    fig = vf.plot_report(scores, vol_forecasts, targets, f"volatility forecasts, {split.name} {split.start}..{split.end}")
    path = write_report(storage, split.name, scores, fig)
    pooled = scores.loc[scores["symbol"] == "pooled"].drop(columns="symbol")
    context.log.info(f"{split.name}:\n{pooled.to_string(index=False)}")
    encoded = base64.b64encode(path.with_suffix(".png").read_bytes()).decode()
    out = scores.assign(split=split.name)[["split", *scores.columns]]
    return dg.Output(out, metadata={
        "pooled": _md(pooled),
        "report": dg.MetadataValue.path(str(path)),
        "plot": dg.MetadataValue.md(f"![vol forecasts {split.name}](data:image/png;base64,{encoded})"),
    })


def write_report(storage: ProjectStorage, split: str, scores: pd.DataFrame, fig) -> Path:
    """data/reports/vol_forecasts_<split>.md, .json (the scores) and .png (the plot)."""
    path = storage.reports_dir / f"vol_forecasts_{split}.md"
    png = save_figure(fig, path.with_suffix(".png"))
    path.write_text(vf.report_markdown(split, scores, png.name))
    path.with_suffix(".json").write_text(json.dumps(scores.to_dict(orient="records"), indent=1))
    return path
