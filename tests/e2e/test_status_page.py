"""The status page at ``/`` in a real headless Chromium (Debian's ``chromium``, driven by
Playwright's Python package; no browser download): it loads with no console error, shows a
throttle change provoked through the pipeline within seconds, draws the throttle history,
and shows a hostile reason as text. Screenshots go to ``.run/screenshots/``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import JAN_2026, event
from integration.service import ServiceProcess
from playwright.sync_api import expect, sync_playwright

from streams.runtime.producer import EventProducer
from streams.serving.views import ViewStore
from streams.testing.worker import WorkerProcess

pytestmark = [pytest.mark.broker, pytest.mark.redis, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".run" / "screenshots"
USER_UNKNOWN = {
    "smtp_code": 550,
    "enhanced_status": "5.1.1",
    "diagnostic": "550 5.1.1 The email account that you tried to reach does not exist",
}
HOSTILE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


class Page:
    """A browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, url: str) -> None:
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 1000})
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        self.page.goto(url)
        self.page.wait_for_selector("#live.on", timeout=10_000)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def cell(self, key: str, column: str) -> Any:
        return self.page.locator(f'#throttle tr[data-key="{key}"] td.{column}')

    def mode(self, key: str) -> str:
        return self.cell(key, "mode").inner_text()

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


GOOGLE_IP = "ip_group:192.0.2.10|google"


def rate_limited(n: int) -> dict[str, Any]:
    """A Gmail rate-limit deferral naming its IP: the controller lowers that IP's key
    towards Google (``GOOGLE_IP``) at once."""
    return event(
        f"G{n}",
        "deferred",
        n * 1000,
        recipient=f"user{n}@gmail.com",
        attempt=1,
        smtp_code=421,
        enhanced_status="4.7.28",
        diagnostic="421-4.7.28 unusual rate of unsolicited mail - gsmtp",
        mx_host="gmail-smtp-in.l.google.com",
        sending_ip="192.0.2.10",
    )


def test_the_page_shows_a_throttle_change_made_through_the_pipeline(
    browser, make_settings, tmp_path
):
    settings = make_settings()
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    service = ServiceProcess(settings, tmp_path / "serve.log").start()
    store = ViewStore.from_settings(settings)
    try:
        worker.wait_ready()
        view = Page(browser, f"http://{service.host}:{service.port}/")
        assert view.mode("group:google") == "normal"
        assert view.mode("group:yahoo") == "normal"
        with EventProducer(settings) as producer:
            for n in range(5):
                producer.send("retry", rate_limited(n))
                producer.send("send", event(f"Y{n}", "delivered", n * 1000, delivery_id="D7"))
            producer.send("bounce", event("Q1", "sync", 0, delivery_id="D7", **USER_UNKNOWN))
            producer.produce_raw(settings.topic("send"), b"k", b"\xff\x00 garbage")
        produced = time.monotonic()
        deadline = produced + 90
        while store.read("throttle", GOOGLE_IP) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        in_view = time.monotonic()
        assert store.read("throttle", GOOGLE_IP) is not None, worker.tail()
        expect(view.cell(GOOGLE_IP, "mode")).to_have_text("backoff", timeout=10_000)
        shown_after = time.monotonic() - in_view
        print(
            f"events produced → Redis view: {in_view - produced:.2f} s, "
            f"Redis view → page: {shown_after:.2f} s"
        )
        assert shown_after < 5
        # The view updater's history stream feeds the chart.
        chart = view.page.locator(f'#chart svg g[data-key="{GOOGLE_IP}"] circle')
        expect(chart.first).to_be_attached(timeout=10_000)
        row = view.page.inner_text(f'#throttle tr[data-key="{GOOGLE_IP}"]')
        assert "421" in row or "rate" in row.lower()
        assert view.mode("group:yahoo") == "normal"
        assert view.mode("group:google") == "normal"  # the other IPs keep Google's limits
        view.page.wait_for_selector('#deliveries tr[data-key="D7"]', timeout=10_000)
        expect(view.page.locator("#quarantined")).to_have_text("1", timeout=30_000)
        expect(view.page.locator("#dead-letters")).to_have_text("1", timeout=30_000)
        view.screenshot("status-page.png")
        assert view.errors == []
        assert worker.alive() and service.alive()
    finally:
        worker.stop()
        assert service.stop() == 0
    assert "Traceback" not in service.log_text()


def test_the_history_chart_and_a_hostile_reason_shown_as_text(browser, make_settings, tmp_path):
    settings = make_settings()
    store = ViewStore.from_settings(settings)
    changes = [(0, "backoff", 9000), (600, "backoff", 4500), (1800, "normal", 18_000)]
    for version, (t, mode, rate) in enumerate(changes, start=1):
        record = throttle_record("group:yahoo", JAN_2026 + t * 1000, mode, rate, version, HOSTILE)
        store.write("throttle", [record])  # the view updater's write feeds the history too
    service = ServiceProcess(settings, tmp_path / "serve.log").start()
    try:
        view = Page(browser, f"http://{service.host}:{service.port}/")
        reason = view.cell("group:yahoo", "reason").inner_text()
        assert reason == HOSTILE
        assert view.page.evaluate("window.__xss") is None
        assert view.page.locator("#throttle script, #throttle img").count() == 0
        dots = view.page.locator('#chart svg g[data-key="group:yahoo"] circle')
        assert dots.count() == len(changes)
        titles = [dots.nth(i).locator("title").text_content() for i in range(dots.count())]
        assert titles[1] == "group:yahoo: backoff, 4,500/h (25%) at 2026-01-01 00:10:00 UTC"
        assert "group:yahoo" in view.page.inner_text("#legend")
        view.screenshot("status-page-history.png")
        assert view.errors == []
        answer = service.call("GET", "/status/data.json")
        assert answer.status == 200
        assert [p["rate"] for p in answer.body["history"]["series"][0]["points"]] == [
            rate for _t, _mode, rate in changes
        ]
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")
    finally:
        assert service.stop() == 0


def throttle_record(
    key: str, t: int, mode: str, rate: int, version: int, reason: str
) -> dict[str, Any]:
    return {
        "event_id": f"{key}-{version}",
        "event_time": t,
        "key": key,
        "scope": "group",
        "mode": mode,
        "max_rate_per_hour": rate,
        "max_connections": 10,
        "max_messages_per_connection": 100,
        "retry_interval_s": 900,
        "suspended_until": None,
        "reason": reason,
        "version": version,
    }


def test_with_redis_down_the_page_says_so_and_the_data_route_answers_503(
    browser, make_settings, tmp_path
):
    settings = make_settings()
    service = ServiceProcess(
        settings, tmp_path / "serve.log", env={"REDIS_URL": "redis://127.0.0.1:1/0"}
    ).start()
    try:
        answer = service.call("GET", "/status/data.json")
        assert answer.status == 503
        assert answer.body["error"].startswith("view store unreachable")
        assert answer.body["dead_letters"]["count"] == 0  # the broker still answers
        view = Page(browser, f"http://{service.host}:{service.port}/")
        expect(view.page.locator("#error")).to_contain_text("view store unreachable")
        expect(view.page.locator("#dead-letters")).to_have_text("0")
        assert view.errors == []
    finally:
        assert service.stop() == 0
    assert "Traceback" not in service.log_text()
