"""The operations center in headless Chromium against the real pipeline.

One page stays open through the module, as an operator's would: an MQTT reading causes
an incident that must appear without a reload, then the drawer, the time slider, the
roles and the languages are checked on it. The last test measures the map's frame time
with 10,000 sensors and 5,000 incidents on a stack of its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.browser.conftest import record
from tests.browser.stack import Stack, map_stack

pytestmark = pytest.mark.browser

LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
FIRST_LOAD_BUDGET_MS = 2_000


@dataclass
class Watched:
    """A page and everything it said and asked for."""

    page: Any
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def off_loopback(self) -> list[str]:
        return [
            u
            for u in self.urls
            if not u.startswith(("data:", "blob:")) and urlsplit(u).hostname not in LOOPBACK
        ]


def watch(context: Any) -> Watched:
    page = context.new_page()
    watched = Watched(page)
    page.on("request", lambda r: watched.urls.append(r.url))
    page.on(
        "console",
        lambda m: watched.errors.append(f"console: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: watched.errors.append(f"pageerror: {e}"))
    return watched


def first_load_ms(page: Any) -> float:
    """Navigation start to the map drawn (the page sets data-ready after that frame)."""
    page.wait_for_selector('body[data-ready="true"]', timeout=20_000)
    return float(page.evaluate("window.CityOps.readyAt"))


@pytest.fixture(scope="module")
def ops(browser: Any, stack: Stack) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    watched = watch(context)
    watched.page.goto(stack.base + "/")
    first_load_ms(watched.page)
    yield watched
    context.close()


def token(stack: Stack, role: str) -> str:
    got = httpx.post(f"{stack.base}/api/v1/auth/dev-token", json={"role": role}, timeout=10)
    got.raise_for_status()
    return str(got.json()["access_token"])


def publish(stack: Stack, topic: str, payload: bytes) -> None:
    env = stack.env
    v5 = env.get("CITYOPS_MQTT_PROTOCOL", "5") == "5"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    if env.get("CITYOPS_MQTT_USERNAME"):
        client.username_pw_set(env["CITYOPS_MQTT_USERNAME"], env.get("CITYOPS_MQTT_PASSWORD"))
    client.connect(env["CITYOPS_MQTT_HOST"], int(env.get("CITYOPS_MQTT_PORT", "1883")))
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def senml(device_id: str, level: float) -> bytes:
    return orjson.dumps(
        [{"bn": f"{device_id}:", "bt": time.time(), "n": "water_level", "u": "cm", "v": level}]
    )


# What the MQTT test caused, for the tests after it.
CAUSED: dict[str, Any] = {}


def caused() -> dict[str, Any]:
    if "incident_id" not in CAUSED:
        pytest.skip("needs the incident the MQTT test causes")
    return CAUSED


def test_page_loads_without_errors_and_only_from_loopback(browser: Any, stack: Stack) -> None:
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    try:
        watched = watch(context)
        watched.page.goto(stack.base + "/")
        load_ms = first_load_ms(watched.page)
        watched.page.wait_for_selector('[data-testid="live-indicator"][data-state="live"]')
        watched.page.wait_for_timeout(1_500)  # the panels and the live stream settle
        record("first load (demo city)", {"ms": round(load_ms)})
        assert watched.errors == []
        assert watched.off_loopback() == []
        assert any("/api/v1/map/layers/sensors" in u for u in watched.urls)
        assert load_ms < FIRST_LOAD_BUDGET_MS
    finally:
        context.close()


def test_mqtt_incident_appears_without_reload_and_opens_its_drawer(
    ops: Watched, stack: Stack
) -> None:
    page = ops.page
    auth = {"Authorization": f"Bearer {token(stack, 'operator')}"}
    sensors = httpx.get(f"{stack.base}/api/v1/map/layers/sensors", headers=auth, timeout=10)
    sensor = next(
        f["properties"]
        for f in sensors.json()["features"]
        if f["properties"]["sensor_type"] == "water_level" and f["properties"]["state"] == "normal"
    )
    device, gateway = sensor["device_id"], sensor["gateway_id"]
    page.evaluate("window.__sameDocument = true")
    CAUSED["before"] = datetime.now(UTC)
    time.sleep(1.5)  # the replay instant "before" is clear of the first reading
    published = time.monotonic()
    for level in (30.0, 62.0, 64.0):
        publish(stack, f"cityops/{gateway}/{device}/telemetry", senml(device, level))

    handle = page.wait_for_function(
        """(device) => {
            for (const r of window.CityOps.state.incidents.values())
                if (r.props.device_id === device) return r.id;
            return null;
        }""",
        arg=device,
        timeout=15_000,
    )
    incident_id = handle.json_value()
    seen_s = time.monotonic() - published
    record("MQTT publish to the map", {"s": round(seen_s, 2)})
    assert page.evaluate("window.__sameDocument") is True  # no reload
    page.wait_for_selector(f'[data-testid="incident-item"][data-incident-id="{incident_id}"]')
    feed = page.locator(f'[data-testid="feed-item"][data-incident-id="{incident_id}"]')
    assert feed.count() >= 1  # pushed into the live alert feed too

    # Click its marker on the map.
    assert page.evaluate("(id) => window.CityOps.centerIncident(id)", incident_id)
    point = page.evaluate("(id) => window.CityOps.incidentScreenPoint(id)", incident_id)
    page.mouse.click(point["x"], point["y"])
    drawer = page.locator('[data-testid="detail-panel"]')
    drawer.wait_for(state="visible")
    page.wait_for_selector(
        f'[data-testid="detail-panel"][data-incident-id="{incident_id}"][data-loaded="true"]'
    )
    assert "Water level" in page.locator('[data-testid="detail-title"]').inner_text()
    assert page.locator('[data-testid="timeline"] li').count() >= 2  # reading, alarm, opened
    assert device in page.locator('[data-testid="detail-sensors"]').inner_text()
    assert page.locator('[data-testid="linked-cases"] li').count() >= 1
    # An operator may acknowledge and dispatch a new incident.
    page.wait_for_selector('[data-testid="action-acknowledge"]')
    assert page.locator('[data-testid="action-dispatch"]').count() == 1
    CAUSED.update(incident_id=incident_id, device=device)
    assert ops.errors == []
    assert ops.off_loopback() == []


def test_time_slider_shows_the_past_and_live_returns(ops: Watched) -> None:
    page = ops.page
    incident_id = caused()["incident_id"]
    seconds = (datetime.now(UTC) - caused()["before"]).total_seconds()
    # As a drag would: the value moves, then the slider fires input and change.
    page.eval_on_selector(
        '[data-testid="time-slider"]',
        """(el, v) => {
            el.value = String(v);
            el.dispatchEvent(new Event('input', { bubbles: true }));
            el.dispatchEvent(new Event('change', { bubbles: true }));
        }""",
        -round(seconds),
    )
    page.wait_for_selector('body[data-mode="past"]', timeout=30_000)
    assert page.locator('[data-testid="replay-banner"]').is_visible()
    assert not page.evaluate("(id) => window.CityOps.state.incidents.has(id)", incident_id)
    item = f'[data-testid="incident-item"][data-incident-id="{incident_id}"]'
    page.wait_for_selector(item, state="detached", timeout=5_000)  # the list re-renders

    page.locator('[data-testid="time-live"]').click()
    page.wait_for_selector('body[data-mode="live"]')
    page.wait_for_function(
        "(id) => window.CityOps.state.incidents.has(id)", arg=incident_id, timeout=15_000
    )
    assert not page.locator('[data-testid="replay-banner"]').is_visible()
    assert ops.errors == []


def test_actions_follow_the_role_and_the_api_refuses_the_rest(ops: Watched, stack: Stack) -> None:
    page = ops.page
    incident_id = caused()["incident_id"]
    page.select_option('[data-testid="role-select"]', "auditor")
    page.wait_for_selector('body[data-role="auditor"]')
    page.locator(f'[data-testid="incident-item"][data-incident-id="{incident_id}"]').click()
    page.wait_for_selector('[data-testid="action-none"]:visible', timeout=10_000)
    assert page.locator('[data-testid="action-buttons"] button').count() == 0

    refused = httpx.post(
        f"{stack.base}/api/v1/incidents/{incident_id}/acknowledge",
        json={"reason": "auditors only read"},
        headers={"Authorization": f"Bearer {token(stack, 'auditor')}"},
        timeout=10,
    )
    assert refused.status_code == 403, refused.text

    # The operator's button works, and the API's answer shows in the drawer.
    page.select_option('[data-testid="role-select"]', "operator")
    page.wait_for_selector('body[data-role="operator"]')
    page.locator('[data-testid="action-acknowledge"]').click()
    page.wait_for_selector('[data-testid="action-ok"]:visible', timeout=10_000)
    page.wait_for_selector(
        f'[data-testid="incident-item"][data-incident-id="{incident_id}"][data-acknowledged="true"]',
        timeout=10_000,
    )
    assert page.locator('[data-testid="action-acknowledge"]').count() == 0
    assert ops.errors == []


def test_chinese_and_english_labels(ops: Watched) -> None:
    page = ops.page
    heading = page.locator('[data-testid="panels"] [data-i18n="kpi.title"]')
    assert heading.text_content() == "Key figures"
    page.locator('[data-testid="lang-toggle"]').click()
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    assert heading.text_content() == "关键指标"
    assert "未结事件" in page.locator('[data-testid="sidebar"]').inner_text()
    page.locator('[data-testid="lang-toggle"]').click()
    assert heading.text_content() == "Key figures"
    assert ops.errors == []


def test_map_frame_time_with_10000_sensors_and_5000_incidents(browser: Any, tmp_path: Path) -> None:
    with map_stack(tmp_path / "map", sensors=10_000, incidents=5_000) as big:
        context = browser.new_context(viewport={"width": 1600, "height": 900})
        try:
            watched = watch(context)
            watched.page.goto(big.base + "/")
            load_ms = first_load_ms(watched.page)
            counts = watched.page.evaluate(
                "[window.CityOps.state.sensors.size, window.CityOps.state.incidents.size]"
            )
            frames = watched.page.evaluate("window.CityOps.measureFrames(240)")
        finally:
            context.close()
    record(
        "map, 10,000 sensors + 5,000 incidents",
        {"first_load_ms": round(load_ms), **frames},
    )
    assert counts == [10_000, 5_000]
    assert frames["clusters"] > 0  # dense: incidents cluster at the city's scale
    # Responsive on a software-rendered canvas and two shared cores: the figures are
    # reported; the bound only catches a map that stops answering.
    assert frames["draw_p95"] < 100, frames
    assert frames["frame_p95"] < 500, frames
    assert watched.errors == []
    assert watched.off_loopback() == []
