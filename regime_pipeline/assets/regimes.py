"""Stage 2, regimes: HMMs fitted on train, Viterbi labels per split, and feature selection."""

import math

import dagster as dg
import pandas as pd

from regime_pipeline.assets.features import TRAIN_DAYS
from regime_pipeline.assets.metadata import plot_metadata
from regime_pipeline.checks.gate import checked_output
from regime_pipeline.configs import splits
from regime_pipeline.core.data import universe as pit
from regime_pipeline.core.regimes import labels as regimes
from regime_pipeline.core.features import selection
from regime_pipeline.core.plots import plot_correlations, plot_importance, plot_regime_timeline
from regime_pipeline.partitions import SPLIT

GROUP = "regimes"
FEATURE_GROUPS = ("vol", "trend", "cross")

HMM_CHECKS = [
    dg.AssetCheckSpec("no_collapsed_state", asset="hmm_models", blocking=True,
                      description="every HMM state is decoded on at least min_occupancy of train days"),
    dg.AssetCheckSpec("spike_is_a_spike", asset="hmm_models", blocking=True,
                      description="the top vol state's mean annualised vol exceeds spike_min_vol (100%)"),
]


def _md(frame: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown(index=False, floatfmt=".3g"))


@dg.asset(
    group_name=GROUP,
    io_manager_key="model_io_manager",
    ins={
        "vol_features": dg.AssetIn(partition_mapping=TRAIN_DAYS),
        "trend_features": dg.AssetIn(partition_mapping=TRAIN_DAYS),
        "universe": dg.AssetIn(partition_mapping=TRAIN_DAYS),
    },
    check_specs=HMM_CHECKS,
    kinds={"hmmlearn"},
)
def hmm_models(
    context: dg.AssetExecutionContext, vol_features: pd.DataFrame, trend_features: pd.DataFrame, universe: pd.DataFrame,
):
    """GaussianHMMs for the vol and trend regimes, pooled across the universe's member
    asset-days, GMM-initialised, fitted on train with several restarts; states ordered by their
    means (configs/regimes.yaml)."""
    config = regimes.settings()
    train = splits()["train"]
    members = pit.members_by_day(universe)
    fitted = {}
    for kind, frame in (("vol", pit.only_members(vol_features, members)), ("trend", pit.only_members(trend_features, members))):
        context.log.info(f"fitting the {kind} HMM on {len(frame)} train asset-days, {config['hmm']['n_restarts']} restarts")
        fitted[kind] = regimes.fit_hmm(frame, kind, train, config)
    models = regimes.RegimeModels(**fitted)

    rows, collapsed = [], []
    for kind in ("vol", "trend"):
        model = models[kind]
        collapsed += [f"{kind}.{name}" for name in model.collapsed_states_]
        for i, name in enumerate(model.state_names):
            rows.append({"kind": kind, "state": name, "train_share": model.occupancy_[i],
                         **{f"mean_{o}": m for o, m in zip(config[kind]["observations"], model.means_[i])}})
    states = pd.DataFrame(rows)
    # The first vol observation is log realized vol: the top state's mean, back in vol units.
    spike_vol = math.exp(models.vol.means_[-1][0])
    output = dg.Output(
        models.to_dict(),
        metadata={
            "states": _md(states),
            "train_loglik_vol": float(models.vol.train_loglik_),
            "train_loglik_trend": float(models.trend.train_loglik_),
        },
    )
    checks = [
        dg.AssetCheckResult(check_name="no_collapsed_state", passed=not collapsed,
                            metadata={"collapsed": ", ".join(collapsed) or "none"}),
        dg.AssetCheckResult(check_name="spike_is_a_spike", passed=spike_vol > config["vol"]["spike_min_vol"],
                            metadata={"spike_state_mean_vol": spike_vol}),
    ]
    # A model that fails a blocking check never replaces the stored one.
    yield from checked_output(output, checks, HMM_CHECKS)


@dg.asset(
    group_name=GROUP,
    partitions_def=SPLIT,
    ins={
        "hmm_models": dg.AssetIn(),
        "vol_features": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        "trend_features": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        "cross_features": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        "universe": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
    },
    metadata={"partition_expr": "split"},
    pool="warehouse",
)
def regime_labels(
    context: dg.AssetExecutionContext,
    hmm_models: dict,
    vol_features: pd.DataFrame,
    trend_features: pd.DataFrame,
    cross_features: pd.DataFrame,
    universe: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Vol, trend and cross regime of every member (date, symbol) of the split, decoded with the
    train-fitted HMMs by Viterbi over each asset's runs of membership in the split (hindsight:
    training targets only)."""
    split = splits()[context.partition_key]
    config = regimes.settings()
    models = regimes.RegimeModels.from_dict(hmm_models)
    members = pit.members_by_day(universe)
    labels = regimes.label_window(
        models,
        pit.only_members(regimes.in_window(vol_features, split.start, split.end), members),
        pit.only_members(regimes.in_window(trend_features, split.start, split.end), members),
        regimes.in_window(cross_features, split.start, split.end),
        config,
    )
    labels.insert(0, "split", split.name)
    counts = regimes.class_counts(labels, config)
    absent = [f"{kind}.{regime}" for kind, regime in counts.loc[counts["days"] == 0, ["kind", "regime"]].itertuples(index=False)]
    if absent:
        context.log.warning(f"{split.name}: regimes with no day at all: {', '.join(absent)}")
    names = {kind: config[kind]["names"] for kind in (*regimes.KINDS, "cross")}
    fig = plot_regime_timeline(labels, names, f"regimes, {split.name} {split.start}..{split.end}")
    return dg.Output(
        labels,
        metadata={
            "rows": len(labels),
            "class_counts": _md(counts),
            "absent_regimes": ", ".join(absent) or "none",
            **plot_metadata(fig, f"regime_labels_{split.name}"),
        },
    )


@dg.asset(
    group_name=GROUP,
    io_manager_key="model_io_manager",
    ins={
        "vol_features": dg.AssetIn(partition_mapping=TRAIN_DAYS),
        "trend_features": dg.AssetIn(partition_mapping=TRAIN_DAYS),
        "cross_features": dg.AssetIn(partition_mapping=TRAIN_DAYS),
        "regime_labels": dg.AssetIn(partition_mapping=dg.SpecificPartitionsPartitionMapping(["train"])),
    },
    kinds={"shap"},
)
def selected_features(
    context: dg.AssetExecutionContext,
    vol_features: pd.DataFrame,
    trend_features: pd.DataFrame,
    cross_features: pd.DataFrame,
    regime_labels: pd.DataFrame,
) -> dict:
    """Per group, the detector inputs: features ranked by mean |SHAP| of a tree model that
    predicts the group's train labels, with pairs of |corr| > 0.85 collapsed to the
    higher-SHAP member."""
    config = regimes.settings()["selection"]
    frames = {"vol": vol_features, "trend": trend_features, "cross": cross_features}
    result, importance, corr = {}, {}, {}
    for group in FEATURE_GROUPS:
        X, y = selection_inputs(frames[group], regime_labels, group)
        context.log.info(f"{group}: SHAP on {len(X)} train rows, {X.shape[1]} features")
        chosen = selection.select_features(X, y, threshold=config["corr_threshold"], random_state=config["random_state"])
        result[group] = {"selected": chosen.selected, "dropped": chosen.dropped,
                         "importance": chosen.importance.to_dict()}
        importance[group], corr[group] = chosen.importance, chosen.corr
    selected = {g: result[g]["selected"] for g in FEATURE_GROUPS}
    table = pd.DataFrame([(g, ", ".join(selected[g]), ", ".join(f"{d}→{k}" for d, k in result[g]["dropped"].items()) or "none")
                          for g in FEATURE_GROUPS], columns=["group", "selected", "collapsed"])
    context.add_output_metadata({
        "selection": _md(table),
        **{f"shap_{k}": v for k, v in plot_metadata(plot_importance(importance, selected), "shap_importance").items()},
        **{f"corr_{k}": v for k, v in plot_metadata(plot_correlations(corr), "feature_correlation").items()},
    })
    return result


def selection_inputs(features: pd.DataFrame, labels: pd.DataFrame, group: str) -> tuple[pd.DataFrame, pd.Series]:
    """Features joined with the group's label on train: `X` without keys, `y` the label."""
    if group == "cross":
        target = labels.drop_duplicates("date")[["date", "cross_regime"]].dropna()
        joined = features.merge(target, on="date")
    else:
        joined = features.merge(labels[["date", "symbol", f"{group}_regime"]], on=["date", "symbol"])
    keys = [c for c in ("date", "symbol", "n_assets") if c in joined.columns]
    y = joined.pop(f"{group}_regime")
    return joined.drop(columns=keys), y
