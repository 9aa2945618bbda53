"""The Dagster UI in a real browser, as a user sees it after `make ui`.

`dagster-webserver` and `dagster-daemon` serve a small instance built in a temporary folder
(the project's own dagster.yaml, its paths moved there) on 127.0.0.1; Debian's Chromium,
driven by Playwright, opens the pages a user opens and clicks what a user clicks:

* bars: days of 1-minute and daily bars, and one day whose tampered minute fails the blocking
  `minutes_match_klines` check (nothing stored; the check shows failed);
* detectors: the three detectors trained with the `fast` profile on three assets (BTC, ETH,
  BNB: the numbers do not matter here, the pages do) and `detector_reports[test]`.

Every page is checked for console errors and uncaught exceptions. A step that fails saves a
screenshot under ``test-artifacts/ui/`` and names it in the failure. Needs a Chromium binary:
``/usr/bin/chromium`` (``make test`` installs Debian's package when it can) or
``$REGIME_CHROMIUM``; without one the test is skipped, except under CI, where it fails.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from regime_pipeline.configs import PROJECT_ROOT
from regime_pipeline.core.data.lake import MinuteLake
from regime_pipeline.definitions import all_assets
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.market_data import MarketData
from regime_pipeline_tests.conftest import check_results, materialize_range, write_detector_inputs

pytestmark = pytest.mark.browser

ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "ui"
# Every group the definitions declare (bars, features, forecasts, regimes, detectors, allocation, trading, ...).
GROUPS = sorted({asset.group_names_by_key[key] for asset in all_assets for key in asset.keys})
DETECTOR_SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
STORED_DAYS = ("2021-09-28", "2021-09-30")  # minute and daily bars, checks passed
FAILED_DAY = "2021-10-01"  # a tampered minute: the blocking reconciliation fails, nothing stored
UI_DAY = "2021-10-02"  # minutes stored; its daily bars are materialized from the UI
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
SERVER_START_S = 180  # the webserver imports the code location (torch, dagster) under load
RUN_FINISH_S = 300  # a run from the UI: queued, picked up by the daemon, two processes import the code


def chromium() -> str | None:
    """The Chromium binary to drive: ``$REGIME_CHROMIUM``, else Debian's ``/usr/bin/chromium``."""
    path = os.environ.get("REGIME_CHROMIUM") or "/usr/bin/chromium"
    return path if Path(path).is_file() and os.access(path, os.X_OK) else None


def _require_browser() -> str:
    path = chromium()
    if path is not None:
        return path
    reason = (
        "no Chromium: install Debian's `chromium` (make test does, as root) or point REGIME_CHROMIUM at a "
        "Chromium or Chrome binary"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; under CI the browser test must run")
    pytest.skip(reason)


# --------------------------------------------------------------------------- the instance


def instance_settings(root: Path) -> dict:
    """The project's dagster.yaml with every path under ``data/`` moved under `root`."""

    def moved(value):
        if isinstance(value, dict):
            return {k: moved(v) for k, v in value.items()}
        if isinstance(value, list):
            return [moved(v) for v in value]
        if isinstance(value, str) and (value == "data" or value.startswith("data/")):
            return str(root / value)
        return value

    return moved(yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_detectors(data_dir: Path, instance: dg.DagsterInstance) -> None:
    """What the earlier stages leave in the warehouse (features, labels) for three assets, then
    the three detectors (`fast` profile) and their report on the test split, materialized."""
    write_detector_inputs(data_dir, DETECTOR_SYMBOLS)
    resources = build_resources(str(data_dir), MarketData(source="embedded"))
    fast = {"ops": {f"{k}_detector": {"config": {"profile": "fast"}} for k in ("vol", "trend", "cross")}}
    kinds = ["vol_detector", "trend_detector", "cross_detector"]
    assert dg.materialize(all_assets, selection=kinds, resources=resources, instance=instance, run_config=fast).success
    assert dg.materialize(all_assets, selection=["detector_reports"], partition_key="test", resources=resources,
                          instance=instance).success


def store_bars(data_dir: Path, instance: dg.DagsterInstance) -> None:
    """Days of bars that pass their checks, one whose blocking check fails, and the minutes of the
    day the UI test materializes."""
    bars = [a for a in all_assets if a.key.to_user_string() in ("minute_bars", "daily_bars")]
    minute_bars = [a for a in bars if a.key.to_user_string() == "minute_bars"]
    daily_bars = [a for a in bars if a.key.to_user_string() == "daily_bars"]
    resources = build_resources(str(data_dir), MarketData(source="embedded"))
    assert materialize_range(bars, *STORED_DAYS, resources, instance).success
    assert materialize_range(minute_bars, FAILED_DAY, UI_DAY, resources, instance).success
    lake = MinuteLake(data_dir / "lake" / "minute_bars")
    day = dt.date.fromisoformat(FAILED_DAY)
    minutes = lake.read(day, day + dt.timedelta(days=1), ["ETHUSDT"])
    minutes.loc[100, "volume"] += 1.0
    lake.write_day("ETHUSDT", day, minutes.drop(columns="symbol"))
    failed = materialize_range(daily_bars, FAILED_DAY, FAILED_DAY, resources, instance, raise_on_error=False)
    assert not failed.success and check_results(failed)["minutes_match_klines"] is False


@contextlib.contextmanager
def server(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Run a Dagster command from the project root in its own process group; stop the group on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def wait_until_serving(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dagster-webserver exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                if response.status == 200:
                    return
        time.sleep(1)
    raise AssertionError(f"dagster-webserver did not answer within {SERVER_START_S} s; see {log}")


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[dict]:
    """The webserver's URL over a small materialized instance, with the daemon running."""
    executable = _require_browser()
    root = tmp_path_factory.mktemp("ui")
    data_dir = root / "data"
    home = data_dir / "dagster"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_settings(root)))
    env = {**os.environ, "DAGSTER_HOME": str(home), "REGIME_DATA_DIR": str(data_dir), "REGIME_MARKET_DATA": "embedded"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    web_log, daemon_log = root / "webserver.log", root / "daemon.log"
    webserver = [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"]
    daemon = [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"]
    # The instance creates its SQLite databases before the servers start: processes creating
    # them at once collide (alembic: "more than one head"). The servers then load the code
    # location while this process fills the instance.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        with server(webserver, env, web_log) as web, server(daemon, env, daemon_log):
            train_detectors(data_dir, instance)
            store_bars(data_dir, instance)
            wait_until_serving(url, web, web_log)
            yield {"url": url, "chromium": executable, "root": root, "logs": [web_log, daemon_log]}


# --------------------------------------------------------------------------- the browser


class Browser:
    """One Chromium page that records console errors, uncaught exceptions and failed server calls."""

    def __init__(self, page, url: str, logs: list[Path]) -> None:
        self.page, self.url, self.logs = page, url, logs
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught exception: {e}"))
        page.on("response", lambda r: self.errors.append(f"HTTP {r.status} from {r.url}") if r.status >= 500 else None)
        # The UI asks a first-time visitor to join its community, in a dialog that can open after
        # the page has loaded; whenever it is in the way, skip it, as a user would.
        community = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
        page.add_locator_handler(community, lambda dialog: dialog.get_by_role("button", name="Skip").click())

    def open(self, path: str) -> None:
        """Go to `path` and wait until its requests are answered."""
        self.page.goto(self.url + path)
        self.page.wait_for_load_state("networkidle")

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run one user step; on failure or console errors, save a screenshot and name it."""
        self.errors.clear()
        try:
            yield
            self.page.wait_for_timeout(500)  # late errors of the step's last request
            assert not self.errors, f"{name}: the page reported errors:\n" + "\n".join(self.errors)
        except Exception as exc:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / f"{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}.png"
            with contextlib.suppress(Exception):
                self.page.screenshot(path=str(shot), full_page=True)
            logs = ", ".join(str(p) for p in self.logs)
            raise AssertionError(f"UI step '{name}' failed at {self.page.url}; screenshot {shot}; server logs {logs}\n{exc}") from exc


@pytest.fixture(scope="module")
def browser(ui) -> Iterator[Browser]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(ui["root"] / "chromium-profile"), executable_path=ui["chromium"], headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        context.set_default_timeout(60_000)
        try:
            yield Browser(context.new_page(), ui["url"], ui["logs"])
        finally:
            context.close()


# --------------------------------------------------------------------------- what a user checks


def test_the_asset_graph_shows_every_group(browser):
    from playwright.sync_api import expect

    with browser.step("asset graph"):
        browser.open("/asset-groups")
        for group in GROUPS:
            expect(browser.page.get_by_text(group, exact=True).first).to_be_visible()


def test_the_catalog_lists_the_assets(browser):
    from playwright.sync_api import expect

    page = browser.page
    with browser.step("catalog"):
        browser.open("/assets")
        # The list renders only the rows in view: find each asset with the search box (an editor).
        for asset in ("daily_bars", "detector_reports", "allocation_backtest", "weekly_rebalance"):
            page.locator(".CodeMirror").first.click()
            page.keyboard.press("Control+A")
            page.keyboard.type(asset)
            page.keyboard.press("Enter")
            expect(page.get_by_role("link", name=re.compile(rf"^{asset}\b")).first).to_be_visible()


def test_a_failed_blocking_check_shows_as_failed(browser):
    from playwright.sync_api import expect

    page = browser.page
    with browser.step("failed check"):
        browser.open(f"/assets/daily_bars?view=partitions&partition={FAILED_DAY}")
        expect(page.get_by_text(re.compile("failed, and did not materialize this asset"))).to_be_visible()
        browser.open("/assets/daily_bars?view=checks")
        page.get_by_text("minutes_match_klines", exact=True).first.click()
        page.get_by_text("Execution history", exact=True).click()
        expect(page.locator("table").get_by_text("Failed", exact=True)).to_be_visible()


def test_materialize_one_daily_bars_partition_from_the_ui(browser):
    from playwright.sync_api import expect

    page = browser.page
    with browser.step("materialize dialog"):
        browser.open("/assets/daily_bars")
        page.get_by_role("button", name=re.compile("Materialize…")).click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("Show all partitions").click()
        box = dialog.locator("input[type=text]")
        box.fill(UI_DAY)
        box.press("Enter")
        expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
        dialog.get_by_role("button", name="Launch 1 run").click()
        # The "Launched run <id>" notice stays a few seconds: follow it to the run.
        expect(page.get_by_text(re.compile(r"Launched run \w+"))).to_be_visible()
        page.get_by_role("link", name="View", exact=True).click()
    with browser.step("run succeeds"):
        expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}"))
        expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=RUN_FINISH_S * 1000)
    with browser.step("partition is materialized"):
        browser.open(f"/assets/daily_bars?view=partitions&partition={UI_DAY}")
        expect(page.get_by_text("Materialized", exact=True).first).to_be_visible()


# [natural width, share of the last row's pixels drawn opaque] once the image has decoded
# (matplotlib's figures have an opaque background); [0, 0] when it does not decode.
DRAWN_IMAGE_JS = """img => img.decode().then(() => {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    const row = context.getImageData(0, canvas.height - 1, canvas.width, 1).data;
    let opaque = 0;
    for (let i = 3; i < row.length; i += 4) if (row[i] > 0) opaque += 1;
    return [img.naturalWidth, opaque / canvas.width];
}, () => [0, 0])"""


def test_a_detector_report_shows_its_summary_and_confusion_matrices(browser):
    from playwright.sync_api import expect

    page = browser.page
    with browser.step("detector report"):
        browser.open("/assets/detector_reports?view=partitions&partition=test")
        summary = page.locator("tr", has=page.get_by_text("summary", exact=True))
        for name in ("vol_detector", "trend_detector", "cross_detector"):
            expect(summary.locator("table").get_by_text(name, exact=True)).to_be_visible()
    for kind in ("vol", "trend", "cross"):
        with browser.step(f"confusion {kind}"):
            # Markdown is shown in its row, or behind "[Show Markdown]" in a dialog when it is long.
            row = page.locator("tr", has=page.get_by_text(f"confusion_{kind}", exact=True))
            show = row.get_by_text("Show Markdown")
            expect(row.locator("img").or_(show).first).to_be_attached()
            opened = show.count() > 0
            if opened:
                show.click()
            image = (page.get_by_role("dialog") if opened else row).locator("img").first
            expect(image).to_be_attached()
            width, drawn = image.evaluate(DRAWN_IMAGE_JS)
            assert width > 0, f"confusion_{kind}: its image does not load (naturalWidth {width})"
            # A truncated PNG still has a width (its header) and decodes: only the rows it
            # holds are drawn, the rest stay transparent.
            assert drawn > 0.9, f"confusion_{kind}: its image is drawn only in part ({drawn:.0%} of its last row)"
            if opened:
                page.keyboard.press("Escape")
                expect(page.get_by_role("dialog")).to_have_count(0)


def test_the_weekly_schedule_shows_as_running(browser):
    from playwright.sync_api import expect

    page = browser.page
    with browser.step("automation"):
        browser.open("/automation")
        # A row holds the selection box, then the schedule's on/off switch.
        row = page.locator("[data-index]", has=page.get_by_text("weekly_rebalance_schedule", exact=True))
        expect(row.get_by_role("checkbox").last).to_be_checked()


@pytest.mark.parametrize("path", ["/runs", "/assets/allocation_backtest", "/assets/weekly_rebalance", "/overview"])
def test_other_pages_render_without_errors(browser, path):
    from playwright.sync_api import expect

    with browser.step(f"page {path}"):
        browser.open(path)
        expect(browser.page.locator("body")).not_to_be_empty()
