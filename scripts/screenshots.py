"""Screenshots of the operations center's main views into docs/screenshots/.

    python scripts/screenshots.py                # starts the demo on the running services
    python scripts/screenshots.py --url http://127.0.0.1:8000/   # a demo already running

With no --url it needs CITYOPS_DATABASE_URL, CITYOPS_KAFKA_BOOTSTRAP and
CITYOPS_MQTT_HOST/PORT (as the test command sets them) and runs ``cityops demo`` with the
simulator on a fresh database for ``--warmup`` seconds before shooting. Chromium is the
Debian package (/usr/bin/chromium), headless; nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.browser.stack import CHROMIUM, CHROMIUM_ARGS, demo_stack
from tests.helpers.web import auth_header, dev_token

OUT = Path("docs/screenshots")


def shoot(base: str, out: Path) -> list[Path]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(base.rstrip("/") + "/")
        page.wait_for_selector('body[data-ready="true"]', timeout=30_000)
        page.wait_for_timeout(4_000)  # live changes, panels

        def save(name: str) -> None:
            path = out / f"{name}.png"
            page.screenshot(path=str(path))
            made.append(path)

        def open_drawer(incident_id: str) -> None:
            page.evaluate("(id) => window.CityOps.selectIncident(id)", incident_id)
            page.wait_for_selector('[data-testid="detail-panel"][data-loaded="true"]')

        save("overview")
        first = page.evaluate(
            """() => {
                const items = document.querySelectorAll('[data-testid="incident-item"]');
                return items.length ? items[0].dataset.incidentId : null;
            }"""
        )
        if first:
            open_drawer(first)
            page.wait_for_timeout(1_500)
            save("incident-drawer")
            page.locator('[data-testid="detail-close"]').click()
        page.eval_on_selector(
            '[data-testid="time-slider"]',
            """(el) => {
                // Half a minute back: well inside the demo city's short history.
                el.value = '-30';
                el.dispatchEvent(new Event('input', { bubbles: true }));
                el.dispatchEvent(new Event('change', { bubbles: true }));
            }""",
        )
        page.wait_for_selector('body[data-mode="past"]', timeout=60_000)
        page.wait_for_timeout(500)
        save("time-slider-past")
        page.locator('[data-testid="time-live"]').click()
        page.wait_for_selector('body[data-mode="live"]')
        page.locator('[data-testid="lang-toggle"]').click()
        if first:
            open_drawer(first)
        page.wait_for_timeout(1_500)
        save("chinese-labels")
        page.locator('[data-testid="lang-toggle"]').click()
        page.locator('[data-testid="detail-close"]').click()

        # Grid cells coloured by case hotspot instead of load.
        page.locator('[data-testid="grid-mode-hotspot"]').check()
        page.wait_for_selector('[data-testid="legend-hotspot-note"][data-loaded="true"]')
        page.wait_for_timeout(500)
        save("grid-hotspots")
        page.locator('[data-testid="grid-mode-load"]').check()

        # A queue's case, read-only in the drawer: the first department with work queued.
        for code in page.eval_on_selector_all(
            '[data-testid="queue-select"] option', "(os) => os.map((o) => o.value)"
        ):
            page.select_option('[data-testid="queue-select"]', code)
            try:
                page.wait_for_selector('[data-testid="queue-item"]', timeout=3_000)
            except PlaywrightTimeout:  # an empty queue: the next department
                continue
            page.locator('[data-testid="queue-item"]').first.click()
            page.wait_for_selector(
                '[data-testid="detail-panel"][data-kind="case"][data-loaded="true"]'
            )
            page.wait_for_timeout(500)
            save("case-drawer")
            page.locator('[data-testid="detail-close"]').click()
            break

        # Signed in as the first incident's department: its queue, its actions only.
        department = page.evaluate(
            "(id) => id && window.CityOps.state.incidents.get(id).props.department_code", first
        )
        if department:
            # Dispatched to it, so the drawer offers the department its own actions.
            dispatcher = dev_token(base.rstrip("/"), "dispatcher")
            httpx.post(
                f"{base.rstrip('/')}/api/v1/incidents/{first}/dispatch",
                json={"reason": "screenshot"},
                headers=auth_header(dispatcher),
                timeout=10,
            )
            page.select_option('[data-testid="role-select"]', "department")
            page.select_option('[data-testid="department-select"]', department)
            page.wait_for_selector(f'body[data-department="{department}"]')
            open_drawer(first)
            page.wait_for_timeout(1_500)
            save("department-sign-in")
        browser.close()
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", help="a running operations center (default: start the demo)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--warmup", type=float, default=75.0, help="seconds of simulated city")
    args = ap.parse_args()
    with ExitStack() as stack:
        base = args.url
        if not base:
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cityops-shots-")))
            running = stack.enter_context(demo_stack(state, simulator=True, rate=20.0))
            base = running.base
            print(f"demo at {base}; letting the city run {args.warmup:.0f} s", flush=True)
            time.sleep(args.warmup)
        for path in shoot(base, args.out):
            print(path)


if __name__ == "__main__":
    main()
