"""Time travel on real PostgreSQL: the views at past instants, replayed from the log (with
and without checkpoints), equal what the live views held then; the map from the touched
rows only equals the map from the full replay; the map as GeoJSON; a window of changes as
NDJSON; bad requests refused clearly."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
import psycopg
import pytest
from psycopg import sql

from cityops.bootstrap import city_app, city_layers, incident_desk, projections, seed
from core.case.desk import SubmitCase
from core.personal import Contact
from core.sensor import SensorSpec
from infra.settings import Settings
from projections import replay
from projections.checksum import IGNORED, VIEWS, checksums
from projections.positions import head
from tests.helpers.builders import flood_alarm
from tests.helpers.city import open_city
from tests.helpers.db import project
from tests.helpers.web import bearer, served

pytestmark = pytest.mark.integration


class Moment:
    """An instant of the scenario and what the live views held then."""

    def __init__(self, settings: Settings) -> None:
        with psycopg.connect(settings.database_url) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            self.views = checksums(conn)
            self.head = replay.at_position(conn, head(conn)).position
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            self.at: datetime = row[0]
            self.open_incidents = _count(
                conn, "SELECT count(*) FROM map_incidents WHERE status = 'open'"
            )
            self.sensors = _count(conn, "SELECT count(*) FROM map_sensors")


def _count(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0] or 0) if row else 0


def cells(settings: Settings, n: int) -> list[tuple[str, float, float]]:
    grid = city_layers(settings).grid
    out = []
    for row in grid.itertuples():
        c = row.geometry.representative_point()
        out.append((str(row.grid_code), c.x, c.y))
        if len(out) == n:
            return out
    raise AssertionError("the test city is too small")


@pytest.fixture
def scenario(settings: Settings) -> list[Moment]:
    """Three instants of a small city's day: alarms and reports, work done, more of both."""
    seed(settings)
    moments: list[Moment] = []
    with open_city(settings) as city:
        app, desk = city.app, city.desk
        incidents = incident_desk(settings, app)
        departments = sorted(desk.locator.departments())
        places = cells(settings, 4)
        app.register_sensors(
            [
                SensorSpec(f"wl-r{i}", "water_level", "gw-t", x, y, code, code[:6], "dept-water")
                for i, (code, x, y) in enumerate(places)
            ],
            actor="test",
            correlation_id="replay-seed",
        )

        def submit(key: str, x: float, y: float) -> UUID:
            return desk.submit(
                SubmitCase(
                    "hotline",
                    key,
                    "road_damage",
                    f"private text {key}",
                    lon=x,
                    lat=y,
                    contact=Contact.parse(phone="13800138000", name="Wang"),
                ),
                actor=f"citizen:{key}",
                correlation_id=key,
            ).id

        # 1: two alarms open incidents; five reports.
        opened = [flood_alarm(app, "wl-r0"), flood_alarm(app, "wl-r1")]
        cases = [submit(f"r{i}", places[i % 4][1], places[i % 4][2]) for i in range(5)]
        project(settings)
        moments.append(Moment(settings))
        # 2: one incident worked to closure; cases assigned, resolved, rated, cancelled.
        incidents.dispatch(opened[0], None, "user:dispatcher", "storm", "c2")
        incidents.accept(opened[0], "user:water", "c2")
        incidents.resolve(opened[0], "pumped", "user:water", "c2")
        incidents.verify(opened[0], True, "dry", "user:inspector", "c2")
        for i, case_id in enumerate(cases):
            if desk.get(case_id).status == "accepted":  # not placed by the intake policy
                desk.assign(case_id, departments[i % len(departments)], "dispatcher:d", "", "c2")
        desk.resolve(cases[0], "fixed", "department:x", "", "c2")
        desk.rate(cases[0], 5, "private text: thanks", "citizen:r0", "c2")
        desk.cancel(cases[1], "citizen:r1", "private text: solved it", "c2")
        project(settings)
        moments.append(Moment(settings))
        # 3: another alarm, more reports.
        flood_alarm(app, "wl-r2")
        for i in range(5, 9):
            submit(f"r{i}", places[i % 4][1], places[i % 4][2])
        project(settings)
        moments.append(Moment(settings))
    return moments


def replayed_views(
    settings: Settings, position: int, *, use_snapshots: bool
) -> tuple[dict[str, tuple[int, str]], replay.Replayed]:
    app = city_app(settings, pool_size=1)
    try:
        with psycopg.connect(settings.database_url) as conn, conn.transaction():
            done = replay.materialize(
                conn, app.mapper, projections(), position, use_snapshots=use_snapshots
            )
            views = checksums(conn)
        with psycopg.connect(settings.database_url) as conn:  # the temp tables are gone
            assert conn.execute("SELECT to_regclass('pg_temp.map_sensors')").fetchone() == (None,)
        return views, done
    finally:
        app.close()


def test_replay_at_each_instant_reproduces_the_live_views(
    settings: Settings, scenario: list[Moment]
) -> None:
    with psycopg.connect(settings.database_url) as conn:
        for m in scenario:
            assert replay.at_instant(conn, m.at).position == m.head
    for m in scenario:
        views, done = replayed_views(settings, m.head, use_snapshots=False)
        assert views == m.views
        assert (done.checkpoint, done.events) == (0, m.head)
    app = city_app(settings, pool_size=1)
    try:
        every = 7
        taken = replay.snapshot_up_to_head(
            settings.database_url, app.mapper, projections(), every=every
        )
        assert taken == list(range(every, scenario[-1].head + 1, every))
        # Nothing left to take: a second call is a no-op.
        assert (
            replay.snapshot_up_to_head(
                settings.database_url, app.mapper, projections(), every=every
            )
            == []
        )
    finally:
        app.close()
    for m in scenario:
        views, done = replayed_views(settings, m.head, use_snapshots=True)
        assert views == m.views
        assert done.checkpoint == m.head // every * every
        assert done.events == m.head - done.checkpoint
    with psycopg.connect(settings.database_url) as conn:
        storage = replay.snapshot_storage(conn)
    assert storage["checkpoints"] == len(taken)
    assert 0 < storage["row_versions"] < scenario[-1].head  # versions, not copies


def view_checksums(
    conn: psycopg.Connection[Any], done: replay.Replayed
) -> dict[str, tuple[int, str]]:
    """``checksums`` of the views as ``done`` reads them (``Replayed.views``)."""
    out = {}
    for table, key in VIEWS.items():
        rows = conn.execute(
            sql.SQL("SELECT (to_jsonb(t) - %s::text[])::text FROM {} t ORDER BY t.{}").format(
                done.views[table], sql.Identifier(key)
            ),
            (list(IGNORED),),
        ).fetchall()
        digest = hashlib.md5("\n".join(r[0] for r in rows).encode()).hexdigest()  # noqa: S324
        out[table] = (len(rows), digest)
    return out


def both_ways(
    settings: Settings, app: Any, position: int
) -> tuple[tuple[replay.Replayed, bytes, dict[str, Any]], ...]:
    """The map and the views' checksums at ``position``: from every row of the checkpoint
    (as the checksums replay), then replaying only the aggregates that need it."""
    out = []
    grid = orjson.loads(city_layers(settings).grid.to_json(drop_id=True))
    with psycopg.connect(settings.database_url) as conn:
        at = replay.at_position(conn, position)
        conn.commit()
        for touched_only in (False, True):
            with conn.transaction():
                done = replay.materialize(
                    conn, app.mapper, projections(), position, touched_only=touched_only
                )
                doc = replay.city_document(conn, at, done, grid)
                out.append((done, doc, view_checksums(conn, done)))
    return tuple(out)


def _created(conn: psycopg.Connection[Any], kind: str, after: int) -> tuple[int, str]:
    """The first event creating an aggregate (topic ending ``kind``) after ``after``."""
    row = conn.execute(
        "SELECT notification_id, originator_id::text FROM city_events WHERE topic LIKE %s"
        " AND notification_id > %s ORDER BY notification_id LIMIT 1",
        (f"%.{kind}", after),
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def test_the_map_from_touched_rows_equals_the_full_replay(
    settings: Settings, scenario: list[Moment]
) -> None:
    every = 5
    app = city_app(settings, pool_size=1)
    try:
        replay.snapshot_up_to_head(settings.database_url, app.mapper, projections(), every=every)
        checkpoint = scenario[1].head // every * every
        with psycopg.connect(settings.database_url) as conn:
            # A case submitted after a checkpoint: no snapshot row of it anywhere before.
            new_case, case_id = _created(conn, "CaseSubmitted", scenario[1].head)
            while new_case % every == 0:
                new_case, case_id = _created(conn, "CaseSubmitted", new_case)
        positions = [checkpoint, checkpoint + 1, new_case, *(m.head for m in scenario)]
        skipped = 0
        for position in positions:
            (full, full_doc, full_views), (fast, fast_doc, fast_views) = both_ways(
                settings, app, position
            )
            assert fast.checkpoint == full.checkpoint == position // every * every
            assert full.events == position - full.checkpoint
            assert fast.events <= full.events  # only aggregates active on both sides
            skipped += full.events - fast.events
            assert fast_views == full_views, position
            # The same map, feature for feature and byte for byte; only the count differs.
            assert fast_doc.partition(b',"layers":')[2] == full_doc.partition(b',"layers":')[2]
            assert fast_doc.partition(b',"layers":')[2], position
            if position == new_case:
                cases = orjson.loads(fast_doc)["layers"]["cases"]["features"]
                assert case_id in {f["id"] for f in cases}
            # Fewer rows restored: the others are read from the snapshots in place.
            assert fast.views != full.views
        assert skipped  # some rows came from the checkpoint after the position
        for m in scenario:
            assert both_ways(settings, app, m.head)[1][2] == m.views
    finally:
        app.close()


def test_a_sensor_key_held_by_an_untouched_row_replays_in_full(
    settings: Settings, scenario: list[Moment], caplog: pytest.LogCaptureFixture
) -> None:
    """map_sensors is keyed by device, not by the sensor aggregate: a sensor registered
    after the checkpoint under a device an untouched row holds is not inserted by the full
    replay (ON CONFLICT DO NOTHING), so the map from touched rows must not insert it."""
    with psycopg.connect(settings.database_url) as conn:
        seeded = _count(conn, "SELECT count(*) FROM map_sensors") - 4
        position = _count(  # the first sensor of the scenario's, registered after the city's
            conn,
            "SELECT notification_id FROM city_events WHERE originator_version = 1 AND"
            " originator_id = (SELECT sensor_id FROM map_sensors WHERE device_id = 'wl-r0')",
        )
    app = city_app(settings, pool_size=1)
    try:
        every = position - 1  # a checkpoint just before it, the next far after
        replay.snapshot_up_to_head(settings.database_url, app.mapper, projections(), every=every)
        with psycopg.connect(settings.database_url) as conn:
            device = conn.execute(
                "SELECT device_id FROM map_sensors WHERE sensor_id = (SELECT originator_id"
                " FROM city_events WHERE notification_id = %s)",
                (position,),
            ).fetchone()
            assert device is not None
            # A seeded sensor, untouched since, held that device at the checkpoint.
            conn.execute(
                "UPDATE replay_snapshot_map_sensors SET device_id = device_id || '-later'"
                " WHERE device_id = %s",
                device,
            )
            changed = conn.execute(
                "UPDATE replay_snapshot_map_sensors SET device_id = %s WHERE device_id = ("
                " SELECT min(device_id) FROM replay_snapshot_map_sensors WHERE from_pos <= %s"
                " AND (to_pos IS NULL OR to_pos > %s) AND sensor_type <> 'water_level')",
                (device[0], every, every),
            )
            assert changed.rowcount >= 1
        (full, full_doc, full_views), (fast, fast_doc, fast_views) = both_ways(
            settings, app, position
        )
        assert fast.checkpoint == full.checkpoint == every
        assert "replaying in full" in caplog.text
        assert fast.views == full.views
        assert (fast_doc, fast_views) == (full_doc, full_views)  # the full replay, twice
        sensors = orjson.loads(fast_doc)["layers"]["sensors"]["features"]
        assert len(sensors) == seeded
    finally:
        app.close()


def test_map_and_window_over_http(settings: Settings, scenario: list[Moment]) -> None:
    first, second, third = scenario
    with served(settings, as_role="auditor") as http:
        doc = http.get("/api/v1/audit/city", params={"at": first.at.isoformat()})
        assert doc.status_code == 200, doc.text
        city = doc.json()
        assert city["position"] == first.head
        layers = city["layers"]
        assert len(layers["incidents"]["features"]) == first.open_incidents == 2
        assert len(layers["sensors"]["features"]) == first.sensors
        alarmed = [f for f in layers["sensors"]["features"] if f["properties"]["state"] == "alarm"]
        assert sorted(f["id"] for f in alarmed) == ["wl-r0", "wl-r1"]
        open_cases = layers["cases"]["features"]
        assert len(open_cases) == 5
        assert all("description" not in f["properties"] for f in open_cases)
        assert all(f["geometry"]["type"] == "Point" for f in open_cases)
        grid = {f["id"]: f["properties"] for f in layers["grid"]["features"]}
        assert sum(p["open_incidents"] for p in grid.values()) == 2
        assert sum(p["sensors"] for p in grid.values()) <= first.sensors
        assert sum(p["open_cases"] for p in grid.values()) == 5
        assert all(f["geometry"] is not None for f in layers["grid"]["features"])

        later = http.get("/api/v1/audit/city", params={"position": second.head}).json()
        assert len(later["layers"]["incidents"]["features"]) == second.open_incidents == 1
        assert len(later["layers"]["cases"]["features"]) == 3  # one closed, one cancelled

        # The window between the first and the third instant, in pages of 10.
        window = {"from": first.at.isoformat(), "to": third.at.isoformat(), "limit": 10}
        events: list[dict[str, Any]] = []
        after = None
        while True:
            page = http.get(
                "/api/v1/audit/city/changes",
                params={**window, **({"after": after} if after else {})},
            )
            assert page.status_code == 200, page.text
            assert page.headers["content-type"].startswith("application/x-ndjson")
            lines = [orjson.loads(line) for line in page.content.splitlines()]
            assert lines[0]["kind"] == "window"
            assert lines[0]["from"]["position"] == first.head
            assert lines[0]["to"]["position"] == third.head
            assert lines[-1]["kind"] == "end"
            events += lines[1:-1]
            after = lines[-1]["next_after"]
            if after is None:
                break
        assert [e["position"] for e in events] == list(range(first.head + 1, third.head + 1))
        with psycopg.connect(settings.database_url) as conn:
            logged = conn.execute(
                "SELECT notification_id, originator_id::text, originator_version, topic"
                " FROM city_events WHERE notification_id > %s AND notification_id <= %s"
                " ORDER BY notification_id",
                (first.head, third.head),
            ).fetchall()
        assert [(e["position"], e["aggregate_id"], e["version"]) for e in events] == [
            r[:3] for r in logged
        ]
        assert [e["type"] for e in events] == [r[3].rpartition(":")[2] for r in logged]
        text = orjson.dumps(events).decode()
        for private in ("contact_token", "citizen_id", "private text", "13800138000"):
            assert private not in text
        submitted = [e for e in events if e["type"] == "ServiceCase.CaseSubmitted"]
        assert submitted
        assert all(e["event"]["actor"] == "citizen:[masked]" for e in submitted)
        assert all(e["recorded_at"] for e in events)

        # Bad requests: clear 422s; other roles: 403.
        now = third.at
        bad = {
            "future": ("/api/v1/audit/city", {"at": (now + timedelta(days=1)).isoformat()}),
            "before": ("/api/v1/audit/city", {"at": "2000-01-01T00:00:00+00:00"}),
            "no zone": ("/api/v1/audit/city", {"at": "2025-01-01T00:00:00"}),
            "both": ("/api/v1/audit/city", {"at": first.at.isoformat(), "position": 1}),
            "beyond head": ("/api/v1/audit/city", {"position": 10**9}),
            "reversed": (
                "/api/v1/audit/city/changes",
                {"from": third.at.isoformat(), "to": first.at.isoformat()},
            ),
            "page": ("/api/v1/audit/city/changes", {**window, "limit": replay.MAX_PAGE + 1}),
            "cursor": ("/api/v1/audit/city/changes", {**window, "after": third.head + 5}),
            "not a time": ("/api/v1/audit/city", {"at": "yesterday"}),
        }
        for what, (path, params) in bad.items():
            r = http.get(path, params=params)
            assert r.status_code == 422, (what, r.text)
            assert r.json()["detail"], what
        assert "future" in http.get(*bad["future"][:1], params=bad["future"][1]).json()["detail"]
        assert "before" in http.get(*bad["before"][:1], params=bad["before"][1]).json()["detail"]
        original = replay.MAX_WINDOW
        replay.MAX_WINDOW = 3
        try:
            r = http.get("/api/v1/audit/city/changes", params=window)
            assert r.status_code == 422
            assert "more than 3" in r.json()["detail"]
        finally:
            replay.MAX_WINDOW = original
        denied = http.get(
            "/api/v1/audit/city",
            params={"position": 1},
            headers=bearer(settings, "department", department="310101-water"),
        )
        assert denied.status_code == 403


def test_cli_writes_the_map_and_the_window(
    settings: Settings, scenario: list[Moment], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cityops.cli import app as cli

    monkeypatch.setenv("CITYOPS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CITYOPS_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    out = tmp_path / "city.json"
    done = runner.invoke(cli, ["replay", "--at", scenario[1].at.isoformat(), "--out", str(out)])
    assert done.exit_code == 0, done.output
    city = orjson.loads(out.read_bytes())
    assert city["position"] == scenario[1].head
    assert set(city["layers"]) == {"incidents", "sensors", "cases", "grid"}
    assert all(v["type"] == "FeatureCollection" for v in city["layers"].values())
    changes = tmp_path / "changes.ndjson"
    done = runner.invoke(
        cli,
        [
            "replay",
            "--from",
            scenario[0].at.isoformat(),
            "--to",
            scenario[2].at.isoformat(),
            "--out",
            str(changes),
        ],
    )
    assert done.exit_code == 0, done.output
    lines = [orjson.loads(x) for x in changes.read_bytes().splitlines()]
    assert lines[0]["kind"] == "window"
    assert lines[-1]["kind"] == "end"
    assert len(lines) - 2 == scenario[2].head - scenario[0].head == lines[-1]["events"]
    done = runner.invoke(cli, ["replay", "--snapshot", "--every", "10"])
    assert done.exit_code == 0, done.output
    assert "checkpoints taken" in done.output
    done = runner.invoke(cli, ["replay", "--at", "2000-01-01T00:00:00Z"])
    assert done.exit_code == 2
    assert "before the city's history" in done.output
