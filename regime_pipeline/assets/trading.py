"""Stage 5, trading: the weekly rebalance of the paper (or testnet) book with the latest
walk-forward origin's policy on the walk-forward probabilities, and the check that the paper
ledger tracks the backtest of the policy that traded its current book."""

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd

from regime_pipeline.assets.metadata import add_run_metadata
from regime_pipeline.configs import load_yaml
from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.core.allocation.policy import Policy, load_policy
from regime_pipeline.core.allocation.walk_forward import WalkForwardSettings, stitch
from regime_pipeline.core.trading import book as books
from regime_pipeline.core.trading.ledger import Ledger
from regime_pipeline.core.trading.rebalance import RebalanceResult, rebalance
from regime_pipeline.core.trading.risk import RiskLimits, StaleDataError
from regime_pipeline.partitions import POLICY_ORIGIN_NAMES, WEEKLY
from regime_pipeline.resources.broker import BrokerResource
from regime_pipeline.resources.storage import ProjectStorage

GROUP = "trading"
ALL = dg.AllPartitionMapping()
TRACKING_CHECK = "paper_ledger_tracks_backtest"
# The deployed policy: the latest walk-forward origin's (trained on every out-of-sample year before
# its selection year).
DEPLOYED_ORIGIN = POLICY_ORIGIN_NAMES[-1]


def _md(frame: pd.DataFrame, floatfmt: str = ".4f") -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown(index=False, floatfmt=floatfmt) if len(frame) else "(none)")


def _weeks(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The Mondays of the run, oldest first (one for a scheduled run, many for a backfill)."""
    window = context.partition_time_window
    start, end = window.start.date(), window.end.date()
    return [start + dt.timedelta(days=7 * i) for i in range((end - start).days // 7)]


def trade_prices(data: allocation.AllocationData, week: dt.date) -> dict[str, float]:
    """The reference price of each listed asset for `week`: the Monday open when that day's
    bar exists (a backfill), else Sunday's close (a live run right after it; on a 24/7 market
    the next open is the last close to within a tick)."""
    sunday = week - dt.timedelta(days=1)
    t = data.index(sunday)
    row = data.prices.open[t + 1] if t + 1 < data.prices.dates.size and data.prices.dates[t + 1] == week else data.prices.close[t]
    return {s: float(p) for s, p in zip(data.prices.symbols, row) if np.isfinite(p)}


def closes_on(data: allocation.AllocationData, day: dt.date) -> dict[str, float]:
    """Each listed asset's close on `day` (what a new book's starting positions are valued at).

    :raises StaleDataError: no prices for `day`
    """
    if not data.prices.dates.size or not data.prices.dates[0] <= day <= data.prices.dates[-1]:
        raise StaleDataError(f"no prices for {day}: the data cover "
                             f"{data.prices.dates[0] if data.prices.dates.size else '-'}..{data.prices.dates[-1] if data.prices.dates.size else '-'}")
    row = data.prices.close[data.index(day)]
    return {s: float(p) for s, p in zip(data.prices.symbols, row) if np.isfinite(p)}


def tracking(ledger: Ledger, book: books.Book, policy: Policy, data: allocation.AllocationData, limits: RiskLimits) -> pd.DataFrame:
    """The ledger's equity after each complete week of `book` against the risk-limited backtest
    of the policy that traded it from the book's start (its value right after each Monday's
    trade and cost): ``week, ledger, backtest, gap``, both relative to the book's start value."""
    done = books.book_weeks(ledger, book)
    if done.empty:
        return pd.DataFrame(columns=["week", "ledger", "backtest", "gap"])
    weeks = list(done["week"])
    last = min(weeks[-1] + dt.timedelta(days=6), data.prices.dates[-1])
    run = allocation.backtest_policy(policy, data, book.first_week, last, limits, book.start(ledger))
    at_open = dict(zip(run.dates[run.rebalance_days], run.equity_open[run.rebalance_days]))
    frame = pd.DataFrame({
        "week": weeks,
        "ledger": done["equity_after"].to_numpy(dtype=float) / book.value,
        "backtest": [at_open.get(w, np.nan) for w in weeks],
    })
    frame["gap"] = frame["ledger"] / frame["backtest"] - 1.0
    return frame


@dg.asset(
    group_name=GROUP,
    partitions_def=WEEKLY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    ins={"daily_bars": dg.AssetIn(partition_mapping=ALL),
         "walk_forward_probabilities": dg.AssetIn(partition_mapping=ALL),
         "daily_closes": dg.AssetIn(), "universe": dg.AssetIn(partition_mapping=ALL),
         "walk_forward_policy": dg.AssetIn(partition_mapping=dg.SpecificPartitionsPartitionMapping([DEPLOYED_ORIGIN]))},
    check_specs=[dg.AssetCheckSpec(TRACKING_CHECK, asset="weekly_rebalance",
                                   description="paper ledger equity within tolerance of the risk-limited backtest of "
                                               "the policy that traded the ledger's current book")],
    kinds={"duckdb"},
)
def weekly_rebalance(
    context: dg.AssetExecutionContext, broker: BrokerResource, storage: ProjectStorage, daily_bars: pd.DataFrame,
    walk_forward_probabilities: pd.DataFrame, daily_closes: pd.DataFrame, universe: pd.DataFrame,
    walk_forward_policy: dict,
):
    """Each Monday week: the out-of-sample regime probabilities at Sunday's close (the
    walk-forward's, the target its policies observe) -> the latest origin's policy -> target
    weights -> risk limits -> orders -> broker -> fills -> ledger. A week already in the ledger
    sends nothing; a backfill trades its weeks in order. Decisions use data through the Sunday
    before the week only; the Monday open is the paper broker's fill price. A policy other than
    the one that traded the ledger's last week starts a new book from the positions held."""
    weeks = _weeks(context)
    trading = broker.open(log=context.log)
    policy = load_policy(walk_forward_policy["policy"])
    identity = books.fingerprint(walk_forward_policy["policy"])
    label = f"walk_forward_policy/{DEPLOYED_ORIGIN} ({walk_forward_policy.get('profile', '?')} profile)"
    limits = RiskLimits.from_config()
    probabilities = stitch(walk_forward_probabilities, target=WalkForwardSettings.from_config().target)
    # The universe's members of each Sunday are the assets that week's decision may weigh.
    data = allocation.allocation_data(daily_bars, probabilities, daily_closes, universe)
    results: list[RebalanceResult] = []
    for week in weeks:
        stored = trading.ledger.plan(week)
        if stored is not None:  # planned already (complete, or resumed from its recorded plan)
            target, through, book = np.asarray(stored.details["target"]), stored.data_through, None
        else:
            sunday = week - dt.timedelta(days=1)
            book = books.book_for_week(trading.ledger, identity, label, week, data.prices.symbols, closes_on(data, sunday))
            if book.first_week == week and trading.ledger.last_planned_week() is not None:
                context.log.info(f"weekly_rebalance {week}: a new book for {label} ({identity}), from the positions "
                                 f"held at the close of {sunday} ({book.value:,.2f} USDT)")
            decision = allocation.decide_week(policy, data, book.first_week, week, limits, book.start(trading.ledger))
            target, through = decision.target, decision.data_through
        result = rebalance(week, target, trade_prices(data, week), through, trading.broker, trading.ledger, limits,
                           symbols=data.prices.symbols, log=context.log, book=None if book is None else book.to_dict())
        context.log.info(f"weekly_rebalance {week}: {result.status}, {len(result.sent)} order(s) sent, "
                         f"equity {result.equity_before:,.2f} -> {result.equity_after or float('nan'):,.2f} USDT")
        results.append(result)
    current = books.book_of(trading.ledger.plan(results[-1].week).details)

    last = results[-1]
    regimes, cross = allocation.regimes_on(data, last.data_through)
    weights = pd.DataFrame({"asset": [*last.symbols, "cash"], "target": last.target, "after_limits": last.weights})
    orders = trading.ledger.orders(last.week)
    equity = trading.ledger.equity_history()
    metadata = {
        "weeks": len(weeks),
        "week": last.week.isoformat(),
        "status": last.status,
        "broker": last.broker,
        "orders_sent": sum(len(r.sent) for r in results),
        "equity_usdt": float(last.equity_after) if last.equity_after is not None else float(last.equity_before),
        "cross_regime": cross,
        "regimes": _md(regimes),
        "weights": _md(weights.loc[(weights["target"] > 0) | (weights["after_limits"] > 0)]),
        "limits_bound": ", ".join(str(b) for b in last.bound) or "none",
        "orders": _md(orders),
        "equity_history": _md(equity.tail(12)),
        "deployed_policy": f"{label}: {identity}",
        "book": (f"{current.label} ({current.policy}) since {current.first_week}" if current is not None
                 else "the week was planned before books were recorded"),
    }
    report = storage.reports_dir / "weekly_rebalance.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        f"# Weekly rebalance, week of {last.week} ({last.broker} broker: {last.status})\n\n"
        f"Decided on data through {last.data_through}. Cross-sectional regime: {cross}.\n\n"
        f"## Regimes at the decision (most probable class, probability)\n\n{regimes.to_markdown(index=False)}\n\n"
        f"## Target weights (policy, then after the risk limits)\n\n"
        f"{weights.loc[(weights['target'] > 0) | (weights['after_limits'] > 0)].to_markdown(index=False, floatfmt='.4f')}\n\n"
        f"Limits that bound: {metadata['limits_bound']}\n\n"
        f"## Orders of the week\n\n{orders.to_markdown(index=False, floatfmt='.6g') if len(orders) else '(none)'}\n\n"
        f"Orders sent by this run: {metadata['orders_sent']}. Equity: {metadata['equity_usdt']:,.2f} USDT "
        f"(start {float(load_yaml('broker')['initial_cash_usdt']):,.2f}, {len(equity)} week(s) in the ledger).\n"
    )
    metadata["report"] = dg.MetadataValue.path(str(report))
    add_run_metadata(context, metadata)
    yield dg.MaterializeResult()

    if broker.mode == "paper" and (current is None or current.policy != identity):
        # The ledger's last week was traded by another policy (or before books were recorded):
        # its book was checked against that policy while it was deployed.
        yield dg.AssetCheckResult(check_name=TRACKING_CHECK, passed=True, metadata={
            "weeks": 0, "skipped": f"the ledger's current book was not traded by the deployed policy {identity}; "
                                   "the next week it trades starts a new book"})
    elif broker.mode == "paper":
        settings = load_yaml("broker")
        frame = tracking(trading.ledger, current, policy, data, limits)
        worst = float(frame["gap"].abs().max()) if len(frame) else 0.0
        tolerance = float(settings["paper_tracking_tolerance"])
        yield dg.AssetCheckResult(
            check_name=TRACKING_CHECK, passed=bool(worst <= tolerance),
            metadata={"weeks": len(frame), "largest_gap": worst, "tolerance": tolerance,
                      "book": f"{current.label} ({current.policy}) since {current.first_week}",
                      "last_ledger": float(frame["ledger"].iloc[-1]) if len(frame) else 1.0,
                      "last_backtest": float(frame["backtest"].iloc[-1]) if len(frame) else 1.0},
        )
    else:
        yield dg.AssetCheckResult(check_name=TRACKING_CHECK, passed=True,
                                  metadata={"skipped": f"only the paper book is checked (broker mode {broker.mode})"})
