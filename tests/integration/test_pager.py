"""The pager on the real services: a critical alarm nobody acknowledges climbs street ->
district -> city under a controlled clock and stops when acknowledged (a page racing the
acknowledgement sends nothing); a test webhook and a test SMS gateway, which drop
repeats by the idempotency key as real gateways do, receive exactly the pages expected,
each once, also when the pager process is SIGKILLed mid-send."""

from __future__ import annotations

import hashlib
import hmac
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from core.app import CityApp
from core.incident import Incident
from core.paging import escalation_id
from core.paging.desk import PagerDesk
from core.paging.policy import load_paging_policy
from infra.channels import channels_from_settings
from infra.pgstore import make_pool
from infra.settings import Settings
from projections.pages import PageProjection, PageQueries
from projections.runner import ProjectionWorker
from tests.helpers.city import city_with
from tests.helpers.db import project, rows
from tests.helpers.waiting import wait_until
from tests.helpers.web import bearer, served
from tests.helpers.workers import sigkill, start_worker, stop_all
from workers.pager import Pager

pytestmark = pytest.mark.integration

STREET = "310101001"
GRID = f"{STREET}002003"
SECRET = "test-webhook-secret-0123456789abcdef"


@dataclass
class Receiver:
    """A webhook or an SMS gateway: records every request, takes each key once (a repeat is
    answered 200 and dropped), and can hold its first request unanswered."""

    hold_first: bool = False
    fail_first: int = 0  # answer this many requests 503 first
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    accepted: dict[str, bytes] = field(default_factory=dict)
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def keys(self) -> list[str]:
        with self.lock:
            return [key for key, _, _ in self.requests]

    def take(self, key: str, headers: dict[str, str], body: bytes) -> int:
        """Record the request; 0 to answer 200, 1 to hold it first, 503 to refuse it."""
        with self.lock:
            first = not self.requests
            self.requests.append((key, headers, body))
            if len(self.requests) <= self.fail_first:
                return 503
            self.accepted.setdefault(key, body)
        return 1 if first and self.hold_first else 0


@contextmanager
def receiving(hold_first: bool = False) -> Iterator[Receiver]:
    receiver = Receiver(hold_first=hold_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = receiver.take(headers.get("x-cityops-key", ""), headers, body)
            if answer == 1:
                receiver.held.set()
                receiver.release.wait(60)  # the sender is killed meanwhile
            try:
                self.send_response(503 if answer == 503 else 200)
                self.end_headers()
            except OSError:
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()


def write_policy(path: Path, hook: str, sms: str, delays: tuple[int, int, int]) -> Path:
    street, district, city = delays
    policy = {
        "version": 1,
        "max_attempts": 5,
        "triggers": {
            "critical_alarm": {
                "critical": True,
                "levels": [
                    {"level": "street", "after_minutes": street},
                    {"level": "district", "after_minutes": district},
                    {"level": "city", "after_minutes": city},
                ],
            }
        },
        "people": [
            {
                "id": "dispatcher:street-duty",
                "covers": [{"level": "street", "area": STREET}],
                "addresses": {"webhook": hook},
                "channels": ["in_app", "webhook"],
            },
            {
                "id": "dispatcher:district-duty",
                "covers": [{"level": "district", "area": "310101"}],
                "addresses": {"sms": "13800000002"},
                "channels": ["in_app", "sms"],
            },
            {
                "id": "operator:city-duty",
                "covers": [{"level": "city"}],
                "addresses": {"sms": "13800000003", "webhook": hook},
                "channels": ["sms", "webhook"],
            },
            {
                "id": "dispatcher:elsewhere",
                "covers": [{"level": "street", "area": "310104001"}],
                "addresses": {"sms": "13800000004"},
                "channels": ["sms"],
            },
        ],
    }
    path.write_text(yaml.safe_dump(policy, allow_unicode=True))
    return path


def district_duty_policy(tmp_path: Path, triggers: dict[str, Any], **duty: Any) -> Path:
    """A policy file of ``triggers`` and one person on duty for Huangpu (310101)."""
    person = {"id": "dispatcher:district-duty", "covers": [{"level": "district", "area": "310101"}]}
    path = tmp_path / "paging.yaml"
    policy = {"version": 1, "triggers": triggers, "people": [{**person, **duty}]}
    path.write_text(yaml.safe_dump(policy, allow_unicode=True))
    return path


def critical_alarm(app: CityApp) -> Incident:
    incident = Incident.open(
        uuid.uuid4(),
        kind="sensor_alarm",
        title="积水 / water over the kerb",
        category="flooding",
        severity="critical",
        device_id=None,
        rule_id="water_level_high",
        rule_version=1,
        lon=121.49,
        lat=31.23,
        grid_code=GRID,
        district_code="310101",
        department_code="310101-water",
        metric="water_level",
        value=80.0,
        reading_ts=None,
        actor="system:sensor-monitor",
        correlation_id="t:alarm",
    )
    app.save(incident)
    return incident


@dataclass
class Rig:
    settings: Settings
    app: CityApp
    pager: Pager
    queries: PageQueries
    now: list[datetime]
    hook: Receiver
    sms: Receiver

    def at(self, offset: timedelta) -> dict[str, int]:
        """One pager pass with the clock at the alarm's opening plus ``offset``."""
        self.now[0] = self.opened + offset
        return self.pager.tick()

    opened: datetime = field(default_factory=lambda: datetime.now(UTC))


@pytest.fixture
def rig(settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    with receiving() as hook, receiving() as sms:
        policy_file = write_policy(tmp_path / "paging.yaml", hook.url, sms.url, (0, 10, 30))
        configured = settings.model_copy(
            update={
                "paging_policy_file": policy_file,
                "pager_webhook_secret": SECRET,
                "sms_gateway_url": sms.url,
            }
        )
        configured = Settings(**configured.model_dump())  # SecretStr from the text
        app = city_with(configured, [])
        now = [datetime.now(UTC)]
        with closing(make_pool(configured, max_size=2)) as pool:
            queries = PageQueries(pool)
            view = ProjectionWorker(app, configured.database_url, [PageProjection()])
            pager = Pager(
                PagerDesk(app, load_paging_policy(policy_file)),
                queries,
                view,
                channels_from_settings(configured),
                clock=lambda: now[0],
            )
            try:
                yield Rig(configured, app, pager, queries, now, hook, sms)
            finally:
                view.close()
                app.close()


def pages(rig: Rig) -> list[tuple[str, str, str, str]]:
    """(level, person, channel, delivery) of every page, in a stable order."""
    found = rows(
        rig.settings,
        "SELECT level, person, channel, delivery FROM paging_pages ORDER BY paged_at, person,"
        " channel",
    )
    return [tuple(r) for r in found]


def test_a_critical_alarm_climbs_twice_and_stops_when_acknowledged(rig: Rig) -> None:
    incident = critical_alarm(rig.app)
    project(rig.settings)
    rig.opened = rig.app.get_incident(incident.id).created_on
    escalation = escalation_id("critical_alarm", f"incident:{incident.id}")

    assert rig.at(timedelta(seconds=1))["opened"] == 1
    assert [p[:3] for p in pages(rig)] == [
        ("street", "dispatcher:street-duty", "in_app"),
        ("street", "dispatcher:street-duty", "webhook"),
    ]
    assert rig.at(timedelta(minutes=9))["paged"] == 0
    assert rig.at(timedelta(minutes=10))["paged"] == 2  # first climb: the district
    assert (
        rig.at(timedelta(minutes=30))["paged"] == 3
    )  # second climb: the city (in-app, SMS, webhook)
    assert {(p[1], p[2], p[3]) for p in pages(rig) if p[2] != "in_app"} == {
        ("dispatcher:street-duty", "webhook", "delivered"),
        ("dispatcher:district-duty", "sms", "delivered"),
        ("operator:city-duty", "sms", "delivered"),
        ("operator:city-duty", "webhook", "delivered"),
    }
    assert len(rig.hook.requests) == 2
    assert len(rig.sms.requests) == 2

    # The person's pages, and the acknowledgement over HTTP (their own page only).
    with served(rig.settings) as client:
        mine = bearer(rig.settings, "dispatcher", "district-duty")
        listed = client.get("/api/v1/me/pages", headers=mine)
        assert listed.status_code == 200, listed.text
        body = listed.json()
        assert body["person"] == "dispatcher:district-duty"
        assert {(p["level"], p["channel"]) for p in body["pages"]} == {
            ("district", "in_app"),
            ("district", "sms"),
        }
        page = next(p for p in body["pages"] if p["channel"] == "in_app")
        theirs = bearer(rig.settings, "dispatcher", "street-duty")
        path = f"/api/v1/pages/{page['page_id']}/acknowledge"
        assert client.post(path, headers=theirs).status_code == 403
        acked = client.post(path, headers=mine)
        assert acked.status_code == 200, acked.text
        assert acked.json()["acknowledged_by"] == "dispatcher:district-duty"
        assert client.post(path, headers=mine).status_code == 409
        unknown = client.post(f"/api/v1/pages/{uuid.uuid4()}/acknowledge", headers=mine)
        assert unknown.status_code == 404
        # The audit trail: who was told, over which channel, when, and who took it.
        trail = client.get(
            f"/api/v1/audit/escalations/{escalation}/history",
            headers=bearer(rig.settings, "auditor"),
        )
        assert trail.status_code == 200, trail.text
        events = trail.json()["events"]
        names = [e.get("event") or e.get("type") for e in events]
        assert len(events) == 1 + 7 + 4 + 1, names  # opened, 7 pages, 4 delivered, acked
        assert "dispatcher:district-duty" in trail.text

    assert rig.at(timedelta(hours=2))["paged"] == 0
    state = rig.pager.desk.get(escalation)
    assert (state.status, state.acknowledged_by) == ("acknowledged", "dispatcher:district-duty")
    assert len(rig.hook.requests) == 2
    assert len(rig.sms.requests) == 2
    assert "dispatcher:elsewhere" not in {p[1] for p in pages(rig)}


def test_a_page_racing_the_acknowledgement_sends_nothing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident = critical_alarm(rig.app)
    project(rig.settings)
    rig.opened = rig.app.get_incident(incident.id).created_on
    escalation = escalation_id("critical_alarm", f"incident:{incident.id}")
    rig.at(timedelta(seconds=1))
    desk = rig.pager.desk
    stale = desk.get(escalation)  # what the pager loaded just before the acknowledgement
    with served(rig.settings) as client:
        (page,) = [
            p
            for p in client.get(
                "/api/v1/me/pages", headers=bearer(rig.settings, "dispatcher", "street-duty")
            ).json()["pages"]
            if p["channel"] == "in_app"
        ]
        acked = client.post(
            f"/api/v1/pages/{page['page_id']}/acknowledge",
            headers=bearer(rig.settings, "dispatcher", "street-duty"),
        )
        assert acked.status_code == 200, acked.text
    loads = iter([stale])
    fresh: Callable[[uuid.UUID], Any] = desk.get
    with monkeypatch.context() as patch:
        patch.setattr(desk, "get", lambda key: next(loads, None) or fresh(key))
        # The district's pages are due on what the pager loaded; its save loses to the
        # acknowledgement, and the reload finds the escalation ended.
        assert desk.escalate(escalation, rig.opened + timedelta(minutes=10), "t:race") == []
    assert rig.at(timedelta(minutes=40))["paged"] == 0
    assert {p[0] for p in pages(rig)} == {"street"}
    assert rig.sms.requests == []
    assert len(rig.hook.requests) == 1  # the street's webhook page, sent before


def test_acknowledging_the_incident_stops_its_escalation(rig: Rig) -> None:
    incident = critical_alarm(rig.app)
    project(rig.settings)
    rig.opened = rig.app.get_incident(incident.id).created_on
    rig.at(timedelta(seconds=1))
    rig.app.acknowledge_incident(incident.id, "operator:zhang", "on it", "t:ack")
    project(rig.settings)
    assert rig.at(timedelta(minutes=11))["stopped"] == 1
    assert rig.at(timedelta(minutes=40))["paged"] == 0
    assert {p[0] for p in pages(rig)} == {"street"}
    found = rig.pager.desk.get(escalation_id("critical_alarm", f"incident:{incident.id}"))
    assert found.status == "stopped"


def _verified(receiver: Receiver) -> None:
    """Every webhook request is signed over its timestamp and body."""
    for key, headers, body in receiver.requests:
        stamp = headers["x-cityops-timestamp"]
        expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        assert headers["x-cityops-signature"] == f"sha256={expected.hexdigest()}"
        assert orjson.loads(body)["key"] == key


def test_webhook_and_sms_get_each_page_once_across_sigkills(
    settings: Settings, tmp_path: Path
) -> None:
    app = city_with(settings, [])
    with receiving(hold_first=True) as hook, receiving(hold_first=True) as sms:
        policy_file = write_policy(tmp_path / "paging.yaml", hook.url, sms.url, (0, 0, 0))
        env = {
            "CITYOPS_PAGING_POLICY_FILE": str(policy_file),
            "CITYOPS_PAGER_WEBHOOK_SECRET": SECRET,
            "CITYOPS_SMS_GATEWAY_URL": sms.url,
            "CITYOPS_PAGER_POLL_S": "0.3",
        }
        incident = critical_alarm(app)
        project(settings)
        procs = [start_worker(settings, "pager", **env)]
        try:
            # Killed while the webhook holds its first page, then while the SMS gateway
            # holds its own: each is sent again, with the same key.
            def holding() -> Receiver | None:
                return next(
                    (r for r in (hook, sms) if r.held.is_set() and not r.release.is_set()), None
                )

            for _ in range(2):
                receiver = wait_until(
                    holding, timeout=90, what="a page held mid-send", interval=0.05
                )
                assert receiver is not None
                sigkill(procs[-1])
                receiver.release.set()
                procs.append(start_worker(settings, "pager", **env))

            def delivered() -> bool:
                found = rows(
                    settings, "SELECT delivery FROM paging_pages WHERE channel <> 'in_app'"
                )
                return len(found) == 4 and {r[0] for r in found} == {"delivered"}

            wait_until(delivered, timeout=90, what="every outside page delivered")
        finally:
            stop_all(procs)
        expected = {
            str(r[0]): r[1]
            for r in rows(
                settings, "SELECT page_id, channel FROM paging_pages WHERE channel <> 'in_app'"
            )
        }
        assert sorted(hook.accepted) == sorted(k for k, c in expected.items() if c == "webhook")
        assert sorted(sms.accepted) == sorted(k for k, c in expected.items() if c == "sms")
        for receiver in (hook, sms):
            keys = receiver.keys()
            first = keys[0]
            assert keys.count(first) == 2  # held, killed, resent with the same key
            assert all(keys.count(k) == 1 for k in set(keys) - {first})
        _verified(hook)
        assert {orjson.loads(b)["to"] for b in sms.accepted.values()} == {
            "13800000002",
            "13800000003",
        }
    subject = f"incident:{incident.id}"
    assert rows(settings, "SELECT status FROM paging_escalations WHERE subject = %s", subject) == [
        ("open",)
    ]
    app.close()


def test_a_dispute_not_arbitrated_in_time_pages_the_district_until_arbitrated(
    settings: Settings, tmp_path: Path
) -> None:
    from core.case import ServiceCase, case_id

    policy_file = district_duty_policy(
        tmp_path, {"dispute_unarbitrated": {"levels": [{"level": "district", "after_minutes": 0}]}}
    )
    app = city_with(settings, [])
    now = datetime.now(UTC)
    stamp = {"actor": "dispatcher:li", "correlation_id": "t:dispute"}
    case = ServiceCase.submit(
        case_id("hotline", f"d-{uuid.uuid4().hex[:8]}"),
        channel="hotline",
        external_id="d-1",
        category="overflowing_bin",
        categories_version=1,
        description="bins",
        lon=121.49,
        lat=31.23,
        address=None,
        attributes={},
        citizen_id=None,
        contact_token=None,
        **stamp,
    )
    case.accept(reason="registered", **stamp)
    case.assign(
        department_code="310101-sanitation",
        grid_code=GRID,
        district_code="310101",
        decision={"by": "dispatcher"},
        due_at=now + timedelta(days=2),
        due_soon_at=now + timedelta(days=1),
        reason="",
        **stamp,
    )
    by = now + timedelta(hours=1)
    case.raise_dispute(
        reason="a private compound",
        proposed_department_code="310101-housing",
        arbitrate_by=by,
        actor="department:s1",
        correlation_id="t:dispute",
    )
    app.save(case)
    project(settings)
    clock = [now + timedelta(minutes=30)]
    with closing(make_pool(settings, max_size=2)) as pool:
        view = ProjectionWorker(app, settings.database_url, [PageProjection()])
        pager = Pager(
            PagerDesk(app, load_paging_policy(policy_file)),
            PageQueries(pool),
            view,
            {},
            clock=lambda: clock[0],
        )
        assert pager.tick()["opened"] == 0  # not late yet
        clock[0] = by + timedelta(minutes=1)
        assert pager.tick()["paged"] == 1
        assert PageQueries(pool).pages_of("dispatcher:district-duty")[0]["trigger"] == (
            "dispute_unarbitrated"
        )
        case = app.get_typed(case.id, ServiceCase, "case")
        case.reject_dispute(reason="a public road", **stamp)
        app.save(case)
        project(settings)
        assert pager.tick()["stopped"] == 1
        view.close()
    app.close()


def test_a_gateway_that_fails_gets_the_page_again_later_with_the_same_key(rig: Rig) -> None:
    rig.sms.fail_first = 4  # the first attempt's 3 tries, and the second attempt's first
    rig.pager.poll_s = 0.05  # the pause before a failed page is tried again: 0.05 s x 2^n
    incident = critical_alarm(rig.app)
    project(rig.settings)
    rig.opened = rig.app.get_incident(incident.id).created_on
    rig.at(timedelta(seconds=1))
    rig.at(timedelta(minutes=10))
    assert ("district", "dispatcher:district-duty", "sms", "failed") in pages(rig)

    def delivered() -> bool:
        rig.at(timedelta(minutes=11))
        return ("district", "dispatcher:district-duty", "sms", "delivered") in pages(rig)

    wait_until(delivered, timeout=30, what="the SMS page delivered on a later pass")
    assert len(rig.sms.requests) == 5
    assert len({key for key, _, _ in rig.sms.requests}) == 1
    assert len(rig.sms.accepted) == 1
    (page,) = rows(rig.settings, "SELECT attempts FROM paging_pages WHERE channel = 'sms'")
    assert page == (2,)


def test_an_alarm_first_seen_critical_late_starts_its_escalation_then(rig: Rig) -> None:
    incident = critical_alarm(rig.app)
    project(rig.settings)
    rig.opened = rig.app.get_incident(incident.id).created_on
    # First seen an hour after it opened (raised to critical since, or the pager was
    # down): it starts then, less CRITICAL_SINCE (2 min): the street at once, the district
    # ten minutes after the start, not every level at once.
    rig.at(timedelta(hours=1))
    assert {p[0] for p in pages(rig)} == {"street"}
    rig.at(timedelta(hours=1, minutes=7))
    assert {p[0] for p in pages(rig)} == {"street"}
    rig.at(timedelta(hours=1, minutes=8, seconds=5))
    assert {p[0] for p in pages(rig)} == {"street", "district"}


def test_an_email_page_goes_through_the_notifiers_smtp_adapter_with_its_key(
    settings: Settings, tmp_path: Path
) -> None:
    from tests.integration.test_smtp_notify import Inbox, serve

    policy_file = district_duty_policy(
        tmp_path,
        {
            "critical_alarm": {
                "critical": True,
                "levels": [{"level": "district", "after_minutes": 0}],
            }
        },
        addresses={"email": "duty@huangpu.example"},
        channels=["email"],
    )
    inbox = Inbox()
    app = city_with(settings, [])
    critical_alarm(app)
    project(settings)
    with serve(inbox) as smtp, closing(make_pool(settings, max_size=2)) as pool:
        mailing = settings.model_copy(
            update={"notify_backend": "smtp", "smtp_host": "127.0.0.1", "smtp_port": smtp.port}
        )
        view = ProjectionWorker(app, settings.database_url, [PageProjection()])
        pager = Pager(
            PagerDesk(app, load_paging_policy(policy_file)),
            PageQueries(pool),
            view,
            channels_from_settings(mailing),
        )
        assert pager.tick()["delivered"] == 1
        assert pager.tick()["delivered"] == 0
        view.close()
    ((_, to, message),) = inbox.received
    (key,) = rows(settings, "SELECT page_id FROM paging_pages WHERE channel = 'email'")
    assert to == ["duty@huangpu.example"]
    assert message["X-CityOps-Key"] == str(key[0])
    assert "water over the kerb" in message.get_content()
    app.close()
