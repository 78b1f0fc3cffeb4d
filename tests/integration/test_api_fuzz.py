"""Schemathesis over every operation of the app's own OpenAPI document, as every role.

The document the app serves at ``/openapi.json`` is what Open311 clients and the
project's own API clients are written against, so every answer must be one it
documents. For each operation, Hypothesis draws requests that fit the document
(positive) and requests that do not (negative), each sent with the credentials of a
caller the route admits (a bearer token or an API key of each role it lets through;
departments carry their department code, citizens their citizen id) and now and then
none, or a role it refuses. Path parameters are sometimes replaced by ids the seeded
city really has (cases, incidents, sensors, departments, services), so the handlers
behind the 404s run too. Every answer is checked: no 5xx, a documented status code, a
documented content type and a body matching the documented schema. Afterwards the case
read model must still catch up: a command whose text PostgreSQL cannot store would have
stopped its projector.

The run is seeded (``derandomize``): the same command draws the same requests.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err

from api.auth import RoleGate
from cityops.bootstrap import api_app
from infra.apikeys import PgApiKeys
from tests.helpers.builders import flood_alarm
from tests.helpers.city import World, open_city, served_city

pytestmark = pytest.mark.integration

# Examples per operation; about 60 operations make about 500 requests in all.
EXAMPLES = {GenerationMode.POSITIVE: 6, GenerationMode.NEGATIVE: 3}
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
        },
        # The test sends the credentials itself, a caller at a time.
        "generation": {"with-security-parameters": False},
        # The live channel is an endless event stream: its first event is the answer.
        "max-stream-events": 1,
        "request-timeout": 30,
    }
)


@dataclass(frozen=True)
class Caller:
    """Credentials of one kind: ``role`` None is a request without any."""

    name: str
    role: str | None
    headers: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass
class Target:
    """The seeded city behind the fuzzed app: its callers and the ids it really has."""

    world: World
    callers: list[Caller]
    known: dict[str, list[str]]


def _callers(world: World, department: str, gateway: str) -> list[Caller]:
    citizen = uuid.uuid4()
    tokens = [
        Caller("operator token", "operator", world.headers("operator")),
        Caller("dispatcher token", "dispatcher", world.headers("dispatcher")),
        Caller("department token", "department", world.dept(department)),
        Caller("auditor token", "auditor", world.headers("auditor")),
        Caller("citizen token", "citizen", world.citizen(citizen)),
        Caller("gateway token", "gateway", world.headers("gateway", gateway)),
    ]
    keys = PgApiKeys(world.pool)
    suffix = uuid.uuid4().hex[:8]
    api_keys = [
        Caller(
            f"{role} API key",
            role,
            {"X-API-Key": keys.create(f"{name}-{suffix}", role, dept)},
        )
        for role, name, dept in (
            ("operator", "ops-console", None),
            ("dispatcher", "hotline", None),
            ("department", f"staff-{department}", department),
            ("auditor", "auditors", None),
            ("citizen", "citizen-app", None),
            ("gateway", gateway, None),
        )
    ]
    return [Caller("no credentials", None), *tokens, *api_keys]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The seeded city with cases at several stages and one open incident."""
    with served_city(tmp_path_factory.mktemp("city") / "city") as world:
        sensors = world.layers.sensors
        water = sensors[sensors.sensor_type == "water_level"].iloc[0]
        department = "310101-water"
        callers = _callers(world, department, str(water.gateway_id))
        citizen = next(c for c in callers if c.name == "citizen token")
        cases = []
        for i, stage in enumerate(("submitted", "started", "resolved")):
            lon, lat = world.point("310101")
            filed = world.client.post(
                "/api/v1/cases",
                json={
                    "category": "flooding",
                    "description": f"flooded crossing {i}",
                    "lon": lon,
                    "lat": lat,
                    "attributes": {"water_depth": "knee"},
                    "contact": {"phone": "13800138000"},
                },
                headers=citizen.headers,
            )
            assert filed.status_code == 201, filed.text
            case_id = filed.json()["case_id"]
            dept = world.dept(department)
            if stage in ("started", "resolved"):
                assert world.command(case_id, "start", dept).status_code == 200
            if stage == "resolved":
                waive = {"reason": "the water is gone"}  # the catalogue's co-handlers
                waived = world.command(
                    case_id, "co-handling/waive", world.headers("dispatcher"), waive
                )
                assert waived.status_code == 200, waived.text
                done = world.command(case_id, "resolve", dept, {"reply": "pumped out"})
                assert done.status_code == 200, done.text
            cases.append(case_id)
        with open_city(world.settings) as city:
            incident = str(flood_alarm(city.app, str(water.device_id)))
        world.sync()
        known = {
            "case_id": cases,
            "request_id": cases,
            "incident_id": [incident],
            # The water sensor first: its gateway's callers may send its telemetry.
            "device_id": [str(water.device_id), *(str(d) for d in sensors.device_id.iloc[:2])],
            "aggregate_id": [cases[0], incident, str(water.device_id)],
            "department_code": [department, *sorted(world.departments)[:2]],
            "service_code": ["flooding", "road_damage"],
            # The OGC API's collections, and a feature of each (drawn apart: any pair).
            "collection_id": ["districts", "grid", "sensors", "incidents", "cases"],
            "feature_id": [
                "310101",
                str(world.layers.grid.grid_code.iloc[0]),
                str(water.device_id),
                incident,
                cases[0],
            ],
            "tile_matrix_set_id": ["WebMercatorQuad"],  # when the OGC tiles are served
        }
        yield Target(world, callers, known)


# -- who each route lets through --------------------------------------------------------


def _required_roles(route: RouteContext) -> set[str] | None:
    """The roles the route's ``api.auth.RoleGate`` dependencies let through (None: no such
    check, so any caller gets as far as the handler)."""
    found: set[str] | None = None
    # The route as included: its dependencies with those of ``include_router`` in front.
    pending = list(route.dependant.dependencies)
    while pending:
        dep = pending.pop()
        pending.extend(dep.dependencies)
        if isinstance(dep.call, RoleGate):
            roles = set(dep.call.roles)
            found = roles if found is None else found & roles
    return found


def admitted_roles(app: FastAPI) -> dict[tuple[str, str], set[str] | None]:
    return {
        (method.upper(), str(route.path)): _required_roles(route)
        for route in iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute)
        for method in route.methods or ()
    }


def callers_for(roles: set[str] | None, callers: list[Caller]) -> list[Caller]:
    """The callers ``roles`` admit, and some that should be refused: none at all, and
    (when there is one) a token of a role the route does not let through."""
    if roles is None:
        return callers
    admitted = [c for c in callers if c.role in roles]
    refused = [c for c in callers if c.role is not None and c.role not in roles][:1]
    return [*admitted, callers[0], *refused]


# -- the run ----------------------------------------------------------------------------


@dataclass
class Tally:
    examples: int = 0
    operations: set[str] = field(default_factory=set)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # first failure per operation
    # Operations with nothing a request could get wrong (no parameters, no body).
    unnegatable: set[str] = field(default_factory=set)


def fuzz(
    operation: Any,
    mode: GenerationMode,
    callers: list[Caller],
    known: dict[str, list[str]],
    tally: Tally,
) -> None:
    label = operation.label
    names = [name for name in known if "{" + name + "}" in operation.path]
    # A known id first: Hypothesis tries the first branch of a choice first.
    ids = st.fixed_dictionaries({n: st.sampled_from(known[n]) | st.none() for n in names})

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        caller=st.sampled_from(callers),
        ids=ids,
    )
    def run(case: Any, caller: Caller, ids: dict[str, str | None]) -> None:
        for name, value in ids.items():
            if value is not None:
                case.path_parameters[name] = value
        tally.examples += 1
        try:
            response = case.call_and_validate(headers=caller.headers)
        # Every failure is reported at the end, not just the first; schemathesis raises its
        # check failures as a FailureGroup, a BaseExceptionGroup.
        except (FailureGroup, Exception) as exc:
            # Anything else is the app's own exception (the client raises server errors).
            what = (
                str(exc) if isinstance(exc, FailureGroup) else f"{exc!r}\n{case.as_curl_command()}"
            )
            tally.failures.setdefault(label, f"[{mode.value}, {caller.name}] {what}")
            return
        tally.statuses.setdefault(label, Counter())[response.status_code] += 1

    try:
        run()
    except Unsatisfiable:
        if mode is not GenerationMode.NEGATIVE:
            raise
        tally.unnegatable.add(label)
    tally.operations.add(label)


def test_every_route_answers_as_documented(target: Target) -> None:
    app = api_app(target.world.settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    roles = admitted_roles(app)
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # a part of the document schemathesis cannot read
            raise result.err()
        operations.append(result.ok())
    tally = Tally()
    t0 = time.perf_counter()
    for operation in operations:
        callers = callers_for(roles[(operation.method.upper(), operation.path)], target.callers)
        for mode in EXAMPLES:
            fuzz(operation, mode, callers, target.known, tally)
    elapsed = time.perf_counter() - t0
    reached = {label for label, seen in tally.statuses.items() if set(seen) - {401, 403}}
    print(
        f"\n{tally.examples} examples over {len(tally.operations)} operations in {elapsed:.0f} s;"
        f" {len(reached)} reached past access control; {len(tally.failures)} failing;"
        f" no invalid request for {sorted(tally.unnegatable)}"
    )
    for label in sorted(tally.statuses):
        print(f"  {label}: {dict(sorted(tally.statuses[label].items()))}")
    assert len(tally.operations) == len(operations) >= 40
    assert not tally.failures, "\n\n".join(f"{k}:\n{v}" for k, v in sorted(tally.failures.items()))
    # Every operation ran its handler at least once, not only its access check.
    assert reached == tally.operations, sorted(tally.operations - reached)
    # What the commands recorded, the read models could take: a text PostgreSQL refuses
    # would have stopped the projector, and this would time out.
    target.world.sync()
