"""Helpers that turn figures and tables into asset metadata."""

import datetime as dt

import dagster as dg
import matplotlib.pyplot as plt

from regime_pipeline.core.plots import figure_to_markdown, save_figure
from regime_pipeline.resources.storage import ProjectStorage

# A single-run backfill copies the output's metadata onto every partition's materialization:
# an inline PNG on 3,000 partitions would be gigabytes of run history. Past this many
# partitions, the plot is written to data/reports/ and linked instead.
INLINE_PLOT_MAX_PARTITIONS = 62


def plot_metadata(
    fig: plt.Figure, storage: ProjectStorage, name: str, start: dt.date | None = None, end: dt.date | None = None
) -> dict[str, dg.MetadataValue]:
    """``{"plot": ...}``: inline for a run of few partitions, else a PNG under ``reports/plots``."""
    n_partitions = (end - start).days if start and end else 1
    if n_partitions <= INLINE_PLOT_MAX_PARTITIONS:
        return {"plot": dg.MetadataValue.md(figure_to_markdown(fig, name))}
    suffix = f"_{start}_{end - dt.timedelta(days=1)}" if start and end else ""
    path = save_figure(fig, storage.reports_dir / "plots" / f"{name}{suffix}.png")
    return {"plot_file": dg.MetadataValue.path(str(path))}
