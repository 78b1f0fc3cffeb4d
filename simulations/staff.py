"""Simulated staff working the queues: dispatchers, department staff, field inspectors,
and the revisit calls (回访) that take citizens' ratings.

Dispatchers acknowledge and dispatch incidents, register held cases and dispatch the
unplaced or returned ones by hand, answer extension requests and arbitrate disputes;
departments make the first contact with the citizen (响应), start, resolve, now and then
return a case, dispute its assignment (异议) or ask for more time; co-handlers (协办)
answer their part first (or are waived); inspectors verify resolved incidents on site or
send them back (返工); the revisit call records each resolved case's rating.

The model (:class:`StaffModel`) is pure: what a person does to a case or an incident,
and when, is a function of the seed, the item's id, the stage it is in and when that
stage began. A stage is what the item shows (status or workflow stage, deadline, a
pending extension); each gets its own random stream, so a rerun with the same seed makes
the same decisions, and one item's decisions do not depend on which others exist.

Delays are fractions of the time the item has left (a department starts within the
first fifth of its time limit and resolves most work in time; ``late_share`` of it
after the deadline), bounded by ``min_delay_s`` and ``max_delay_s``, plus pick-up delays
in seconds for dispatchers, inspectors and revisit calls. Deadlines are the platform's
own; the demo compresses them (:func:`demo_time_files`) so that a day's work fits in
minutes and late work, due-soon marks and escalations show while one watches.

The driver (:class:`StaffSimulator`) acts through the public HTTP API as the people
would, each with their own bearer token: it lists open incidents and open cases, asks
the model for each item's next step, runs the steps whose time has come, and remembers
when it first saw each stage (the base of the stage's delays) and which steps it ran.
An answer 409 (another actor got there first) or 4xx is logged and the step dropped for
that stage; a transport error or 5xx (a restart) is logged and retried next tick. It
never stops on an API error.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from uuid import UUID

import httpx
import numpy as np
import yaml

from core.refdata import load_yaml
from infra.settings import Settings

log = logging.getLogger(__name__)

Kind = Literal["case", "incident"]
Role = Literal["dispatcher", "department", "operator"]
# Random streams, one per kind of decision (a new kind of decision gets a new number:
# the old ones then draw as before).
_CASE, _INCIDENT, _RATING = 1, 2, 3
_OPEN_CASES = ("submitted", "accepted", "assigned", "in_progress", "reopened", "resolved")
# A unit works these: the staff read the case's detail (co-handlers, dispute, contacts).
_WORKED = ("assigned", "in_progress", "reopened")
REPORT_EVERY_S = 60.0  # how often a running driver logs what it did
# Answers after which a step is worth trying again next tick.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


# -- the model ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Actor:
    """A simulated person: the role they sign in with, who they are, their department."""

    role: Role
    subject: str
    department: str | None = None


DISPATCHER = Actor("dispatcher", "sim-dispatcher")
# Field inspectors (核查员) verify on site; the API gives verification to operators.
INSPECTOR = Actor("operator", "sim-inspector")


def department_staff(code: str) -> Actor:
    """The department's simulated case officer."""
    return Actor("department", f"sim-staff-{code}", code)


@dataclass(frozen=True, slots=True)
class Step:
    """One thing a person does to an item, not before ``at`` (epoch seconds)."""

    kind: Kind
    item_id: str
    action: str  # the command's path under the item: "accept", "extension/approve", ...
    body: Mapping[str, Any]
    actor: Actor
    at: float
    key: str = ""  # tells apart steps of one action in a stage (each co-handler's answer)

    @property
    def path(self) -> str:
        return f"/api/v1/{self.kind}s/{self.item_id}/{self.action}"

    @property
    def done_key(self) -> str:
        return self.key or self.action


@dataclass(frozen=True, slots=True)
class CaseView:
    """What the staff see of a case: in a list (``GET /api/v1/cases``), in its detail
    while a unit works it (co-handlers, dispute, contacts: :meth:`with_detail`), and what
    the driver remembers of it (revisits it called for, a resolution that came late)."""

    case_id: str
    status: str
    category: str
    district_code: str | None = None
    department_code: str | None = None
    due_at: float | None = None
    possible_duplicates: tuple[str, ...] = ()
    extension_pending: bool = False
    extensions: int = 0
    revisits: int = 0
    resolved_late: bool = False
    # From the case's detail.
    co_handlers: tuple[str, ...] = ()  # the co-handling units yet to answer
    dispute_until: float | None = None  # the unit may dispute the assignment until then
    disputed: bool = False  # a dispute waits for a dispatcher
    contacts: int = 0
    respond_by: float | None = None  # the first contact with the citizen is due

    @classmethod
    def from_summary(cls, row: Mapping[str, Any]) -> CaseView:
        return cls(
            case_id=str(row["case_id"]),
            status=str(row["status"]),
            category=str(row["category"]),
            district_code=row.get("district_code"),
            department_code=row.get("department_code"),
            due_at=epoch(row.get("due_at")),
            possible_duplicates=tuple(str(c) for c in row.get("possible_duplicates") or ()),
            extension_pending=bool(row.get("extension_pending")),
            extensions=int(row.get("extensions") or 0),
        )

    def with_detail(self, detail: Mapping[str, Any]) -> CaseView:
        """This view with what the case's detail (``GET /api/v1/cases/{id}``) adds."""
        parts = detail.get("co_handlers") or {}
        return replace(
            self,
            extensions=int(detail.get("extensions") or self.extensions),
            revisits=max(self.revisits, int(detail.get("revisits") or 0)),
            co_handlers=tuple(
                sorted(u for u, part in parts.items() if part.get("status") == "pending")
            ),
            dispute_until=epoch(detail.get("dispute_until")),
            disputed=detail.get("dispute") is not None,
            contacts=int(detail.get("contacts") or 0),
            respond_by=epoch(detail.get("respond_by")),
        )

    @property
    def stage(self) -> tuple[object, ...]:
        """What makes a stage: its decisions are drawn once, its delays from its start."""
        return (self.status, self.due_at, self.extension_pending)


@dataclass(frozen=True, slots=True)
class IncidentView:
    """What the staff see of an incident (a feature's properties in ``GET /api/v1/incidents``)."""

    incident_id: str
    stage: str
    category: str = ""
    kind: str = "sensor_alarm"
    severity: str = "major"
    acknowledged: bool = False
    alarm_status: str = "active"
    district_code: str | None = None
    department_code: str | None = None
    due_at: float | None = None
    reworks: int = 0

    @classmethod
    def from_properties(cls, props: Mapping[str, Any]) -> IncidentView:
        return cls(
            incident_id=str(props["incident_id"]),
            stage=str(props.get("stage") or "reported"),
            category=str(props.get("category") or ""),
            kind=str(props.get("kind") or ""),
            severity=str(props.get("severity") or ""),
            acknowledged=bool(props.get("acknowledged")),
            alarm_status=str(props.get("alarm_status") or ""),
            district_code=props.get("district_code"),
            department_code=props.get("department_code"),
            due_at=epoch(props.get("due_at")),
            reworks=int(props.get("reworks") or 0),
        )

    @property
    def stage_key(self) -> tuple[object, ...]:
        return (self.stage, self.acknowledged, self.due_at)


@dataclass(frozen=True, slots=True)
class Directory:
    """Which departments there are: codes by department type, and each category's type."""

    by_type: Mapping[str, Sequence[str]]
    category_types: Mapping[str, str]

    def candidates(self, category: str, district: str | None) -> list[str]:
        """Departments that could take ``category``: of its type, in its district first
        (a department code names its district where the jurisdictions layer does)."""
        codes = sorted(self.by_type.get(self.category_types.get(category, ""), ()))
        local = [c for c in codes if district and district in c]
        return local or codes


NO_DEPARTMENTS = Directory({}, {})


@dataclass(frozen=True, slots=True)
class StaffParams:
    """Shares and delays of the staff model.

    Fractions are of the time left to the deadline when a stage begins; pick-up delays
    are seconds. The defaults aim at a city that keeps up with its work: about 12 % of
    the work resolved late, one case in 25 returned as not its department's, one in 16
    asking for more time, one resolved incident in 8 sent back by the inspector, one
    rating in 10 bad (more after a late answer, fewer after a revisit).
    """

    pickup_s: tuple[float, float] = (5.0, 40.0)  # a dispatcher takes up new work
    rating_s: tuple[float, float] = (10.0, 60.0)  # the revisit call after a resolution
    verify_s: tuple[float, float] = (10.0, 60.0)  # the inspector on site
    start_fraction: tuple[float, float] = (0.02, 0.2)
    resolve_fraction: tuple[float, float] = (0.25, 0.9)
    late_fraction: tuple[float, float] = (1.1, 1.8)
    # Incidents a department neglects: escalated (督办) once or twice before resolved.
    neglect_fraction: tuple[float, float] = (2.2, 3.2)
    late_share: float = 0.12
    neglect_share: float = 0.06
    return_share: float = 0.04
    extension_share: float = 0.06
    extension_approved_share: float = 0.75
    extension_fraction: float = 0.5  # of the category's time limit, in its hours
    duplicate_rejected_share: float = 0.6  # held as possible duplicates: rejected
    dispute_share: float = 0.04  # the lead disputes its assignment (异议)
    dispute_upheld_share: float = 0.6
    co_handler_added_share: float = 0.05  # a dispatcher asks another unit to co-handle
    silent_co_handler_share: float = 0.1  # never answers: a dispatcher waives it
    late_contact_share: float = 0.1  # the first contact (响应) after its time
    by_hand_share: float = 0.25  # registered and dispatched by hand, not by policy
    rework_share: float = 0.12
    bad_rating_share: float = 0.1
    bad_rating_share_late: float = 0.35
    bad_rating_share_revisited: float = 0.04
    min_delay_s: float = 2.0
    max_delay_s: float = 1_800.0
    default_window_s: float = 600.0  # an item without a deadline

    def __post_init__(self) -> None:
        shares = (
            self.late_share,
            self.neglect_share,
            self.return_share,
            self.extension_share,
            self.extension_approved_share,
            self.duplicate_rejected_share,
            self.dispute_share,
            self.dispute_upheld_share,
            self.co_handler_added_share,
            self.silent_co_handler_share,
            self.late_contact_share,
            self.by_hand_share,
            self.rework_share,
            self.bad_rating_share,
            self.bad_rating_share_late,
            self.bad_rating_share_revisited,
        )
        if not all(0.0 <= s <= 1.0 for s in shares):
            raise ValueError("shares must be between 0 and 1")
        if self.late_share + self.neglect_share > 1.0:
            raise ValueError("late_share + neglect_share must not exceed 1")
        if self.return_share + self.dispute_share > 1.0:
            raise ValueError("return_share + dispute_share must not exceed 1")
        ranges = (
            self.pickup_s,
            self.rating_s,
            self.verify_s,
            self.start_fraction,
            self.resolve_fraction,
            self.late_fraction,
            self.neglect_fraction,
        )
        if not all(0.0 <= lo <= hi for lo, hi in ranges):
            raise ValueError("each range must be (low, high) with 0 <= low <= high")
        if not 0.0 <= self.min_delay_s <= self.max_delay_s or self.default_window_s <= 0:
            raise ValueError("need 0 <= min_delay_s <= max_delay_s and default_window_s > 0")


class StaffModel:
    """What the staff do next to a case or an incident, and when; pure and seeded.

    ``base`` is when the item's current stage began (as far as the caller knows); every
    delay of the stage counts from it. ``time_limits_h`` (category code -> hours) sizes
    extension requests.

    Examples
    --------
    >>> model = StaffModel(seed=42)
    >>> case = CaseView("9f0c7ad8-53a7-4d35-9f6a-6d1d3d5c0b11", "in_progress", "road_damage",
    ...                 department_code="310101-roads", due_at=1_000.0 + 600)
    >>> [(s.action, s.actor.role) for s in model.case_plan(case, base=1_000.0)][-1]
    ('resolve', 'department')
    """

    def __init__(
        self,
        seed: int = 0,
        params: StaffParams | None = None,
        directory: Directory = NO_DEPARTMENTS,
        time_limits_h: Mapping[str, float] | None = None,
    ) -> None:
        self.seed = seed
        self.params = params or StaffParams()
        self.directory = directory
        self.time_limits_h = dict(time_limits_h or {})
        self._seed_words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF]

    def with_directory(self, directory: Directory) -> StaffModel:
        """The same model knowing these departments."""
        return StaffModel(self.seed, self.params, directory, self.time_limits_h)

    # -- random streams, one per (item, stage)

    def _rng(self, stream: int, item_id: str, stage: Iterable[object]) -> np.random.Generator:
        item = UUID(item_id).int
        words = [(item >> s) & 0xFFFFFFFF for s in (0, 32, 64, 96)]
        # The stage's own words: a digest of its parts' repr (status, deadline, ...).
        digest = UUID(bytes=_digest(repr(tuple(stage)))).int
        stage_words = [(digest >> s) & 0xFFFFFFFF for s in (0, 32)]
        return np.random.default_rng([*self._seed_words, stream, *words, *stage_words])

    def _delay(self, rng: np.random.Generator, span: tuple[float, float]) -> float:
        lo, hi = span
        return self._bounded(float(rng.uniform(lo, hi)))

    def _bounded(self, seconds: float) -> float:
        return min(self.params.max_delay_s, max(self.params.min_delay_s, seconds))

    def _window(self, base: float, due_at: float | None) -> float:
        """The time the stage has: to the deadline (none left: the shortest delay)."""
        if due_at is None:
            return self.params.default_window_s
        return max(0.0, due_at - base)

    def _within(
        self, rng: np.random.Generator, base: float, window: float, span: tuple[float, float]
    ) -> float:
        """An instant ``span`` (fractions of ``window``) after ``base``, bounded."""
        return base + self._bounded(window * float(rng.uniform(*span)))

    def _finish_fraction(self, rng: np.random.Generator, neglect: bool) -> tuple[float, float]:
        """How far into its window the work is done: mostly in time, some late."""
        p = self.params
        u = float(rng.random())
        if u < p.late_share:
            return p.late_fraction
        if neglect and u < p.late_share + p.neglect_share:
            return p.neglect_fraction
        return p.resolve_fraction

    def _pick_department(
        self, rng: np.random.Generator, category: str, district: str | None
    ) -> str | None:
        options = self.directory.candidates(category, district)
        return options[int(rng.integers(len(options)))] if options else None

    # -- cases

    def case_plan(self, case: CaseView, base: float) -> list[Step]:
        """The steps of the case's current stage, in order (empty: nobody acts on it)."""
        rng = self._rng(_CASE, case.case_id, case.stage)
        p = self.params
        step = _stepper("case", case.case_id)
        window = self._window(base, case.due_at)
        match case.status:
            case "submitted":
                at = base + self._delay(rng, p.pickup_s)
                if case.possible_duplicates and rng.random() < p.duplicate_rejected_share:
                    body = {
                        "rejection": "duplicate",
                        "duplicate_of": case.possible_duplicates[0],
                        "reason": "same problem as an open case nearby (dispatcher's check)",
                    }
                    return [step("reject", body, DISPATCHER, at)]
                department = None
                if rng.random() < p.by_hand_share:
                    department = self._pick_department(rng, case.category, case.district_code)
                if department is None:
                    return [step("accept", {"reason": "registered (立案)"}, DISPATCHER, at)]
                body = {
                    "reason": "registered and dispatched by hand",
                    "department_code": department,
                }
                return [step("accept", body, DISPATCHER, at)]
            case "accepted":  # held for manual assignment, or returned by a department
                department = self._pick_department(rng, case.category, case.district_code)
                if department is None:
                    return []
                at = base + self._delay(rng, p.pickup_s)
                body = {"department_code": department, "reason": "dispatched by hand (派遣)"}
                return [step("assign", body, DISPATCHER, at)]
            case "assigned" | "reopened" if case.department_code:
                return self._taking_on(rng, case, base, window, step)
            case "in_progress" if case.extension_pending:
                at = base + self._delay(rng, p.pickup_s)
                if rng.random() < p.extension_approved_share:
                    return [step("extension/approve", {"reason": "approved"}, DISPATCHER, at)]
                reason = "refused: the work must be done in time"
                return [step("extension/refuse", {"reason": reason}, DISPATCHER, at)]
            case "in_progress" if case.department_code:
                return self._handling(rng, case, base, window, step)
            case "resolved":
                return [self._rating(case, base)]
        return []

    def _taking_on(
        self,
        rng: np.random.Generator,
        case: CaseView,
        base: float,
        window: float,
        step: _Stepper,
    ) -> list[Step]:
        """Assigned (or reopened): the first call to the citizen, then start; or return
        the case, or dispute the assignment; a dispatcher may add a co-handler."""
        p = self.params
        assert case.department_code is not None
        staff = department_staff(case.department_code)
        steps: list[Step] = []
        if case.contacts == 0 and case.respond_by is not None:
            span = p.late_fraction if rng.random() < p.late_contact_share else p.resolve_fraction
            at = self._within(rng, base, max(0.0, case.respond_by - base), span)
            note = "called the citizen: the crew is on its way (响应)"
            steps.append(step("contact", {"note": note}, staff, at))
        at = self._within(rng, base, window, p.start_fraction)
        u = float(rng.random())
        if case.status == "assigned" and u < p.return_share:
            reason = "not within our remit: please re-dispatch (退单)"
            return [*steps, step("return", {"reason": reason}, staff, at)]
        if (
            case.status == "assigned"
            and u < p.return_share + p.dispute_share
            and not case.disputed
            and case.dispute_until is not None
        ):
            steps += self._dispute(rng, case, base, step)
        if case.status == "assigned" and rng.random() < p.co_handler_added_share:
            helper = self._helper(rng, case)
            if helper is not None:
                body = {
                    "department_code": helper,
                    "part": "traffic control and clearing the site (协办)",
                    "reason": "the work needs a second unit",
                }
                pickup = base + self._delay(rng, p.pickup_s)
                steps.append(step("co-handlers", body, DISPATCHER, pickup))
        return [*steps, step("start", {"reason": "crew on the way"}, staff, at)]

    def _dispute(
        self, rng: np.random.Generator, case: CaseView, base: float, step: _Stepper
    ) -> list[Step]:
        """The lead disputes before its time is up (异议); a dispatcher arbitrates."""
        p = self.params
        assert case.department_code is not None
        assert case.dispute_until is not None
        others = [
            c for c in self.directory.candidates(case.category, None) if c != case.department_code
        ]
        proposed = others[int(rng.integers(len(others)))] if others else None
        at = base + self._bounded(0.5 * max(0.0, case.dispute_until - base))
        body = {"reason": "the place is outside our jurisdiction (异议)"}
        if proposed is not None:
            body["proposed_department_code"] = proposed
        arbitrate = at + self._delay(rng, p.pickup_s)
        if proposed is not None and rng.random() < p.dispute_upheld_share:
            verdict = step(
                "dispute/uphold", {"reason": "upheld: reassigned (改派)"}, DISPATCHER, arbitrate
            )
        else:
            reason = "rejected: the place is yours, the clock runs on"
            verdict = step("dispute/reject", {"reason": reason}, DISPATCHER, arbitrate)
        return [step("dispute", body, department_staff(case.department_code), at), verdict]

    def _helper(self, rng: np.random.Generator, case: CaseView) -> str | None:
        """A unit of another type in the case's district, to co-handle."""
        district = case.district_code or ""
        options = sorted(
            c
            for codes in self.directory.by_type.values()
            for c in codes
            if district
            and district in c
            and c != case.department_code
            and c not in case.co_handlers
        )
        return options[int(rng.integers(len(options)))] if options else None

    def _handling(
        self,
        rng: np.random.Generator,
        case: CaseView,
        base: float,
        window: float,
        step: _Stepper,
    ) -> list[Step]:
        """In progress: maybe ask for more time; each co-handler answers its part (or,
        silent, is waived by a dispatcher); then the lead resolves."""
        p = self.params
        assert case.department_code is not None
        staff = department_staff(case.department_code)
        steps: list[Step] = []
        if case.extensions == 0 and rng.random() < p.extension_share:
            limit = self.time_limits_h.get(case.category, 8.0)
            hours = max(0.0001, round(p.extension_fraction * limit, 6))
            at = base + self._bounded(window * p.extension_fraction * p.resolve_fraction[0])
            body = {"hours": hours, "reason": "waiting for parts (延期申请)"}
            steps.append(step("extension", body, staff, at))
        resolve_at = self._within(rng, base, window, self._finish_fraction(rng, neglect=False))
        silent = []
        for unit in case.co_handlers:  # each co-handler's part (协办反馈), before the lead's
            if rng.random() < p.silent_co_handler_share:
                silent.append(unit)
                continue
            at = self._within(rng, base, max(0.0, resolve_at - base), p.resolve_fraction)
            body = {"department_code": unit, "feedback": "our part is done (协办完成)"}
            answer = department_staff(unit)
            steps.append(step("co-handling/answer", body, answer, at, f"answer:{unit}"))
        if silent:
            reason = f"no answer from {', '.join(silent)}: the lead closes without it"
            steps.append(step("co-handling/waive", {"reason": reason}, DISPATCHER, resolve_at))
        body = {"reply": f"Handled on site: {case.category.replace('_', ' ')} fixed. 已处置完毕。"}
        steps.append(step("resolve", body, staff, resolve_at))
        return steps

    def rating(self, case: CaseView) -> int:
        """The rating the citizen gives on the revisit call (1-5)."""
        rng = self._rng(_RATING, case.case_id, case.stage)
        p = self.params
        bad = p.bad_rating_share
        if case.revisits:
            bad = p.bad_rating_share_revisited
        elif case.resolved_late:
            bad = p.bad_rating_share_late
        u = float(rng.random())
        if u < bad:
            return 1 if u < bad / 2 else 2
        # Of the rest: a few middling, most satisfied.
        v = float(rng.random())
        return 3 if v < 0.08 else 4 if v < 0.4 else 5

    def _rating(self, case: CaseView, base: float) -> Step:
        rng = self._rng(_CASE, case.case_id, case.stage)
        rating = self.rating(case)
        comment = "回访: satisfied" if rating >= 3 else "回访: not fixed, please come back"
        at = base + self._delay(rng, self.params.rating_s)
        body = {"rating": rating, "comment": comment, "solved": rating >= 3}
        # The 12345 revisit call: a dispatcher records what the citizen says.
        return Step("case", case.case_id, "rate", body, DISPATCHER, at)

    # -- incidents

    def incident_plan(self, incident: IncidentView, base: float) -> list[Step]:
        """The steps of the incident's current stage (empty: nobody acts on it)."""
        rng = self._rng(_INCIDENT, incident.incident_id, incident.stage_key)
        p = self.params
        step = _stepper("incident", incident.incident_id)
        window = self._window(base, incident.due_at)
        match incident.stage:
            case "reported" if not incident.acknowledged:
                at = base + self._delay(rng, p.pickup_s)
                return [
                    step("acknowledge", {"reason": "seen on the wall (值班确认)"}, DISPATCHER, at)
                ]
            case "reported":
                if incident.alarm_status == "cleared" and incident.kind != "citizen_reports":
                    return []  # the alarm cleared before anyone was sent: it closes itself
                at = base + self._delay(rng, p.pickup_s)
                body: dict[str, Any] = {"reason": "dispatched by the place's jurisdiction"}
                if rng.random() < p.by_hand_share or not incident.department_code:
                    department = self._pick_department(
                        rng, incident.category, incident.district_code
                    )
                    if department is not None:
                        body = {"department_code": department, "reason": "dispatched by hand"}
                    elif not incident.department_code:
                        return []
                return [step("dispatch", body, DISPATCHER, at)]
            case "dispatched" if incident.department_code:
                staff = department_staff(incident.department_code)
                at = self._within(rng, base, window, p.start_fraction)
                return [step("accept", {}, staff, at)]
            case "accepted" if incident.department_code:
                staff = department_staff(incident.department_code)
                span = self._finish_fraction(rng, neglect=True)
                at = self._within(rng, base, window, span)
                body = {"feedback": "Crew on site: cleared and made safe. 现场处置完毕。"}
                return [step("resolve", body, staff, at)]
            case "resolved":
                at = base + self._delay(rng, p.verify_s)
                share = p.rework_share if incident.reworks == 0 else p.rework_share / 3
                if rng.random() < share:
                    body = {"passed": False, "note": "still not fixed on site: rework (返工)"}
                else:
                    body = {"passed": True, "note": "checked on site (核查通过)"}
                return [step("verify", body, INSPECTOR, at)]
        return []


class _Stepper(Protocol):
    def __call__(
        self, action: str, body: Mapping[str, Any], actor: Actor, at: float, key: str = ""
    ) -> Step: ...


def _stepper(kind: Kind, item_id: str) -> _Stepper:
    def step(action: str, body: Mapping[str, Any], actor: Actor, at: float, key: str = "") -> Step:
        return Step(kind, item_id, action, body, actor, at, key)

    return step


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def epoch(value: object) -> float | None:
    """An ISO 8601 instant (as the API writes them) in epoch seconds; None stays None."""
    if value is None or value == "":
        return None
    return datetime.fromisoformat(str(value)).timestamp()


# -- the driver ---------------------------------------------------------------------------


@dataclass
class StaffStats:
    """What one run did: steps by action, and the API's refusals and failures."""

    done: Counter[str] = field(default_factory=Counter)
    refused: int = 0  # 4xx: another actor got there first, or the step no longer applies
    failed: int = 0  # transport errors and 5xx: retried
    ticks: int = 0

    def line(self) -> str:
        """One log line: the steps by action, then refusals and failures."""
        steps = ", ".join(f"{k} {n}" for k, n in sorted(self.done.items()))
        return f"{steps or 'nothing done'}; refused {self.refused}, failed {self.failed}"


@dataclass
class _Seen:
    """What the driver remembers of one item: when it saw each stage begin, which steps
    of it ran, when it last saw the item (to forget it later)."""

    stages: dict[tuple[object, ...], float] = field(default_factory=dict)
    done: set[tuple[tuple[object, ...], str]] = field(default_factory=set)
    details: dict[tuple[object, ...], dict[str, Any]] = field(default_factory=dict)
    last_seen: float = 0.0
    revisits: int = 0
    resolved_late: bool = False


Tokens = Callable[[Actor], str]


class StaffSimulator:
    """Runs the model's steps against the API in real time, as each person.

    Parameters
    ----------
    model : StaffModel
        What the staff do.
    http : httpx.Client
        A client whose ``base_url`` is the API root (a ``TestClient`` in tests).
    tokens : callable
        The bearer token of an :class:`Actor` (called once per person).
    category_types : mapping
        Each category's department type: with ``GET /api/v1/departments`` (read once the
        API answers), whom a dispatcher may send a case or an incident to by hand.
    tick_s : float
        How often the queues are read.
    max_steps_per_tick : int
        At most this many commands per tick, the most overdue first (the API is shared).
    max_details_per_tick : int
        At most this many case details read per tick (one per case and stage worked).
    forget_after_s : float
        An item not listed for this long is forgotten (closed, or out of the lists).
    """

    def __init__(
        self,
        model: StaffModel,
        http: httpx.Client,
        tokens: Tokens,
        *,
        category_types: Mapping[str, str] | None = None,
        tick_s: float = 2.0,
        max_steps_per_tick: int = 40,
        max_details_per_tick: int = 40,
        page_size: int = 500,
        forget_after_s: float = 3_600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if tick_s <= 0 or max_steps_per_tick < 1 or page_size < 1:
            raise ValueError("tick_s, max_steps_per_tick and page_size must be positive")
        self.model = model
        self.http = http
        self.tick_s = tick_s
        self.max_steps_per_tick = max_steps_per_tick
        self.max_details_per_tick = max_details_per_tick
        self.page_size = page_size
        self.forget_after_s = forget_after_s
        self.stats = StaffStats()
        self._tokens = tokens
        self._token_cache: dict[Actor, str] = {}
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._down = False
        self._category_types = category_types

    def run(
        self, duration_s: float | None = None, stop_event: threading.Event | None = None
    ) -> StaffStats:
        """Work the queues every ``tick_s`` for ``duration_s`` (None: until stopped)."""
        stop = stop_event or threading.Event()
        end = None if duration_s is None else self._clock() + duration_s
        report_at = self._clock() + REPORT_EVERY_S
        while not stop.is_set() and (end is None or self._clock() < end):
            self.tick()
            if self._clock() >= report_at:
                log.info("staff: %s", self.stats.line())
                report_at += REPORT_EVERY_S
            stop.wait(self.tick_s)
        log.info("staff: %s", self.stats.line())
        return self.stats

    def tick(self) -> int:
        """Read the queues once and run the steps that are due; how many ran."""
        self.stats.ticks += 1
        now = self._clock()
        try:
            self._load_directory()
            due = self._due_steps(now)
        except httpx.HTTPError as exc:
            self._note_down(f"cannot read the queues: {exc!r}")
            return 0
        except (_ApiError, ValueError, KeyError, TypeError) as exc:
            self._note_down(f"cannot read the queues: {exc}")
            return 0
        if self._down:
            log.info("staff: the API answers again")
            self._down = False
        ran = 0
        for step, stage in sorted(due, key=lambda d: d[0].at)[: self.max_steps_per_tick]:
            if self._run(step, stage):
                ran += 1
        self._forget(now)
        return ran

    def _note_down(self, why: str) -> None:
        self.stats.failed += 1
        if not self._down:
            log.warning("staff: %s; retrying every %.0f s", why, self.tick_s)
        self._down = True

    # -- reading the queues

    def _load_directory(self) -> None:
        if self._category_types is None:
            return
        body = self._get("/api/v1/departments", {})
        by_type: dict[str, list[str]] = {}
        for d in body["departments"]:
            by_type.setdefault(str(d["type"]), []).append(str(d["code"]))
        self.model = self.model.with_directory(Directory(by_type, dict(self._category_types)))
        self._category_types = None

    def _due_steps(self, now: float) -> list[tuple[Step, tuple[object, ...]]]:
        due: list[tuple[Step, tuple[object, ...]]] = []
        for props in self._incidents():
            incident = IncidentView.from_properties(props)
            seen = self._remember(incident.incident_id, incident.stage_key, now)
            plan = self.model.incident_plan(incident, seen.stages[incident.stage_key])
            due.extend(self._next(plan, seen, incident.stage_key, now))
        details = self.max_details_per_tick
        for row in self._cases():
            listed = CaseView.from_summary(row)
            seen = self._remember(listed.case_id, listed.stage, now)
            base = seen.stages[listed.stage]
            if listed.status == "resolved" and listed.due_at is not None and base > listed.due_at:
                seen.resolved_late = True
            case = replace(listed, revisits=seen.revisits, resolved_late=seen.resolved_late)
            if case.status in _WORKED:
                detail = seen.details.get(case.stage)
                if detail is None:
                    if details == 0:
                        continue  # next tick
                    details -= 1
                    detail = self._detail(case.case_id)
                    if detail is None:
                        continue
                    seen.details = {case.stage: detail}
                case = case.with_detail(detail)
            due.extend(self._next(self.model.case_plan(case, base), seen, case.stage, now))
        return due

    def _detail(self, case_id: str) -> dict[str, Any] | None:
        """The case's detail, or None (logged) if the API will not give it."""
        path = f"/api/v1/cases/{case_id}"
        response = self.http.get(path, headers=self._auth(DISPATCHER))
        if response.status_code in _RETRY_STATUSES:
            raise _ApiError(f"GET {path}: HTTP {response.status_code}")
        if not response.is_success:
            log.info("staff: GET %s: HTTP %d", path, response.status_code)
            return None
        body: dict[str, Any] = response.json()
        return body

    def _remember(self, item_id: str, stage: tuple[object, ...], now: float) -> _Seen:
        seen = self._seen.setdefault(item_id, _Seen())
        seen.stages.setdefault(stage, now)
        seen.last_seen = now
        return seen

    @staticmethod
    def _next(
        plan: list[Step], seen: _Seen, stage: tuple[object, ...], now: float
    ) -> list[tuple[Step, tuple[object, ...]]]:
        """The stage's first step not yet run, if its time has come."""
        for step in plan:
            if (stage, step.done_key) in seen.done:
                continue
            return [(step, stage)] if step.at <= now else []
        return []

    def _incidents(self) -> list[dict[str, Any]]:
        body = self._get("/api/v1/incidents", {"status": "open", "limit": 5_000})
        return [f["properties"] for f in body.get("features", [])]

    def _cases(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            params = {
                "status": list(_OPEN_CASES),
                "order": "due",
                "limit": self.page_size,
                "offset": offset,
            }
            page = self._get("/api/v1/cases", params)
            rows = page.get("cases", [])
            out.extend(rows)
            offset += len(rows)
            if not rows or offset >= int(page.get("total", 0)) or offset >= 20 * self.page_size:
                return out

    def _get(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        response = self.http.get(path, params=params, headers=self._auth(DISPATCHER))
        if not response.is_success:
            raise _ApiError(f"GET {path}: HTTP {response.status_code} {response.text[:200]}")
        body: dict[str, Any] = response.json()
        return body

    # -- acting

    def _auth(self, actor: Actor) -> dict[str, str]:
        token = self._token_cache.get(actor)
        if token is None:
            token = self._token_cache[actor] = self._tokens(actor)
        return {"Authorization": f"Bearer {token}"}

    def _run(self, step: Step, stage: tuple[object, ...]) -> bool:
        """POST the step's command; True if the API took it."""
        seen = self._seen[step.item_id]
        try:
            response = self.http.post(
                step.path, json=dict(step.body), headers=self._auth(step.actor)
            )
        except httpx.HTTPError as exc:
            self.stats.failed += 1
            log.warning("staff: %s %s: %r; retrying", step.action, step.item_id, exc)
            return False
        if response.status_code in _RETRY_STATUSES:
            self.stats.failed += 1
            log.warning(
                "staff: %s %s: HTTP %d; retrying", step.action, step.item_id, response.status_code
            )
            return False
        seen.done.add((stage, step.done_key))
        if not response.is_success:
            # A 409 is another actor's (or the platform's) move first; the next listing
            # shows the item's new stage, and the model plans that.
            self.stats.refused += 1
            log.info(
                "staff: %s %s refused: HTTP %d %s",
                step.action,
                step.item_id,
                response.status_code,
                response.text[:200],
            )
            return False
        self.stats.done[f"{step.kind}:{step.action}"] += 1
        if step.action == "rate":
            try:
                seen.revisits = int(response.json().get("revisits") or seen.revisits)
            except ValueError:
                log.info("staff: rate %s: the answer is not JSON", step.item_id)
        log.debug("staff: %s %s as %s", step.action, step.item_id, step.actor.subject)
        return True

    def _forget(self, now: float) -> None:
        gone = [k for k, s in self._seen.items() if now - s.last_seen > self.forget_after_s]
        for key in gone:
            del self._seen[key]


class _ApiError(Exception):
    """A queue could not be read (an answer other than 2xx)."""


# -- the demo's compressed time limits ----------------------------------------------------

# Keys whose numbers are hours of a time limit, in the categories and correlation files
# (a case's time limit, its response time, the revisit's, a dispute's; an incident's by
# severity). The correlation rules' windows stay: citizens' calls come in real time.
_HOURS_KEYS = ("time_limit", "response_time", "incident_time_limits_h")


def _scaled(node: Any, scale: float, hours: bool = False) -> Any:
    """``node`` with every number under an hours key divided by ``scale``; every clock
    the calendar (working hours compressed would make a night last until 9:00)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "clock":
                out[key] = "calendar"
            else:
                out[key] = _scaled(value, scale, hours or key in _HOURS_KEYS)
        return out
    if isinstance(node, list):
        return [_scaled(v, scale, hours) for v in node]
    if hours and isinstance(node, int | float) and not isinstance(node, bool):
        return round(node / scale, 6)
    return node


def demo_time_files(settings: Settings, out_dir: Path, scale: float) -> dict[str, str]:
    """Copies of the settings' categories and correlation files with every time limit
    ``scale`` times shorter, on the calendar clock, and of the paging policy with its
    delays ``scale`` times shorter, written to ``out_dir``; the
    ``CITYOPS_*`` variables that point every process at them. ``scale`` 1: none.

    The categories copy takes version ``1000 + version``: cases record which limits
    their deadlines came from. The correlation copy keeps its version: that numbers its
    rules, which are unchanged, and the links record it.
    """
    if scale == 1:
        return {}
    if not scale > 1:
        raise ValueError(f"the demo's time scale must be at least 1, not {scale}")
    out_dir.mkdir(parents=True, exist_ok=True)
    categories = _scaled(load_yaml("core.case", "categories.yaml", settings.categories_file), scale)
    categories["version"] = 1_000 + int(categories["version"])
    correlation = _scaled(
        load_yaml("core.brain", "correlation.yaml", settings.correlation_file), scale
    )
    # The paging policy's delays too, so that escalations climb while one watches.
    paging = load_yaml("core.paging", "policy.yaml", settings.paging_policy_file)
    for trigger in paging["triggers"].values():
        for step in trigger["levels"]:
            step["after_minutes"] = round(step["after_minutes"] / scale, 6)
    note = f"# Generated by cityops demo: the time limits of the original divided by {scale:g}.\n"
    files = {
        "CITYOPS_CATEGORIES_FILE": (out_dir / "categories.yaml", categories),
        "CITYOPS_CORRELATION_FILE": (out_dir / "correlation.yaml", correlation),
        "CITYOPS_PAGING_POLICY_FILE": (out_dir / "paging.yaml", paging),
    }
    for path, doc in files.values():
        path.write_text(note + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), "utf-8")
    return {name: str(path) for name, (path, _) in files.items()}
