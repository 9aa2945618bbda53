"""Blocking checks evaluated before anything is stored.

Dagster hands an asset's output to its IO manager as soon as the step yields it, and a check
result yielded afterwards comes too late: a failed blocking check stops the steps downstream,
but the rows it guards have already replaced the stored ones. :func:`checked_output` evaluates
the checks on the frame in memory first, yields their results, and yields the output only if
every blocking check passed; otherwise the step fails naming the checks, and what was stored
before stays exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import dagster as dg


class BlockingCheckFailed(dg.Failure):
    """A blocking check failed on an output that was therefore not stored."""


def checked_output(
    output: dg.Output, results: Sequence[dg.AssetCheckResult], specs: Sequence[dg.AssetCheckSpec]
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Yield the check `results`, then `output` only if no blocking check among `specs` failed with
    ERROR severity (a WARN failure is shown in the UI and does not block).

    :raises BlockingCheckFailed: after yielding the results, if a blocking check failed
    """
    blocking = {spec.name for spec in specs if spec.blocking}
    yield from results
    # As Dagster does: a blocking check that fails with WARN severity warns and does not block.
    failed = [
        r for r in results
        if r.check_name in blocking and not r.passed and r.severity == dg.AssetCheckSeverity.ERROR
    ]
    if not failed:
        yield output
        return
    asset = specs[0].asset_key.to_user_string()
    details = []
    for result in failed:
        violations = result.metadata.get("violations") if result.metadata else None
        count = getattr(violations, "value", violations)
        details.append(f"{result.check_name}" + (f" ({count} violations)" if count is not None else ""))
    raise BlockingCheckFailed(
        description=(
            f"{asset}: blocking check failed: {', '.join(details)}. Nothing was stored; the rows stored "
            "before are unchanged. The check results show the offending rows."
        ),
        metadata={"failed_checks": ", ".join(r.check_name for r in failed)},
    )
