"""Helpers that turn figures and tables into asset metadata, attach what describes a run, and
send a step's Python warnings to its run's log."""

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import matplotlib.pyplot as plt

from regime_pipeline.core.plots import figure_to_markdown
from regime_pipeline.partitions import summary_partition

# The metadata key that, on every partition of a multi-partition run, names the partition
# that carries the run's summary.
SUMMARY_ON = "summary_on"


def plot_metadata(fig: plt.Figure, name: str) -> dict[str, dg.MetadataValue]:
    """``{"plot": ...}``: `fig` as an inline PNG, shown in the UI with the asset's metadata."""
    return {"plot": dg.MetadataValue.md(figure_to_markdown(fig, name))}


def add_run_metadata(context: dg.AssetExecutionContext, metadata: Mapping[str, Any]) -> None:
    """Attach `metadata`, which describes all of the asset this run materializes.

    A single-run backfill copies an output's metadata onto every partition it materializes: a
    full-history run would store 3,059 copies of the same summary table and plot, twice each
    (the run's event log and the cross-run index). A run of several partitions puts it on its
    last partition, the asset's latest materialization in the UI, and every partition names
    that partition under ``summary_on``.
    """
    keys = context.partition_keys if context.has_partition_key_range else []
    last = summary_partition(keys)
    if last is None:
        context.add_asset_metadata(metadata)
        return
    context.add_asset_metadata(metadata, partition_key=last)
    context.add_asset_metadata({SUMMARY_ON: last})


@contextlib.contextmanager
def warnings_to_log(context: dg.AssetExecutionContext) -> Iterator[None]:
    """Python warnings raised in the block go to the run's log, each text once, where the UI and
    the command line show them with the asset's name; Dagster would leave them on the step
    process's stderr, unattributed and repeated for every origin."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    said: set[str] = set()
    for warning in caught:
        text = f"{warning.category.__name__}: {warning.message}"
        if text not in said:
            said.add(text)
            context.log.warning(text)
