"""Volatility forecasts per asset -- naive, GARCH(1,1), HAR-RV, LightGBM -- and their scores.

Pure functions (no Dagster). Horizons, windows, model settings and the target are defined
once in ``configs/forecasts.yaml``.

The target (see the config): for day d and horizon h, the realized volatility of the next h
days from DAILY log returns, ``rv_h(d) = sqrt(mean(r_{d+1}^2 .. r_{d+h}^2))``, in daily vol
units (a fraction, not annualised). The embedded data has daily bars only (1-minute bars for
a few windows), so there is no intraday realized variance: the proxy is the squared daily
return. Every forecast for day d uses bars dated <= d and models fitted on train only.

* :func:`fit_models` fits the HAR regressions (per asset and horizon) and the LightGBM models
  (per horizon, pooled across assets) on the rows whose inputs AND targets lie in one window
  (the train split); GARCH parameters come from ``features.fit_garch``.
* :func:`forecast` gives every model's forecast per (date, symbol, horizon).
* :func:`realized` gives the targets, :func:`evaluate` RMSE and QLIKE against them.

Like ``core/features/daily.py``, every trailing window is summed element-wise in a fixed order over
the window's lags, so a day's forecast is the same bit for bit computed alone or in a batch.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from regime_pipeline.configs import load_yaml
from regime_pipeline.core.errors import DataError
from regime_pipeline.core.features.daily import ANNUALIZATION_DAYS, VOL_COLUMNS, GarchParams

CONFIG: dict[str, Any] = load_yaml("forecasts")
HORIZONS: tuple[int, ...] = tuple(int(h) for h in CONFIG["horizons_days"])
HAR_WINDOWS: tuple[int, ...] = tuple(int(n) for n in CONFIG["har"]["windows_days"])
MODELS: tuple[str, ...] = ("naive", "garch", "har", "lgbm")
#: The HAR components, daily vol units: ``rv_<n>d`` = sqrt(mean of the last n squared returns).
RV_COLUMNS: list[str] = [f"rv_{n}d" for n in HAR_WINDOWS]
LGBM_FEATURES: list[str] = list(CONFIG["lgbm"]["features"])
FLOOR_DAILY_VOL: float = float(CONFIG["evaluation"]["floor_daily_vol"])
#: Columns of :func:`forecast`'s output.
FORECAST_COLUMNS: list[str] = ["date", "symbol", "horizon_days", *MODELS]

_unknown = sorted(set(LGBM_FEATURES) - set(VOL_COLUMNS) - set(RV_COLUMNS))
if _unknown:
    raise ValueError(f"configs/forecasts.yaml: lgbm.features {_unknown} are neither vol features nor HAR components")
if len(HAR_WINDOWS) != 3 or any(n < 1 for n in HAR_WINDOWS) or any(h < 1 for h in HORIZONS):
    raise ValueError("configs/forecasts.yaml: har.windows_days must be 3 positive windows, horizons_days positive")

#: Fewest (date, horizon) rows an asset needs in the fit window: 10 per HAR coefficient.
MIN_FIT_ROWS = 40
#: Days of bars before `start` that :func:`forecast` needs: n returns take n + 1 closes, so
#: the longest HAR window (or naive horizon) of n returns ending on d needs bars d - n .. d.
LOOKBACK_DAYS: int = max(*HAR_WINDOWS, *HORIZONS)
_SOURCE = "daily_bars"


# --------------------------------------------------------------------------------------
# Returns on a (calendar day x symbol) grid and trailing windows
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Squared daily log returns on a full calendar: (T days, S symbols), NaN where no return."""

    days: np.ndarray  # (T,) datetime64[D], consecutive
    symbols: list[str]  # (S,) sorted
    r2: np.ndarray  # (T, S) r_t^2; NaN on a first listed day, after a gap, or without a bar


def _grid(bars: pd.DataFrame, first: dt.date, end: dt.date) -> _Grid:
    """The squared returns of the bars dated in ``[first, end)`` (a return needs both closes there)."""
    missing = [c for c in ("date", "symbol", "close") if c not in bars.columns]
    if missing:
        raise DataError(_SOURCE, f"missing columns {missing}")
    frame = bars[["date", "symbol", "close"]].assign(date=pd.to_datetime(bars["date"]))
    frame = frame.loc[(frame["date"] >= pd.Timestamp(first)) & (frame["date"] < pd.Timestamp(end))]
    close = frame["close"].to_numpy(dtype="float64")
    bad = ~np.isfinite(close) | (close <= 0)
    if bad.any():
        row = frame.loc[bad].iloc[0]
        raise DataError(_SOURCE, f"non-finite or non-positive close for {row['symbol']} on {row['date'].date()}", field="close")
    if frame.duplicated(["date", "symbol"]).any():
        row = frame.loc[frame.duplicated(["date", "symbol"])].iloc[0]
        raise DataError(_SOURCE, f"duplicate bar for {row['symbol']} on {row['date'].date()}", field="date")
    if frame.empty:
        return _Grid(np.empty(0, "datetime64[D]"), [], np.empty((0, 0)))
    days = pd.date_range(frame["date"].min(), frame["date"].max(), freq="D")
    symbols = sorted(frame["symbol"].unique())
    wide = frame.pivot(index="date", columns="symbol", values="close").reindex(index=days, columns=symbols)
    c = np.ascontiguousarray(wide.to_numpy(dtype="float64"))
    r = np.full_like(c, np.nan)
    r[1:] = np.log(c[1:] / c[:-1])
    return _Grid(days.to_numpy().astype("datetime64[D]"), symbols, r * r)


def trailing_mean(x: np.ndarray, n: int) -> np.ndarray:
    """(T, S) mean of ``x[t-n+1] .. x[t]`` (oldest first, element-wise), NaN if any is missing.

    A loop over the window's lags rather than a running sum, so row t depends on its own
    window only and a day alone equals the same day in a batch, bit for bit.
    """
    T = x.shape[0]
    acc = np.full_like(x, np.nan)
    if n > T:
        return acc
    acc[n - 1 :] = x[: T - n + 1]
    for k in range(1, n):
        acc[n - 1 :] += x[k : T - n + 1 + k]
    return acc / n


def _future(x: np.ndarray, h: int) -> np.ndarray:
    """``x`` shifted up by h rows (row t holds x[t + h]), NaN-padded at the end."""
    out = np.full_like(x, np.nan)
    if h < x.shape[0]:
        out[: x.shape[0] - h] = x[h:]
    return out


def _long(days: np.ndarray, symbols: Sequence[str], values: Mapping[str, np.ndarray], mask: np.ndarray) -> pd.DataFrame:
    """Rows (date, symbol) where ``mask`` (T, S) holds, sorted by (date, symbol)."""
    t, s = np.nonzero(mask)
    return pd.DataFrame({
        "date": pd.DatetimeIndex(days[t]).date,
        "symbol": np.asarray(symbols, dtype=object)[s],
        **{name: np.asarray(v[t, s], dtype="float64") for name, v in values.items()},
    })


def _in_range(days: np.ndarray, start: dt.date, end: dt.date) -> np.ndarray:
    return (days >= np.datetime64(start, "D")) & (days < np.datetime64(end, "D"))


def _dates(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with ``date`` as ``datetime.date`` (the warehouse may hand back timestamps)."""
    return frame.assign(date=pd.to_datetime(frame["date"]).dt.date)


# --------------------------------------------------------------------------------------
# Inputs and targets
# --------------------------------------------------------------------------------------


def realized(bars: pd.DataFrame, start: dt.date, end: dt.date) -> pd.DataFrame:
    """The targets ``rv_h(d)`` of every day d in ``[start, end)`` whose next h returns lie in it.

    Only bars dated in ``[start, end)`` are used, so a target never reaches past the window:
    a split's last h days have no h-day target in that split.

    :param bars: daily bars (``date, symbol, close``)
    :return: ``date, symbol, horizon_days (int64), realized`` (daily vol, fraction), sorted by
        (horizon_days, date, symbol); no NaN rows
    """
    grid = _grid(bars, start, end)
    frames = []
    for h in HORIZONS:
        if not grid.symbols:
            break
        target = np.sqrt(_future(trailing_mean(grid.r2, h), h))
        frame = _long(grid.days, grid.symbols, {"realized": target}, np.isfinite(target))
        frames.append(frame.assign(horizon_days=h))
    if not frames:
        return pd.DataFrame({"date": pd.Series(dtype="object"), "symbol": pd.Series(dtype="object"),
                             "horizon_days": pd.Series(dtype="int64"), "realized": pd.Series(dtype="float64")})
    out = pd.concat(frames, ignore_index=True)[["date", "symbol", "horizon_days", "realized"]]
    return out.astype({"horizon_days": "int64"})


def inputs(bars: pd.DataFrame, vol_features: pd.DataFrame, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Per (date, symbol) with d in ``[start, end)``: the vol features of d, the HAR
    components ``rv_<n>d`` and the naive forecasts ``naive_h<h>`` (daily vol), from bars <= d.

    :param bars: daily bars covering ``[start - LOOKBACK_DAYS, end)``; earlier and later bars
        are ignored
    :param vol_features: the ``vol_features`` rows (columns ``date, symbol`` and
        ``features.VOL_COLUMNS``), at least for ``[start, end)``
    :return: one row per (date, symbol) that has a vol features row and every component
        (late listings and gaps: absent rows, never NaN), sorted by (date, symbol)
    """
    grid = _grid(bars, start - dt.timedelta(days=LOOKBACK_DAYS), end)
    columns: dict[str, np.ndarray] = {}
    if grid.symbols:
        means = {n: trailing_mean(grid.r2, n) for n in sorted({*HAR_WINDOWS, *HORIZONS})}
        columns = {f"rv_{n}d": np.sqrt(means[n]) for n in HAR_WINDOWS}
        columns |= {f"naive_h{h}": np.sqrt(means[h]) for h in HORIZONS}
        mask = np.isfinite(np.stack(list(columns.values()))).all(axis=0) & _in_range(grid.days, start, end)[:, None]
        components = _long(grid.days, grid.symbols, columns, mask)
    else:
        components = pd.DataFrame(columns=["date", "symbol", *RV_COLUMNS, *(f"naive_h{h}" for h in HORIZONS)])
    features = _dates(vol_features[["date", "symbol", *VOL_COLUMNS]])
    features = features.loc[(features["date"] >= start) & (features["date"] < end)]
    out = features.merge(components, on=["date", "symbol"], how="inner")
    return out.sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def garch_variance_path(sigma2_next: np.ndarray, params: GarchParams, horizon: int) -> np.ndarray:
    """Expected conditional variances ``E_d[sigma2_{d+k}]``, k = 1 .. horizon, of GARCH(1,1).

    ``E_d[sigma2_{d+k}] = omega + (alpha + beta) * E_d[sigma2_{d+k-1}]`` for k >= 2 (the
    expected eps^2 is the expected variance), as ``arch``'s analytic forecast.

    :param sigma2_next: (n,) ``sigma2_{d+1}``, known at the close of d (daily return units^2)
    :return: (n, horizon) variances in daily return units squared
    """
    path = np.empty((len(sigma2_next), horizon))
    path[:, 0] = sigma2_next
    for k in range(1, horizon):
        path[:, k] = params.omega + params.persistence * path[:, k - 1]
    return path


def _garch_forecast(rows: pd.DataFrame, garch_params: Mapping[str, GarchParams], h: int) -> np.ndarray:
    """sqrt(mean_k E[sigma2_{d+k}] + mu^2) per row, from the row's garch_sigma (annualised)."""
    out = np.full(len(rows), np.nan)
    for symbol, index in rows.groupby("symbol", sort=False).indices.items():
        p = garch_params[symbol]
        sigma = rows["garch_sigma"].to_numpy()[index]
        path = garch_variance_path(sigma * sigma / ANNUALIZATION_DAYS, p, h)
        total = path[:, 0].copy()
        for k in range(1, h):  # fixed order: the same sum whatever the batch
            total += path[:, k]
        out[index] = np.sqrt(total / h + p.mu * p.mu)
    return out


def har_design(rows: pd.DataFrame) -> np.ndarray:
    """(n, 4) HAR regressors: a constant and the components ``rv_1d, rv_7d, rv_30d``."""
    return np.column_stack([np.ones(len(rows)), rows[RV_COLUMNS].to_numpy(dtype="float64")])


def _har_predict(rows: pd.DataFrame, coef: np.ndarray) -> np.ndarray:
    # b0 + b1 x1 + ... element-wise, not a matrix product: a BLAS product may sum in an order
    # that depends on the number of rows, and a day must not change with its batch.
    out = np.full(len(rows), coef[0])
    for b, column in zip(coef[1:], RV_COLUMNS):
        out = out + b * rows[column].to_numpy(dtype="float64")
    # A linear fit can go below zero on a quiet day after a violent train window (LUNA, fitted
    # across its collapse): a volatility is not negative.
    return np.maximum(out, 0.0)


@dataclass(frozen=True)
class VolForecastModels:
    """The fitted HAR and LightGBM models (GARCH parameters live in ``garch_params``).

    :param har: ``{horizon: {symbol: (4,) [b0, b_1d, b_7d, b_30d]}}``, daily vol units
    :param lgbm: ``{horizon: LightGBM model text}`` (``Booster.model_to_string``)
    :param fit_start, fit_end: the window ``[fit_start, fit_end)`` the models were fitted on
    :param n_rows: ``{horizon: {symbol: rows}}`` used by each HAR fit (the LightGBM fit pools them)
    """

    har: dict[int, dict[str, np.ndarray]]
    lgbm: dict[int, str]
    fit_start: dt.date
    fit_end: dt.date
    n_rows: dict[int, dict[str, int]]

    def booster(self, horizon: int):
        import lightgbm as lgb  # heavy import, only paid by code that forecasts

        return lgb.Booster(model_str=self.lgbm[horizon])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lists, strings and ISO dates (no pickle)."""
        return {
            "har": {str(h): {s: [float(b) for b in c] for s, c in by.items()} for h, by in self.har.items()},
            "lgbm": {str(h): text for h, text in self.lgbm.items()},
            "fit_start": self.fit_start.isoformat(),
            "fit_end": self.fit_end.isoformat(),
            "n_rows": {str(h): dict(by) for h, by in self.n_rows.items()},
            "lgbm_features": LGBM_FEATURES,
            "har_columns": ["const", *RV_COLUMNS],
            "target": " ".join(CONFIG["target"]["description"].split()),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VolForecastModels:
        if list(data["lgbm_features"]) != LGBM_FEATURES:
            raise ValueError(
                f"vol forecast models were fitted on {data['lgbm_features']}, the config lists {LGBM_FEATURES}: refit them"
            )
        if sorted(int(h) for h in data["lgbm"]) != sorted(HORIZONS):
            raise ValueError(f"vol forecast models have horizons {sorted(data['lgbm'])}, the config lists {HORIZONS}: refit them")
        return cls(
            har={int(h): {s: np.asarray(c, dtype="float64") for s, c in by.items()} for h, by in data["har"].items()},
            lgbm={int(h): str(text) for h, text in data["lgbm"].items()},
            fit_start=dt.date.fromisoformat(data["fit_start"]),
            fit_end=dt.date.fromisoformat(data["fit_end"]),
            n_rows={int(h): {s: int(n) for s, n in by.items()} for h, by in data["n_rows"].items()},
        )


def training_rows(bars: pd.DataFrame, vol_features: pd.DataFrame, start: dt.date, end: dt.date) -> pd.DataFrame:
    """The inputs joined with their targets, using bars and features dated in ``[start, end)`` only.

    A row (d, symbol, h) needs its HAR components and its target inside the window: the first
    ``max(har windows)`` days and the last h days of the window drop out, so nothing outside
    the fit window (the train split) reaches the fit.

    :return: ``inputs`` columns plus ``horizon_days`` and ``realized``, sorted by
        (horizon_days, date, symbol)
    """
    window_bars = bars.loc[(pd.to_datetime(bars["date"]) >= pd.Timestamp(start)) & (pd.to_datetime(bars["date"]) < pd.Timestamp(end))]
    x = inputs(window_bars, vol_features, start, end)
    y = realized(window_bars, start, end)
    return y.merge(x, on=["date", "symbol"], how="inner").sort_values(["horizon_days", "date", "symbol"], kind="stable")


def fit_har(rows: pd.DataFrame) -> np.ndarray:
    """OLS of ``realized`` on :func:`har_design` (least squares, ``np.linalg.lstsq``): (4,) coefficients."""
    coef, *_ = np.linalg.lstsq(har_design(rows), rows["realized"].to_numpy(dtype="float64"), rcond=None)
    return coef


def fit_models(
    bars: pd.DataFrame, vol_features: pd.DataFrame, start: dt.date, end: dt.date, symbols: Sequence[str] | None = None,
) -> VolForecastModels:
    """Fit HAR (per asset and horizon) and LightGBM (per horizon, pooled) on ``[start, end)``.

    :param bars: daily bars; only those dated in the window are used
    :param vol_features: ``vol_features`` rows; only those dated in the window are used
    :param symbols: assets that need HAR coefficients although they have fewer than
        :data:`MIN_FIT_ROWS` rows in the window (listed late): they get one HAR fitted on every
        asset's rows pooled, and ``n_rows`` records their own count
    :raises ValueError: an asset outside `symbols` with fewer than :data:`MIN_FIT_ROWS` rows
    """
    import lightgbm as lgb  # heavy import, only paid by code that fits

    rows = training_rows(bars, vol_features, start, end)
    settings = CONFIG["lgbm"]
    har: dict[int, dict[str, np.ndarray]] = {}
    lgbm: dict[int, str] = {}
    n_rows: dict[int, dict[str, int]] = {}
    for h in HORIZONS:
        part = rows.loc[rows["horizon_days"] == h]
        har[h], n_rows[h] = {}, {}
        late = set(symbols or [])
        for symbol, one in part.groupby("symbol", sort=True):
            if len(one) < MIN_FIT_ROWS and symbol not in late:
                raise ValueError(f"fit_models: {symbol} has {len(one)} rows with inputs and an h={h} target in [{start}, {end})")
            if len(one) >= MIN_FIT_ROWS:
                har[h][symbol] = fit_har(one)
            n_rows[h][symbol] = len(one)
        pooled = fit_har(part)
        for symbol in sorted(late - set(har[h])):
            har[h][symbol] = pooled
            n_rows[h].setdefault(symbol, 0)
        data = lgb.Dataset(part[LGBM_FEATURES].to_numpy(dtype="float64"), label=part["realized"].to_numpy(),
                           feature_name=LGBM_FEATURES, free_raw_data=True)
        params = {**settings["params"], "seed": int(settings["seed"])}
        booster = lgb.train(params, data, num_boost_round=int(settings["num_boost_round"]))
        lgbm[h] = booster.model_to_string()
    return VolForecastModels(har=har, lgbm=lgbm, fit_start=start, fit_end=end, n_rows=n_rows)


def forecast(
    bars: pd.DataFrame,
    vol_features: pd.DataFrame,
    garch_params: Mapping[str, GarchParams],
    models: VolForecastModels,
    start: dt.date,
    end: dt.date,
) -> pd.DataFrame:
    """Every model's forecast of ``rv_h(d)`` for d in ``[start, end)`` and each horizon h.

    :param bars: daily bars covering ``[start - LOOKBACK_DAYS, end)``
    :param vol_features: the ``vol_features`` rows of ``[start, end)``
    :param garch_params: train-fitted GARCH(1,1) parameters of every symbol present
    :param models: :func:`fit_models` on train
    :return: ``date, symbol, horizon_days (int64), naive, garch, har, lgbm``: daily vol,
        fraction; one row per (date, symbol, h) for each (date, symbol) that has vol features
        and every HAR component; sorted by (date, symbol, horizon_days)
    :raises ValueError: a symbol without GARCH parameters or HAR coefficients
    """
    rows = inputs(bars, vol_features, start, end)
    present = sorted(rows["symbol"].unique())
    missing = [s for s in present if s not in garch_params or any(s not in models.har[h] for h in HORIZONS)]
    if missing:
        raise ValueError(f"vol forecasts: no GARCH parameters or HAR coefficients for {missing} (fit them on train)")
    frames = []
    for h in HORIZONS:
        out = rows[["date", "symbol"]].copy()
        out["horizon_days"] = h
        out["naive"] = rows[f"naive_h{h}"].to_numpy()
        out["garch"] = _garch_forecast(rows, garch_params, h)
        out["har"] = np.nan
        for symbol, index in rows.groupby("symbol", sort=False).indices.items():
            out.iloc[index, out.columns.get_loc("har")] = _har_predict(rows.iloc[index], models.har[h][symbol])
        out["lgbm"] = models.booster(h).predict(rows[LGBM_FEATURES].to_numpy(dtype="float64"), num_threads=1) if len(rows) else []
        frames.append(out)
    if not frames or rows.empty:
        return pd.DataFrame({c: pd.Series(dtype="object" if c in ("date", "symbol") else "int64" if c == "horizon_days" else "float64")
                             for c in FORECAST_COLUMNS})
    result = pd.concat(frames, ignore_index=True).astype({"horizon_days": "int64"})
    return result.sort_values(["date", "symbol", "horizon_days"], kind="stable").reset_index(drop=True)[FORECAST_COLUMNS]


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


def qlike(realized_vol: np.ndarray, forecast_vol: np.ndarray, floor: float = FLOOR_DAILY_VOL) -> np.ndarray:
    """Per-row QLIKE of a vol forecast: ``v/f - ln(v/f) - 1`` with ``v = max(realized, floor)^2``
    and ``f = max(forecast, floor)^2`` (variances; Patton 2011's normalised form, 0 when equal)."""
    v = np.maximum(realized_vol, floor) ** 2
    f = np.maximum(forecast_vol, floor) ** 2
    return v / f - np.log(v / f) - 1.0


def evaluate(forecasts: pd.DataFrame, targets: pd.DataFrame, floor: float = FLOOR_DAILY_VOL) -> pd.DataFrame:
    """RMSE and QLIKE of every model per (horizon, symbol) and pooled across symbols.

    Scored on the (date, symbol, horizon) rows present in both frames, the same rows for every
    model. RMSE = sqrt(mean((forecast - realized)^2)) in daily vol units; QLIKE = mean of
    :func:`qlike`. The pooled row (symbol ``"pooled"``) takes the means over all asset-days of
    the horizon. ``*_vs_naive`` = the model's figure / the naive forecast's on the same rows.

    :param forecasts: :func:`forecast` output
    :param targets: :func:`realized` output
    :return: ``horizon_days, symbol, model, n, rmse, qlike, rmse_vs_naive, qlike_vs_naive``,
        per horizon: the symbols sorted, then ``pooled``; models in :data:`MODELS` order
    """
    joined = _dates(forecasts).merge(_dates(targets), on=["date", "symbol", "horizon_days"], how="inner")
    rows = []
    for h, by_h in joined.groupby("horizon_days", sort=True):
        groups = [(s, g) for s, g in by_h.groupby("symbol", sort=True)] + [("pooled", by_h)]
        for symbol, g in groups:
            y = g["realized"].to_numpy(dtype="float64")
            scores = {}
            for model in MODELS:
                f = g[model].to_numpy(dtype="float64")
                scores[model] = (math.sqrt(float(np.mean((f - y) ** 2))), float(np.mean(qlike(y, f, floor))))
            for model in MODELS:
                rmse, ql = scores[model]
                rows.append({
                    "horizon_days": int(h), "symbol": symbol, "model": model, "n": len(g), "rmse": rmse, "qlike": ql,
                    "rmse_vs_naive": rmse / scores["naive"][0], "qlike_vs_naive": ql / scores["naive"][1],
                })
    return pd.DataFrame(rows, columns=["horizon_days", "symbol", "model", "n", "rmse", "qlike", "rmse_vs_naive", "qlike_vs_naive"])


def plot_report(scores: pd.DataFrame, forecasts: pd.DataFrame, targets: pd.DataFrame, title: str):
    """Two panels: the pooled RMSE and QLIKE of each model relative to naive, per horizon
    (bars; below 1 beats naive), and one asset's forecasts against its realized vol (the
    config's ``plot_symbol`` and ``plot_horizon_days``), annualised for reading."""
    from regime_pipeline.core.plots import plt  # pyplot with the Agg backend selected

    symbol, h = CONFIG["evaluation"]["plot_symbol"], int(CONFIG["evaluation"]["plot_horizon_days"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2, 3]}, constrained_layout=True)
    pooled = scores.loc[scores["symbol"] == "pooled"]
    models = [m for m in MODELS if m != "naive"]
    width = 0.8 / (2 * len(HORIZONS))
    for i, h_ in enumerate(HORIZONS):
        part = pooled.loc[pooled["horizon_days"] == h_].set_index("model")
        for j, metric in enumerate(("rmse_vs_naive", "qlike_vs_naive")):
            offset = (2 * i + j - len(HORIZONS) + 0.5) * width
            values = [part[metric].get(m, np.nan) for m in models]
            left.bar(np.arange(len(models)) + offset, values, width, label=f"{metric.split('_')[0].upper()}, h={h_}d",
                     hatch="" if j == 0 else "//", alpha=0.85)
    left.axhline(1.0, color="black", lw=0.8)
    left.set_xticks(range(len(models)), models)
    left.set_ylabel("pooled loss / naive loss")
    left.set_title("vs naive (below 1 = better)")
    left.legend(fontsize=7)

    one = _dates(forecasts).merge(_dates(targets), on=["date", "symbol", "horizon_days"])
    one = one.loc[(one["symbol"] == symbol) & (one["horizon_days"] == h)].sort_values("date")
    scale = math.sqrt(ANNUALIZATION_DAYS)
    dates = pd.to_datetime(one["date"])
    right.plot(dates, one["realized"] * scale, color="0.6", lw=0.8, label=f"realized rv_{h}")
    for model in models:
        right.plot(dates, one[model] * scale, lw=1.0, label=model)
    right.set_ylabel("annualised vol")
    right.set_title(f"{symbol}, h = {h} days")
    right.legend(fontsize=7, ncol=4)
    fig.suptitle(title)
    return fig


# The original study's figure, quoted in every report so the two can be compared honestly.
_STUDY_NOTE = (
    "The original study reported a holdout RMSE of 0.027 for LightGBM without a published target "
    "definition. Ours is the h = 1 day row in daily vol units: |r_{d+1}|, the absolute next-day "
    "log return from daily closes. If the study's target was also a daily-unit next-day vol from "
    "daily returns the two are of the same kind, but the assets, period and proxy may differ: "
    "treat the comparison as indicative, not as a replication. An annualised target would be "
    "sqrt(365) ≈ 19x larger and is not comparable."
)


def report_markdown(split: str, scores: pd.DataFrame, plot_file: str | None = None) -> str:
    """The markdown report of one split: the target, the pooled table, per-asset RMSE ratios."""
    def table(frame: pd.DataFrame) -> str:
        return frame.to_markdown(index=False, floatfmt=".4f")

    pooled = scores.loc[scores["symbol"] == "pooled"].drop(columns="symbol")
    lines = [
        f"# Volatility forecasts on {split}", "",
        f"**Target.** {' '.join(CONFIG['target']['description'].split())} Unit: {CONFIG['target']['unit']}. "
        "The realized-vol proxy is built from daily close-to-close returns (the data has daily bars), "
        "so it is far noisier than an intraday realized variance.", "",
        "**Scores.** RMSE = sqrt(mean((forecast - realized)^2)) in daily vol units; QLIKE = mean(v/f - ln(v/f) - 1) "
        f"on variances v = realized^2, f = forecast^2, both floored at ({FLOOR_DAILY_VOL})^2. Pooled = over all "
        "asset-days of the horizon; `*_vs_naive` = the model's loss / the naive last-value forecast's, below 1 is better. "
        "Only days whose h-day target lies inside the split are scored, the same rows for every model.", "",
        "**Models**, all fitted on train only: naive (realized vol of the last h days), GARCH(1,1) (`arch`, "
        "forecasts sqrt of the expected squared return), HAR-RV (OLS per asset on rv_1d, rv_7d, rv_30d, in vol units), "
        "LightGBM (pooled across assets, on the vol features and the HAR components). HAR and LightGBM are fitted by "
        "least squares on the vol target, so they forecast its conditional mean, which RMSE rewards; GARCH forecasts the "
        "root of the expected variance, higher by Jensen's inequality (RMSE penalises that, QLIKE does not).", "",
    ]
    if split == "train":
        lines += ["*train is in-sample for HAR and LightGBM (and GARCH): these figures measure fit, not forecasting.*", ""]
    lines += ["## Pooled across assets", "", table(pooled), ""]
    if plot_file:
        lines += [f"![forecasts]({plot_file})", ""]
    for h in HORIZONS:
        one = scores.loc[(scores["horizon_days"] == h) & (scores["symbol"] != "pooled")]
        wide = one.pivot(index="symbol", columns="model", values="rmse_vs_naive")[[m for m in MODELS if m != "naive"]]
        naive = one.loc[one["model"] == "naive"].set_index("symbol")["rmse"].rename("naive_rmse")
        wide = pd.concat([naive, wide.add_suffix("_rmse_vs_naive")], axis=1).reset_index()
        lines += [f"## Per asset, h = {h} day{'s' if h > 1 else ''}: RMSE of naive, and each model's RMSE / naive", "",
                  table(wide), ""]
    lines += ["## Against the original study", "", _STUDY_NOTE, ""]
    return "\n".join(lines)
