"""What the operations center offers a caller on an incident: role x ownership x stage.

The same decisions are checked against the real routes in
tests/integration/test_ops_api.py; here the whole table, with no I/O.
"""

from __future__ import annotations

import pytest

from api.ops import IncidentState, incident_actions, role_actions

OWN, OTHER = "310101-water", "310101-roads"


def state(stage: str, acknowledged: bool = True, department: str | None = OWN) -> IncidentState:
    return IncidentState(
        status="closed" if stage == "closed" else "open",
        stage=stage,
        acknowledged=acknowledged,
        department_code=department,
    )


# (stage, acknowledged) -> what operators and dispatchers may do, what the incident's
# own department may do.
TABLE = [
    ("reported", False, ["acknowledge", "dispatch"], []),
    ("reported", True, ["dispatch"], []),
    ("dispatched", False, ["acknowledge", "accept", "resolve"], ["accept", "resolve"]),
    ("dispatched", True, ["accept", "resolve"], ["accept", "resolve"]),
    ("accepted", True, ["resolve"], ["resolve"]),
    ("resolved", False, ["acknowledge", "verify"], []),
    ("resolved", True, ["verify"], []),
    ("closed", False, [], []),
    ("closed", True, [], []),
]


@pytest.mark.parametrize(("stage", "acknowledged", "staff", "department"), TABLE)
def test_actions_by_role_and_stage(
    stage: str, acknowledged: bool, staff: list[str], department: list[str]
) -> None:
    incident = state(stage, acknowledged)
    assert incident_actions("operator", None, incident) == staff
    assert incident_actions("dispatcher", None, incident) == staff
    assert incident_actions("department", OWN, incident) == department
    # Another department's incident, and the roles that change nothing: no commands.
    assert incident_actions("department", OTHER, incident) == []
    for role in ("auditor", "citizen", "gateway"):
        assert incident_actions(role, None, incident) == []


def test_a_department_never_acts_on_an_incident_without_a_department() -> None:
    incident = state("dispatched", department=None)
    assert incident_actions("department", OWN, incident) == []
    unplaced = state("reported", acknowledged=False, department=None)
    assert incident_actions("dispatcher", None, unplaced) == ["acknowledge", "dispatch"]


def test_role_actions_follow_the_routes_role_sets() -> None:
    assert role_actions("operator") == {
        "incidents": ["acknowledge", "dispatch", "accept", "resolve", "verify"],
        "cases": ["submit"],
    }
    assert role_actions("dispatcher") == {
        "incidents": ["acknowledge", "dispatch", "accept", "resolve", "verify"],
        "cases": [
            "submit",
            "accept",
            "reject",
            "assign",
            "approve_extension",
            "refuse_extension",
            "rate",
            "cancel",
            "add_co_handler",
            "waive_co_handling",
            "uphold_dispute",
            "reject_dispute",
        ],
    }
    assert role_actions("department") == {
        "incidents": ["accept", "resolve"],
        "cases": [
            "start",
            "resolve",
            "return",
            "request_extension",
            "answer_co_handling",
            "dispute",
            "contact_citizen",
        ],
    }
    assert role_actions("auditor") == {"incidents": [], "cases": []}
