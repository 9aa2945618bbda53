"""Daily regime features from daily bars: volatility, trend and cross-asset groups.

Pure functions (no Dagster). Every formula, window and unit is defined once in
``configs/features.yaml``; this module reads the windows from there.

Input: a ``daily_bars`` frame (:data:`regime_pipeline.core.data.bars.DAILY_BAR_COLUMNS`; one row per
listed (date, symbol), ``date`` a ``datetime.date``) covering ``[start - LOOKBACK, end)``.
Output: only dates in ``[start, end)``, sorted by (date, symbol), features float64, no NaN/inf.

Design rules, each tested in ``regime_pipeline_tests/test_features.py``:

* No look-ahead: the value for day d uses bars dated <= d only.
* Batch == single day, bit for bit: every window statistic is computed from the window's own
  values with element-wise numpy operations in a fixed order (a loop over the window's lags,
  vectorised over all days and assets) -- never with running sums (pandas ``rolling``) or
  numpy reductions over a window, whose rounding depends on where the series starts or on
  memory layout. The GARCH filter likewise runs over a fixed trailing window.
* Masking, not imputing: bars are laid out on a (calendar day x symbol) grid with NaN where
  there is no bar; a row is emitted only where the group's whole history window is present.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from arch import arch_model

from regime_pipeline.configs import load_yaml
from regime_pipeline.core.data.bars import OHLCV_COLUMNS, PRICE_COLUMNS
from regime_pipeline.core.errors import DataError

CONFIG: dict[str, Any] = load_yaml("features")
ANNUALIZATION_DAYS: int = int(CONFIG["annualization_days"])
_SQRT_YEAR = math.sqrt(ANNUALIZATION_DAYS)
_SOURCE = "daily_bars"

VOL_COLUMNS = ["realized_vol_20d", "garch_sigma", "har_daily", "har_weekly", "vol_ratio"]
TREND_COLUMNS = [
    "rate_of_change",
    "close_normalized",
    "momentum_50d",
    "return_skewness_30d",
    "trend_strength",
    "volume_trend",
]
CROSS_COLUMNS = ["n_assets", "avg_pairwise_corr", "btc_dominance", "vol_dispersion", "corr_stability"]


def _window(group: str, feature: str, key: str) -> int:
    """A window length (days or returns) from configs/features.yaml."""
    try:
        value = CONFIG[group]["features"][feature]["windows"][key]
    except KeyError as exc:
        raise KeyError(f"configs/features.yaml: no window {group}.{feature}.windows.{key}") from exc
    if not isinstance(value, int) or value < 1:
        raise ValueError(
            f"configs/features.yaml: {group}.{feature}.windows.{key} must be a positive int, got {value!r}"
        )
    return value


# Windows, read once. `*_RET` count returns (n returns need n + 1 closes), `*_DAYS` count bars.
RV_RET = _window("vol", "realized_vol_20d", "returns")
GARCH_RET = _window("vol", "garch_sigma", "returns")
HAR_D_DAYS = _window("vol", "har_daily", "days")
HAR_W_DAYS = _window("vol", "har_weekly", "days")
RATIO_SHORT_RET = _window("vol", "vol_ratio", "short_returns")
RATIO_LONG_RET = _window("vol", "vol_ratio", "long_returns")
ROC_DAYS = _window("trend", "rate_of_change", "days")
ZSCORE_DAYS = _window("trend", "close_normalized", "days")
MOM_DAYS = _window("trend", "momentum_50d", "days")
SKEW_RET = _window("trend", "return_skewness_30d", "returns")
TREND_DAYS = _window("trend", "trend_strength", "days")
VOLUME_SHORT_DAYS = _window("trend", "volume_trend", "short_days")
VOLUME_LONG_DAYS = _window("trend", "volume_trend", "long_days")
CORR_RET = _window("cross", "avg_pairwise_corr", "returns")
DOMINANCE_DAYS = _window("cross", "btc_dominance", "days")
DISPERSION_RET = _window("cross", "vol_dispersion", "returns")
STABILITY_DAYS = _window("cross", "corr_stability", "days")
GARCH_MIN_RETURNS: int = int(CONFIG["vol"]["features"]["garch_sigma"]["fit"]["min_returns"])
# Above this alpha + beta the unconditional variance omega / (1 - alpha - beta) is unusable
# (TRX's train fit has 1 - alpha - beta ~ 1e-13), so the filter starts from var0 instead.
GARCH_MAX_PERSISTENCE: float = float(CONFIG["vol"]["features"]["garch_sigma"]["start"]["max_persistence"])
CROSS_MIN_ASSETS: int = int(CONFIG["cross"]["min_assets"])
BTC_SYMBOL: str = str(CONFIG["cross"]["btc_symbol"])

# Bars each group needs on the days ending at d (returns windows need one close more).
_NEEDED = {
    "vol": max(RV_RET + 1, GARCH_RET + 1, HAR_D_DAYS, HAR_W_DAYS, RATIO_SHORT_RET + 1, RATIO_LONG_RET + 1),
    "trend": max(
        ROC_DAYS + 1, ZSCORE_DAYS, MOM_DAYS + 1, SKEW_RET + 1, TREND_DAYS, VOLUME_SHORT_DAYS, VOLUME_LONG_DAYS
    ),
    # The stability window looks at correlation windows ending on d-29 .. d: 30 + 29 returns.
    "cross": max(CORR_RET + STABILITY_DAYS, DISPERSION_RET + 1, DOMINANCE_DAYS),
}
MIN_HISTORY_DAYS: dict[str, int] = {}
for _group, _needed in _NEEDED.items():
    _stated = CONFIG[_group]["min_history_days"]
    if _stated != _needed:
        raise ValueError(
            f"configs/features.yaml: {_group}.min_history_days is {_stated} but its windows need {_needed} days"
        )
    MIN_HISTORY_DAYS[_group] = _needed

#: Days of bars before `start` that the feature functions need: ``bars`` must cover
#: ``[start - LOOKBACK, end)``. The longest group history plus a margin.
LOOKBACK_DAYS: int = max(MIN_HISTORY_DAYS.values()) + int(CONFIG["lookback_margin_days"])
LOOKBACK = dt.timedelta(days=LOOKBACK_DAYS)


def bars_window(start: dt.date, end: dt.date) -> tuple[dt.date, dt.date]:
    """The half-open date range ``[start - LOOKBACK, end)`` of bars needed for features in ``[start, end)``."""
    return start - LOOKBACK, end


# --------------------------------------------------------------------------------------
# GARCH parameters
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GarchParams:
    """GARCH(1,1) parameters of one asset, in return units (daily log returns, not percent).

    ``r_t = mu + eps_t``, ``sigma2_{t+1} = omega + alpha * eps_t^2 + beta * sigma2_t``.

    :param mu: mean daily log return
    :param omega: daily variance intercept (return units squared; arch's omega / 100^2)
    :param alpha: ARCH coefficient (dimensionless)
    :param beta: GARCH coefficient (dimensionless)
    :param var0: mean eps^2 over the fit window (return units squared). The filter starts from
        it only when ``alpha + beta >= GARCH_MAX_PERSISTENCE`` (config; no usable unconditional
        variance); may be None below that.
    """

    mu: float
    omega: float
    alpha: float
    beta: float
    var0: float | None = None

    def __post_init__(self) -> None:
        values = {"mu": self.mu, "omega": self.omega, "alpha": self.alpha, "beta": self.beta}
        if self.var0 is not None:
            values["var0"] = self.var0
        for name, value in values.items():
            if not math.isfinite(value):
                raise ValueError(f"GarchParams.{name} is not finite: {value!r}")
        if self.omega <= 0 or self.alpha < 0 or self.beta < 0:
            raise ValueError(f"GarchParams need omega > 0, alpha >= 0, beta >= 0: {self}")
        if self.var0 is not None and self.var0 <= 0:
            raise ValueError(f"GarchParams.var0 must be > 0: {self}")
        if self.persistence >= GARCH_MAX_PERSISTENCE and self.var0 is None:
            raise ValueError(
                f"GarchParams with alpha + beta = {self.persistence} >= {GARCH_MAX_PERSISTENCE} need var0: {self}"
            )

    @property
    def persistence(self) -> float:
        return self.alpha + self.beta

    @property
    def start_variance(self) -> float:
        """Where the windowed filter starts: omega / (1 - alpha - beta), or var0 for a near-integrated fit."""
        if self.persistence < GARCH_MAX_PERSISTENCE:
            return self.omega / (1.0 - self.persistence)
        assert self.var0 is not None  # guaranteed by __post_init__
        return self.var0

    def to_dict(self) -> dict[str, float | None]:
        return {"mu": self.mu, "omega": self.omega, "alpha": self.alpha, "beta": self.beta, "var0": self.var0}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GarchParams:
        var0 = data.get("var0")
        return cls(
            mu=float(data["mu"]),
            omega=float(data["omega"]),
            alpha=float(data["alpha"]),
            beta=float(data["beta"]),
            var0=None if var0 is None else float(var0),
        )


# --------------------------------------------------------------------------------------
# Input checks and the (day x symbol) grid
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Panel:
    """Bars on a full calendar grid: arrays of shape (T days, S symbols), NaN where no bar."""

    days: np.ndarray  # (T,) datetime64[D], consecutive calendar days
    symbols: list[str]  # (S,) sorted
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    @property
    def present(self) -> np.ndarray:
        return ~np.isnan(self.close)

    def log_returns(self) -> np.ndarray:
        """(T, S) r_t = ln(close_t / close_{t-1}); NaN on a first listed day or after a gap."""
        out = np.full_like(self.close, np.nan)
        out[1:] = np.log(self.close[1:] / self.close[:-1])
        return out


def _as_date(value: dt.date | pd.Timestamp | str, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return pd.Timestamp(value).date()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not a date: {value!r}") from exc


def _check_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Validate ``bars`` and return ``date (datetime64[ns]), symbol, open..volume``.

    Raises :class:`DataError` (a ValueError) naming the symbol and dates for a missing column,
    a NaN/inf value, a non-positive price, a negative volume or a duplicate (date, symbol).
    """
    missing = [c for c in ("date", "symbol", *OHLCV_COLUMNS) if c not in bars.columns]
    if missing:
        raise DataError(_SOURCE, f"missing columns {missing}")
    frame = bars[["date", "symbol", *OHLCV_COLUMNS]].copy()
    frame["date"] = pd.to_datetime(frame["date"])
    if frame["date"].isna().any():
        raise DataError(_SOURCE, f"{int(frame['date'].isna().sum())} rows without a date", field="date")
    if (frame["date"] != frame["date"].dt.normalize()).any():
        raise DataError(_SOURCE, "dates must be whole UTC days", field="date")

    def refuse(bad: np.ndarray, what: str, field: str | None = None) -> None:
        rows = frame.loc[bad, ["symbol", "date"]]
        symbol = rows["symbol"].iloc[0]
        dates = rows.loc[rows["symbol"] == symbol, "date"].dt.date.tolist()
        shown = ", ".join(str(d) for d in dates[:5]) + (f" (+{len(dates) - 5} more)" if len(dates) > 5 else "")
        raise DataError(_SOURCE, f"{what} for {symbol} on {shown}", field=field)

    values = frame[OHLCV_COLUMNS].to_numpy(dtype="float64", na_value=np.nan)
    for j, column in enumerate(OHLCV_COLUMNS):
        bad = ~np.isfinite(values[:, j])
        if bad.any():
            refuse(bad, "NaN or infinite value", column)
    for j, column in enumerate(PRICE_COLUMNS):
        bad = values[:, j] <= 0
        if bad.any():
            refuse(bad, "non-positive price", column)
    bad = values[:, 4] < 0
    if bad.any():
        refuse(bad, "negative volume", "volume")
    dup = frame.duplicated(["date", "symbol"]).to_numpy()
    if dup.any():
        refuse(dup, "duplicate (date, symbol) rows", "date")
    frame[OHLCV_COLUMNS] = values
    return frame


def _panel(bars: pd.DataFrame, start: dt.date, end: dt.date) -> _Panel:
    """Validated bars in ``[start - LOOKBACK, end)`` on a (calendar day x symbol) grid."""
    frame = _check_bars(bars)
    first = pd.Timestamp(start - LOOKBACK)
    frame = frame.loc[(frame["date"] >= first) & (frame["date"] < pd.Timestamp(end))]
    if frame.empty:
        empty = np.empty((0, 0))
        return _Panel(np.empty(0, "datetime64[D]"), [], empty, empty, empty, empty, empty)
    days = pd.date_range(frame["date"].min(), frame["date"].max(), freq="D")
    symbols = sorted(frame["symbol"].unique())
    grids = {}
    for column in OHLCV_COLUMNS:
        wide = frame.pivot(index="date", columns="symbol", values=column).reindex(index=days, columns=symbols)
        grids[column] = np.ascontiguousarray(wide.to_numpy(dtype="float64"))
    return _Panel(days.to_numpy().astype("datetime64[D]"), symbols, **grids)


# --------------------------------------------------------------------------------------
# Window statistics: loops over the window's lags, vectorised over (days, symbols)
# --------------------------------------------------------------------------------------


def _lagged(x: np.ndarray, n: int) -> list[np.ndarray]:
    """The n members of each trailing window of ``x`` (T, ...), oldest first.

    Item k has, at row t, ``x[t - (n - 1) + k]`` (NaN before the start), so item n-1 is ``x``
    itself. Arithmetic on these views is element-wise: each row's result depends on its own
    window only, in a fixed order.
    """
    pad = np.full((n - 1, *x.shape[1:]), np.nan)
    padded = np.concatenate([pad, x], axis=0)
    T = x.shape[0]
    return [padded[k : k + T] for k in range(n)]


def _lag(x: np.ndarray, k: int) -> np.ndarray:
    """``x`` shifted down by k rows (row t holds x[t - k]), NaN-padded."""
    out = np.full_like(x, np.nan)
    if k < x.shape[0]:
        out[k:] = x[: x.shape[0] - k]
    return out


def _window_sum(x: np.ndarray, n: int) -> np.ndarray:
    """Sum of the last n values, oldest to newest; NaN if any is missing."""
    views = _lagged(x, n)
    acc = views[0].copy()
    for v in views[1:]:
        acc += v
    return acc


def _center(views: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mean of a window given as its members (oldest first), and the deviations from it.

    Two-pass, with the values first taken relative to the newest one: a constant window then
    gives deviations of exactly 0 (a plain mean of n equal floats need not equal them), and
    large price levels lose no precision.
    """
    newest = views[-1]
    rel = [v - newest for v in views]
    mean_rel = rel[0].copy()
    for v in rel[1:]:
        mean_rel += v
    mean_rel /= len(views)
    return newest + mean_rel, [v - mean_rel for v in rel]


def _centered(x: np.ndarray, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """:func:`_center` of the trailing windows of n values of ``x``."""
    return _center(_lagged(x, n))


def _sum_powers(devs: list[np.ndarray], power: int) -> np.ndarray:
    """Sum of deviations squared (power 2) or cubed (power 3), oldest to newest."""
    acc = np.zeros_like(devs[0])
    for d in devs:
        acc += d * d if power == 2 else d * d * d
    return acc


def _window_std(x: np.ndarray, n: int) -> np.ndarray:
    """Sample std (ddof=1) of the last n values; exactly 0 for a constant window."""
    _, devs = _centered(x, n)
    return np.sqrt(_sum_powers(devs, 2) / (n - 1))


def _safe_div(num: np.ndarray, den: np.ndarray, where_zero: float) -> np.ndarray:
    """num / den, with ``where_zero`` where den == 0 (NaN stays NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(den == 0, where_zero, out)


def garch_variance(
    eps: np.ndarray, omega: np.ndarray, alpha: np.ndarray, beta: np.ndarray, start_var: np.ndarray, window: int
) -> np.ndarray:
    """Windowed GARCH(1,1) one-step forecasts sigma2_{t+1} for every t, vectorised.

    For each row t the recursion ``s = omega + alpha * eps_k^2 + beta * s`` runs over
    ``eps_{t-window+1} .. eps_t`` from ``s = start_var``: the finite weighted sum
    ``omega * sum_k beta^k + alpha * sum_k beta^k eps_{t-k}^2 + beta^window * start_var``
    evaluated by Horner's rule, so it equals a plain loop bit for bit and row t depends on
    its own window only.

    :param eps: (T, S) residuals r - mu (return units), NaN where missing
    :param omega, alpha, beta, start_var: (S,) per-asset parameters
    :return: (T, S) variance forecasts (return units squared); NaN where the window is incomplete
    """
    sq = eps * eps
    s = np.broadcast_to(start_var, eps.shape).astype("float64").copy()
    for view in _lagged(sq, window):
        s = omega + alpha * view + beta * s
    return s


# --------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------


def _empty(columns: list[str], per_symbol: bool) -> pd.DataFrame:
    out = {"date": pd.Series(dtype="object")}
    if per_symbol:
        out["symbol"] = pd.Series(dtype="object")
    for c in columns:
        out[c] = pd.Series(dtype="int64" if c == "n_assets" else "float64")
    return pd.DataFrame(out)


def _in_range(panel: _Panel, start: dt.date, end: dt.date) -> np.ndarray:
    """(T,) bool: the grid days inside [start, end)."""
    return (panel.days >= np.datetime64(start, "D")) & (panel.days < np.datetime64(end, "D"))


def _has_history(panel: _Panel, days: int) -> np.ndarray:
    """(T, S) bool: a bar on every one of the `days` days ending at t (exact integer counts)."""
    counts = np.cumsum(panel.present, axis=0, dtype=np.int64)
    before = np.zeros_like(counts)
    if days < counts.shape[0]:
        before[days:] = counts[:-days]
    return (counts - before) == days


def _dates(days: np.ndarray) -> np.ndarray:
    return pd.DatetimeIndex(days).date


def _assert_finite(frame: pd.DataFrame, columns: list[str], group: str) -> None:
    """Raise naming the feature and first (date, symbol) if the output holds NaN or inf."""
    for column in columns:
        bad = ~np.isfinite(frame[column].to_numpy(dtype="float64"))
        if bad.any():
            row = frame.loc[bad].iloc[0]
            where = f"{row['date']}" + (f" {row['symbol']}" if "symbol" in frame.columns else "")
            raise ValueError(
                f"{group} feature {column!r} is not finite ({row[column]!r}) on {where} "
                f"and {int(bad.sum()) - 1} more rows"
            )


def _per_symbol_frame(panel: _Panel, mask: np.ndarray, features: dict[str, np.ndarray], group: str) -> pd.DataFrame:
    """Rows where ``mask`` (T, S) holds, row-major so sorted by (date, symbol)."""
    t_idx, s_idx = np.nonzero(mask)
    out = pd.DataFrame(
        {
            "date": _dates(panel.days[t_idx]),
            "symbol": np.asarray(panel.symbols, dtype=object)[s_idx],
            **{name: np.asarray(values[t_idx, s_idx], dtype="float64") for name, values in features.items()},
        }
    )
    _assert_finite(out, list(features), group)
    return out


def _check_range(start: dt.date, end: dt.date) -> tuple[dt.date, dt.date]:
    start, end = _as_date(start, "start"), _as_date(end, "end")
    if not start < end:
        raise ValueError(f"empty date range: start {start} must be before end {end}")
    return start, end


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def fit_garch(bars: pd.DataFrame, start: dt.date, end: dt.date) -> dict[str, GarchParams]:
    """Fit GARCH(1,1) per asset on the log returns dated in ``[start, end)`` (the train window).

    Uses ``arch_model(100 * r, mean='Constant', vol='GARCH', p=1, q=1, dist='normal')`` (percent
    returns for the optimiser) and converts back to return units: ``mu = mu% / 100``,
    ``omega = omega% / 100^2``; alpha and beta are unit-free. ``var0`` is the fit window's mean
    of (r - mu)^2. A return dated ``start`` uses the close of ``start - 1 day`` if the bars have it.

    :param bars: daily bars of every symbol to fit (any span; only returns in the window are used)
    :return: ``{symbol: GarchParams}`` for every symbol in ``bars``
    :raises ValueError: an asset with fewer than ``min_returns`` (config) returns in the window,
        naming the asset and its count; a fit that does not converge
    """
    start, end = _check_range(start, end)
    checked = _check_bars(bars)
    all_symbols = sorted(checked["symbol"].unique())
    window = (checked["date"] >= pd.Timestamp(start - dt.timedelta(days=1))) & (checked["date"] < pd.Timestamp(end))
    frame = checked.loc[window]
    params: dict[str, GarchParams] = {}
    for symbol in all_symbols:
        one = frame.loc[frame["symbol"] == symbol].set_index("date")["close"].sort_index()
        # A return needs yesterday's close: across a gap in the bars there is none.
        one = one.reindex(pd.date_range(one.index.min(), one.index.max(), freq="D")) if len(one) else one
        returns = np.log(one / one.shift(1))
        returns = returns.loc[returns.index >= pd.Timestamp(start)].dropna()
        if len(returns) < GARCH_MIN_RETURNS:
            raise ValueError(
                f"fit_garch: {symbol} has {len(returns)} log returns in [{start}, {end}); "
                f"at least {GARCH_MIN_RETURNS} are needed (configs/features.yaml vol.garch_sigma.fit.min_returns)"
            )
        model = arch_model(
            100.0 * returns.to_numpy(), mean="Constant", vol="GARCH", p=1, q=1, dist="normal", rescale=False
        )
        result = model.fit(disp="off")
        if result.convergence_flag != 0:
            raise ValueError(
                f"fit_garch: the GARCH fit of {symbol} did not converge: {result.optimization_result.message}"
            )
        p = result.params
        mu = float(p["mu"]) / 100.0
        eps = returns.to_numpy() - mu
        params[symbol] = GarchParams(
            mu=mu,
            omega=float(p["omega"]) / 1e4,
            alpha=float(p["alpha[1]"]),
            beta=float(p["beta[1]"]),
            var0=float(np.mean(eps * eps)),
        )
    return params


def fit_garch_pooled(
    bars: pd.DataFrame, start: dt.date, end: dt.date, symbols: Sequence[str] | None = None
) -> tuple[dict[str, GarchParams], list[str]]:
    """:func:`fit_garch` for the assets with ``min_returns`` returns in ``[start, end)``; every other
    asset of `symbols` (listed too late to fit) gets the median of the fitted assets' parameters.

    :return: ``(params for every symbol of `symbols` and of `bars`, the symbols that took the median)``
    """
    start, end = _check_range(start, end)
    inside = bars.loc[(bars["date"] >= start - dt.timedelta(days=1)) & (bars["date"] < end)]
    counts = inside.groupby("symbol")["date"].size() - 1
    enough = sorted(s for s, n in counts.items() if n >= GARCH_MIN_RETURNS)
    if not enough:
        raise ValueError(f"fit_garch_pooled: no asset has {GARCH_MIN_RETURNS} returns in [{start}, {end})")
    fitted = fit_garch(bars.loc[bars["symbol"].isin(enough)], start, end)
    table = pd.DataFrame({s: p.to_dict() for s, p in fitted.items()}).T.astype(float)
    median = GarchParams.from_dict(table.median().to_dict())
    pooled = sorted((set(symbols or []) | set(bars["symbol"])) - set(fitted))
    return {**fitted, **{s: median for s in pooled}}, pooled


def vol_features(
    bars: pd.DataFrame, garch_params: Mapping[str, GarchParams], start: dt.date, end: dt.date
) -> pd.DataFrame:
    """Volatility features per (date, symbol) for dates in ``[start, end)``.

    :param bars: daily bars covering ``[start - LOOKBACK, end)``
    :param garch_params: parameters of every symbol in those bars (``fit_garch`` on train)
    :return: columns ``date, symbol, realized_vol_20d, garch_sigma, har_daily, har_weekly,
        vol_ratio``; vols annualised fractions, vol_ratio unit-free; one row per (date,
        symbol) with a bar on each of the last ``min_history_days["vol"]`` days
    """
    start, end = _check_range(start, end)
    panel = _panel(bars, start, end)
    if not panel.symbols:
        return _empty(VOL_COLUMNS, per_symbol=True)
    missing = [s for s in panel.symbols if s not in garch_params]
    if missing:
        raise ValueError(f"vol_features: no GARCH parameters for {missing} (fit_garch on the train window)")
    params = [garch_params[s] for s in panel.symbols]
    if GARCH_RET and max(p.beta for p in params) ** GARCH_RET > 1e-3:
        warnings.warn(
            f"garch beta^{GARCH_RET} > 1e-3: the filter's start value still weighs on garch_sigma; "
            "consider a longer vol.garch_sigma window",
            stacklevel=2,
        )

    r = panel.log_returns()
    mu = np.array([p.mu for p in params])
    sigma2 = garch_variance(
        r - mu,
        omega=np.array([p.omega for p in params]),
        alpha=np.array([p.alpha for p in params]),
        beta=np.array([p.beta for p in params]),
        start_var=np.array([p.start_variance for p in params]),
        window=GARCH_RET,
    )
    # Parkinson range variance of each day (daily units).
    rv = np.log(panel.high / panel.low) ** 2 / (4.0 * math.log(2.0))
    # A constant price (long std 0) means no change in vol: ratio 1.
    ratio = _safe_div(_window_std(r, RATIO_SHORT_RET), _window_std(r, RATIO_LONG_RET), where_zero=1.0)
    features = {
        "realized_vol_20d": _window_std(r, RV_RET) * _SQRT_YEAR,
        "garch_sigma": np.sqrt(ANNUALIZATION_DAYS * sigma2),
        "har_daily": np.sqrt(ANNUALIZATION_DAYS * (_window_sum(rv, HAR_D_DAYS) / HAR_D_DAYS)),
        "har_weekly": np.sqrt(ANNUALIZATION_DAYS * (_window_sum(rv, HAR_W_DAYS) / HAR_W_DAYS)),
        "vol_ratio": ratio,
    }
    mask = _has_history(panel, MIN_HISTORY_DAYS["vol"]) & _in_range(panel, start, end)[:, None]
    return _per_symbol_frame(panel, mask, features, "vol")


def _skewness(x: np.ndarray, n: int) -> np.ndarray:
    """Adjusted sample skewness G1 of the last n values; 0 for a zero-variance window."""
    _, devs = _centered(x, n)
    m2 = _sum_powers(devs, 2) / n
    m3 = _sum_powers(devs, 3) / n
    # m2 * sqrt(m2) rather than m2 ** 1.5: sqrt is correctly rounded everywhere, pow is not.
    g1 = _safe_div(m3, m2 * np.sqrt(m2), where_zero=0.0)
    return g1 * (math.sqrt(n * (n - 1)) / (n - 2))


def _trend_strength(log_close: np.ndarray, n: int) -> np.ndarray:
    """sign(slope) * R^2 of OLS ln(close) ~ time over the last n days; 0 for a constant window."""
    _, devs = _centered(log_close, n)
    times = [k - (n - 1) / 2.0 for k in range(n)]  # centred: sum to exactly 0
    s_ty = np.zeros_like(devs[0])
    s_yy = np.zeros_like(devs[0])
    for t, d in zip(times, devs):
        s_ty += t * d
        s_yy += d * d
    s_tt = sum(t * t for t in times)
    r2 = np.minimum(_safe_div(s_ty * s_ty, s_tt * s_yy, where_zero=0.0), 1.0)  # rounding can exceed 1
    return np.sign(s_ty) * r2


def trend_features(bars: pd.DataFrame, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Trend features per (date, symbol) for dates in ``[start, end)``.

    :param bars: daily bars covering ``[start - LOOKBACK, end)``
    :return: columns ``date, symbol, rate_of_change, close_normalized, momentum_50d,
        return_skewness_30d, trend_strength, volume_trend`` (units in configs/features.yaml);
        one row per (date, symbol) with a bar on each of the last ``min_history_days["trend"]`` days
    """
    start, end = _check_range(start, end)
    panel = _panel(bars, start, end)
    if not panel.symbols:
        return _empty(TREND_COLUMNS, per_symbol=True)
    close = panel.close
    r = panel.log_returns()
    _, devs_z = _centered(close, ZSCORE_DAYS)
    std_z = np.sqrt(_sum_powers(devs_z, 2) / (ZSCORE_DAYS - 1))
    # close - mean = the newest deviation (exactly 0 for a constant window).
    zscore = _safe_div(devs_z[-1], std_z, where_zero=0.0)
    vol_short = _window_sum(panel.volume, VOLUME_SHORT_DAYS) / VOLUME_SHORT_DAYS
    vol_long = _window_sum(panel.volume, VOLUME_LONG_DAYS) / VOLUME_LONG_DAYS
    features = {
        "rate_of_change": close / _lag(close, ROC_DAYS) - 1.0,
        "close_normalized": zscore,
        "momentum_50d": close / _lag(close, MOM_DAYS) - 1.0,
        "return_skewness_30d": _skewness(r, SKEW_RET),
        "trend_strength": _trend_strength(np.log(close), TREND_DAYS),
        "volume_trend": _safe_div(vol_short, vol_long, where_zero=1.0) - 1.0,
    }
    mask = _has_history(panel, MIN_HISTORY_DAYS["trend"]) & _in_range(panel, start, end)[:, None]
    return _per_symbol_frame(panel, mask, features, "trend")


def _sum_over_columns(x: np.ndarray) -> np.ndarray:
    """Row sums of (T, K) in column order: a cumulative sum is strictly sequential, so the
    rounding does not depend on T or the memory layout (unlike ``np.sum``)."""
    if x.shape[1] == 0:
        return np.zeros(x.shape[0])
    return np.cumsum(x, axis=1)[:, -1]


def _member_grid(panel: _Panel, members: pd.DataFrame) -> np.ndarray:
    """(T, S) True where the asset is a member of the universe that day."""
    days = pd.to_datetime(members["date"]).to_numpy().astype("datetime64[D]")
    rows = np.searchsorted(panel.days, days)
    cols = pd.Index(panel.symbols).get_indexer(members["symbol"])
    inside = (rows < panel.days.size) & (cols >= 0)
    inside[inside] &= panel.days[rows[inside]] == days[inside]
    grid = np.zeros((panel.days.size, len(panel.symbols)), dtype=bool)
    grid[rows[inside], cols[inside]] = True
    return grid


def cross_features(
    bars: pd.DataFrame, start: dt.date, end: dt.date, members: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Market-wide features per date for dates in ``[start, end)``.

    :param bars: daily bars of the candidates covering ``[start - LOOKBACK, end)``; must include BTC
    :param members: ``date, symbol`` of the universe's members per day (the `universe` table's
        member rows); None: every asset of `bars` is a member on every day it has a bar
    :return: columns ``date, n_assets (int64), avg_pairwise_corr, btc_dominance, vol_dispersion,
        corr_stability``; one row per date with at least ``min_assets`` eligible assets
        (members that day with a bar on each of the last ``min_history_days["cross"]`` days),
        BTC among them
    """
    start, end = _check_range(start, end)
    panel = _panel(bars, start, end)
    if not panel.symbols:
        return _empty(CROSS_COLUMNS, per_symbol=False)
    if BTC_SYMBOL not in panel.symbols:
        raise ValueError(f"cross_features: btc_dominance needs {BTC_SYMBOL} bars in [{start - LOOKBACK}, {end})")
    btc = panel.symbols.index(BTC_SYMBOL)
    eligible = _has_history(panel, MIN_HISTORY_DAYS["cross"])  # (T, S)
    if members is not None:
        eligible &= _member_grid(panel, members)
    n_assets = eligible.sum(axis=1)  # integer counts: exact
    r = panel.log_returns()

    # Pearson correlation of every pair over each trailing window of CORR_RET returns.
    S = len(panel.symbols)
    ii, jj = np.triu_indices(S, k=1)
    _, devs = _centered(r, CORR_RET)
    cov = np.zeros((r.shape[0], len(ii)))
    var = np.zeros_like(r)
    for d in devs:
        cov += d[:, ii] * d[:, jj]
        var += d * d
    # A zero-variance asset is uncorrelated by convention (documented), not NaN.
    corr = np.clip(_safe_div(cov, np.sqrt(var[:, ii] * var[:, jj]), where_zero=0.0), -1.0, 1.0)

    # Average over the pairs eligible on d, of the correlations ending on d - k, k < STABILITY_DAYS.
    pair_ok = eligible[:, ii] & eligible[:, jj]  # (T, P)
    n_pairs = pair_ok.sum(axis=1)
    daily_avg = []  # oldest first; item k: the average over day d's pairs of corr on d - (n-1) + k
    for view in _lagged(corr, STABILITY_DAYS):
        total = _sum_over_columns(np.where(pair_ok, view, 0.0))
        daily_avg.append(_safe_div(total, n_pairs.astype("float64"), where_zero=0.0))
    avg_corr = daily_avg[-1]
    _, avg_devs = _center(daily_avg)
    ss = _sum_powers(avg_devs, 2)
    corr_stability = 1.0 - np.sqrt(ss / (STABILITY_DAYS - 1))

    # BTC's share of the eligible assets' quote volume over the last DOMINANCE_DAYS days.
    quote_volume = _window_sum(panel.volume * panel.close, DOMINANCE_DAYS)
    total_qv = _sum_over_columns(np.where(eligible, quote_volume, 0.0))
    dominance = _safe_div(quote_volume[:, btc], total_qv, where_zero=0.0)

    # Cross-sectional std of realized_vol_20d over the eligible assets.
    rv20 = _window_std(r, DISPERSION_RET) * _SQRT_YEAR
    n = n_assets.astype("float64")
    mean_rv = _safe_div(_sum_over_columns(np.where(eligible, rv20, 0.0)), n, where_zero=0.0)
    dev = np.where(eligible, rv20 - mean_rv[:, None], 0.0)
    dispersion = np.sqrt(_safe_div(_sum_over_columns(dev * dev), n - 1.0, where_zero=0.0))

    keep = (n_assets >= CROSS_MIN_ASSETS) & eligible[:, btc] & _in_range(panel, start, end)
    out = pd.DataFrame(
        {
            "date": _dates(panel.days[keep]),
            "n_assets": n_assets[keep].astype("int64"),
            "avg_pairwise_corr": avg_corr[keep],
            "btc_dominance": dominance[keep],
            "vol_dispersion": dispersion[keep],
            "corr_stability": corr_stability[keep],
        }
    )
    _assert_finite(out, CROSS_COLUMNS, "cross")
    return out
