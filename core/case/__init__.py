"""The ``ServiceCase`` aggregate (service network, 12345 / Open311): one citizen request.

submitted -> accepted | rejected -> assigned -> in_progress -> resolved -> rated -> closed.
A rating of ``max_rating`` or less reopens the case for a revisit (回访) with a new
deadline; the citizen may cancel an unresolved case; a department may return a case
that is not its own (it waits for re-dispatch) and ask for an extension (延期), which a
dispatcher approves or refuses.

One unit leads (主办, ``department_code``); co-handling units (协办, ``co_handlers``)
each answer their own part, and the lead resolves only once every co-handler has
answered or a dispatcher has waived the rest, with a reason. The lead may dispute (异议)
its assignment once, within the time the desk allows: a dispatcher upholds it (the case
moves to another unit with a new deadline; the first unit is kept in
``wrongly_assigned``) or rejects it (the case stays, its clock never stopped). Each
contact of the lead with the citizen (响应) is recorded. Every event records actor,
reason and correlation id; its time is the event's timestamp. Deadlines are computed
outside and passed in.

Personal data never appears here in clear: ``contact_token`` is ciphertext under the
citizen's own key (see ``core.personal``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from core.errors import IllegalTransitionError

CASE_NS = uuid5(NAMESPACE_URL, "https://cityops.example/service-case")

REJECTION_REASONS = ("duplicate", "out_of_scope", "not_our_city")
CHANNELS = ("hotline", "open311", "app", "web", "wechat", "operator")
# Statuses in which a department is working the case against a deadline.
ACTIVE = ("assigned", "in_progress", "reopened")
OPEN = ("submitted", "accepted", *ACTIVE)
TERMINAL = ("rejected", "closed", "cancelled")
SENSOR_CHECKS = ("confirmed", "not_confirmed", "no_sensors")
CaseStatus = Literal[
    "submitted",
    "accepted",
    "rejected",
    "assigned",
    "in_progress",
    "resolved",
    "reopened",
    "closed",
    "cancelled",
]
STATUSES: tuple[CaseStatus, ...] = get_args(CaseStatus)


def case_id(channel: str, external_id: str) -> UUID:
    """Deterministic id: the same external case submitted twice is one aggregate."""
    return uuid5(CASE_NS, f"{channel}:{external_id}")


class ServiceCase(Aggregate):
    @event("CaseSubmitted")
    def __init__(
        self,
        channel: str,
        external_id: str,
        category: str,
        categories_version: int,
        description: str,
        lon: float | None,
        lat: float | None,
        address: str | None,
        attributes: dict[str, Any],
        citizen_id: str | None,
        contact_token: str | None,
        actor: str,
        correlation_id: str,
    ) -> None:
        self.channel = channel
        self.external_id = external_id
        self.category = category
        self.categories_version = categories_version
        self.description = description
        self.lon = lon
        self.lat = lat
        self.address = address
        self.attributes = attributes
        self.citizen_id = citizen_id
        self.contact_token = contact_token
        self.submitted_by = actor
        self.status = "submitted"
        self.status_notes = ""
        self.rejection: str | None = None
        self.duplicate_of: str | None = None
        self.possible_duplicates: list[str] = []
        self.grid_code: str | None = None
        self.district_code: str | None = None
        self.department_code: str | None = None
        self.dispatch: dict[str, Any] | None = None
        self.due_at: datetime | None = None
        self.due_soon_at: datetime | None = None
        self.deadline_no = 0
        self.due_soon_recorded = 0  # the deadline_no whose due-soon mark is recorded
        self.overdue_recorded = 0
        self.extension_request: dict[str, Any] | None = None
        self.extensions = 0
        self.returns = 0
        self.revisits = 0
        self.reply: str | None = None
        self.rating: int | None = None
        self.rating_comment: str | None = None
        self.erased = False
        self.incident_id: str | None = None
        self.sensor_check: str | None = None
        self.proactive = False
        # unit -> {"part", "status": pending | answered | waived, "feedback"}
        self.co_handlers: dict[str, dict[str, Any]] = {}
        self.assignment_no = 0
        self.dispute_until: datetime | None = None
        self.dispute: dict[str, Any] | None = None
        self.disputed_assignment = 0  # the assignment_no whose dispute was raised
        self.wrongly_assigned: list[str] = []
        self.respond_by: datetime | None = None
        self.contacts = 0
        self.solved: bool | None = None

    @classmethod
    def submit(cls, case_uuid: UUID, **kwargs: Any) -> ServiceCase:
        return cls._create(cls.CaseSubmitted, id=case_uuid, **kwargs)  # type: ignore[attr-defined]

    # -- guards -------------------------------------------------------------------------

    def _require(self, command: str, *statuses: str) -> None:
        if self.status not in statuses:
            raise IllegalTransitionError(
                f"cannot {command} a case that is {self.status} (needs {' or '.join(statuses)})"
            )

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def overdue(self) -> bool:
        return self.overdue_recorded == self.deadline_no and self.deadline_no > 0

    def _set_deadline(self, due_at: datetime, due_soon_at: datetime) -> None:
        self.due_at = due_at
        self.due_soon_at = due_soon_at
        self.deadline_no += 1

    def _assign_to(
        self,
        department_code: str,
        decision: dict[str, Any],
        due_at: datetime,
        due_soon_at: datetime,
        reason: str,
    ) -> None:
        """What every assignment records: the unit (no longer a co-handler of its own
        case), its deadline, and from the decision the dispute window, the first-contact
        deadline (the case's first only) and the catalogue's co-handlers."""
        self.status = "assigned"
        self.department_code = department_code
        self.co_handlers.pop(department_code, None)
        self.extension_request = None
        self.dispatch = dict(decision)
        self.assignment_no += 1
        until = decision.get("dispute_until")
        self.dispute_until = None if until is None else datetime.fromisoformat(until)
        respond_by = decision.get("respond_by")
        if self.respond_by is None and respond_by is not None:
            self.respond_by = datetime.fromisoformat(respond_by)
        parts = decision.get("co_handler_parts") or {}
        for unit in decision.get("co_handlers") or ():
            if unit != self.department_code and unit not in self.co_handlers:
                self.co_handlers[unit] = {
                    "part": parts.get(unit, ""),
                    "status": "pending",
                    "feedback": None,
                }
        self._set_deadline(due_at, due_soon_at)
        self.status_notes = reason

    @property
    def pending_co_handlers(self) -> list[str]:
        return sorted(u for u, p in self.co_handlers.items() if p["status"] == "pending")

    def _require_no_dispute(self, command: str) -> None:
        if self.dispute is not None:
            raise IllegalTransitionError(
                f"cannot {command} while the unit's dispute of the assignment waits for a"
                " dispatcher"
            )

    # -- intake -------------------------------------------------------------------------

    @event("CaseAccepted")
    def accept(self, actor: str, reason: str, correlation_id: str) -> None:
        """Register the case (立案)."""
        self._require("accept", "submitted")
        self.status = "accepted"
        self.status_notes = reason

    @event("DuplicatesSuggested")
    def suggest_duplicates(
        self, possible_duplicates: list[str], actor: str, reason: str, correlation_id: str
    ) -> None:
        self._require("suggest duplicates for", "submitted")
        self.possible_duplicates = list(possible_duplicates)

    @event("CaseRejected")
    def reject(
        self,
        rejection: str,
        duplicate_of: str | None,
        actor: str,
        reason: str,
        correlation_id: str,
    ) -> None:
        self._require("reject", "submitted", "accepted")
        if rejection not in REJECTION_REASONS:
            raise IllegalTransitionError(
                f"rejection must be one of {', '.join(REJECTION_REASONS)}, not {rejection!r}"
            )
        if rejection == "duplicate" and not duplicate_of:
            raise IllegalTransitionError("a duplicate needs the case it duplicates")
        self.status = "rejected"
        self.rejection = rejection
        self.duplicate_of = duplicate_of
        self.status_notes = reason or rejection

    # -- dispatch (派遣) -----------------------------------------------------------------

    @event("CaseAssigned")
    def assign(
        self,
        department_code: str,
        grid_code: str | None,
        district_code: str | None,
        decision: dict[str, Any],
        due_at: datetime,
        due_soon_at: datetime,
        actor: str,
        reason: str,
        correlation_id: str,
    ) -> None:
        """Dispatch to a department; ``decision`` records how (policy rule or manual)."""
        self._require("assign", "accepted")
        self.grid_code = grid_code
        self.district_code = district_code
        self.co_handlers = {}
        self._assign_to(department_code, decision, due_at, due_soon_at, reason)

    @event("AssignmentPending")
    def await_manual_assignment(
        self,
        grid_code: str | None,
        district_code: str | None,
        decision: dict[str, Any],
        actor: str,
        reason: str,
        correlation_id: str,
    ) -> None:
        """No jurisdiction answers for this place: a dispatcher must assign it by hand."""
        self._require("hold for manual assignment", "accepted")
        self.grid_code = grid_code
        self.district_code = district_code
        self.dispatch = dict(decision)
        self.status_notes = reason

    @event("CaseReturned")
    def return_to_dispatch(self, actor: str, reason: str, correlation_id: str) -> None:
        """The department says the case is not its own: it waits for re-dispatch."""
        self._require("return", "assigned", "in_progress")
        self._require_no_dispute("return the case")
        if not reason:
            raise IllegalTransitionError("returning a case needs a reason")
        self.status = "accepted"
        self.department_code = None
        self.co_handlers = {}
        self.dispute_until = None
        self.due_at = None
        self.due_soon_at = None
        self.extension_request = None
        self.returns += 1
        self.status_notes = reason

    # -- handling (处置) -----------------------------------------------------------------

    @event("CaseStarted")
    def start(self, actor: str, reason: str, correlation_id: str) -> None:
        self._require("start", "assigned", "reopened")
        self.status = "in_progress"

    @event("CaseResolved")
    def resolve(self, reply: str, actor: str, reason: str, correlation_id: str) -> None:
        self._require("resolve", *ACTIVE)
        self._require_no_dispute("resolve")
        pending = self.pending_co_handlers
        if pending:
            raise IllegalTransitionError(
                f"co-handlers have not answered: {', '.join(pending)} (a dispatcher may"
                " waive them, with a reason)"
            )
        if not reply.strip():
            raise IllegalTransitionError("resolving needs a reply to the citizen")
        self.status = "resolved"
        self.reply = reply
        self.extension_request = None
        self.status_notes = reply

    @event("CaseResolvedWithIncident")
    def resolve_with_incident(
        self, incident_id: str, reply: str, actor: str, reason: str, correlation_id: str
    ) -> None:
        """The city fixed the linked incident (主动服务): the case is resolved with it,
        whatever stage of dispatch it had reached."""
        self._require("resolve", *OPEN)
        if self.incident_id != incident_id:
            raise IllegalTransitionError(f"the case is not linked to incident {incident_id}")
        if not reply.strip():
            raise IllegalTransitionError("resolving needs a reply to the citizen")
        self.status = "resolved"
        self.reply = reply
        self.proactive = True
        self.extension_request = None
        self.dispute = None
        self.status_notes = reply

    @event("ExtensionRequested")
    def request_extension(self, hours: float, actor: str, reason: str, correlation_id: str) -> None:
        self._require("request an extension for", *ACTIVE)
        self._require_no_dispute("request an extension")
        if self.extension_request is not None:
            raise IllegalTransitionError("an extension request is already pending")
        if not hours > 0:
            raise IllegalTransitionError("an extension needs a positive number of hours")
        if not reason:
            raise IllegalTransitionError("an extension request needs a reason")
        self.extension_request = {"hours": hours, "reason": reason, "by": actor}

    @event("ExtensionApproved")
    def approve_extension(
        self,
        due_at: datetime,
        due_soon_at: datetime,
        actor: str,
        reason: str,
        correlation_id: str,
    ) -> None:
        self._require("approve an extension for", *ACTIVE)
        if self.extension_request is None:
            raise IllegalTransitionError("no extension request is pending")
        self.extension_request = None
        self.extensions += 1
        self._set_deadline(due_at, due_soon_at)

    @event("ExtensionRefused")
    def refuse_extension(self, actor: str, reason: str, correlation_id: str) -> None:
        self._require("refuse an extension for", *ACTIVE)
        if self.extension_request is None:
            raise IllegalTransitionError("no extension request is pending")
        self.extension_request = None

    # -- co-handling (协办) ---------------------------------------------------------------

    @event("CoHandlerAdded")
    def add_co_handler(
        self, department_code: str, part: str, actor: str, reason: str, correlation_id: str
    ) -> None:
        """A dispatcher asks another unit to co-handle ``part`` of the work."""
        self._require("add a co-handler to", *ACTIVE)
        if department_code == self.department_code:
            raise IllegalTransitionError(f"{department_code} leads this case")
        if department_code in self.co_handlers:
            raise IllegalTransitionError(f"{department_code} co-handles this case already")
        if not part.strip():
            raise IllegalTransitionError("a co-handler needs its part of the work")
        self.co_handlers[department_code] = {"part": part, "status": "pending", "feedback": None}

    @event("CoHandlingAnswered")
    def answer_co_handling(
        self, department_code: str, feedback: str, actor: str, correlation_id: str
    ) -> None:
        """A co-handling unit reports on its part (its own feedback, 协办反馈)."""
        self._require("answer for", *ACTIVE)
        held = self.co_handlers.get(department_code)
        if held is None:
            raise IllegalTransitionError(f"{department_code} does not co-handle this case")
        if held["status"] != "pending":
            raise IllegalTransitionError(f"the part of {department_code} is {held['status']}")
        if not feedback.strip():
            raise IllegalTransitionError("an answer needs the co-handler's feedback")
        held.update(status="answered", feedback=feedback)

    @event("CoHandlingWaived")
    def waive_co_handling(
        self, departments: list[str], actor: str, reason: str, correlation_id: str
    ) -> None:
        """A dispatcher lets the lead resolve without the co-handlers still pending."""
        self._require("waive co-handlers of", *ACTIVE)
        if not reason.strip():
            raise IllegalTransitionError("waiving co-handlers needs a reason")
        if not departments or sorted(departments) != self.pending_co_handlers:
            raise IllegalTransitionError(
                f"the pending co-handlers are {self.pending_co_handlers or 'none'}"
            )
        for unit in departments:
            self.co_handlers[unit]["status"] = "waived"

    # -- disputes (异议) and first contact (响应) -----------------------------------------

    @event("DisputeRaised")
    def raise_dispute(
        self,
        reason: str,
        proposed_department_code: str | None,
        arbitrate_by: datetime,
        actor: str,
        correlation_id: str,
    ) -> None:
        """The lead says the case is not its own and (optionally) whose it is."""
        self._require("dispute", "assigned", "in_progress")
        self._require_no_dispute("dispute again")
        if self.disputed_assignment == self.assignment_no:
            raise IllegalTransitionError("this assignment was disputed once already")
        if not reason.strip():
            raise IllegalTransitionError("a dispute needs a reason")
        if proposed_department_code == self.department_code:
            raise IllegalTransitionError("a dispute names another unit than the one disputing")
        self.dispute = {
            "by": self.department_code,
            "reason": reason,
            "proposed_department_code": proposed_department_code,
            "arbitrate_by": arbitrate_by,
        }
        self.disputed_assignment = self.assignment_no

    def _require_dispute(self, command: str) -> dict[str, Any]:
        self._require(command + " a dispute of", *ACTIVE)
        if self.dispute is None:
            raise IllegalTransitionError("no dispute is pending")
        return self.dispute

    @event("DisputeUpheld")
    def uphold_dispute(
        self,
        department_code: str,
        decision: dict[str, Any],
        due_at: datetime,
        due_soon_at: datetime,
        actor: str,
        reason: str,
        correlation_id: str,
    ) -> None:
        """The unit was wrongly assigned: the case moves (改派), due anew from now."""
        dispute = self._require_dispute("uphold")
        if department_code == dispute["by"]:
            raise IllegalTransitionError("an upheld dispute moves the case to another unit")
        self.wrongly_assigned = [*self.wrongly_assigned, dispute["by"]]
        if self.contacts == 0:  # the new unit's first contact is due from now
            self.respond_by = None
        self.dispute = None
        self._assign_to(department_code, decision, due_at, due_soon_at, reason)

    @event("DisputeRejected")
    def reject_dispute(self, actor: str, reason: str, correlation_id: str) -> None:
        """The assignment stands: back to the unit, its deadline as it was."""
        self._require_dispute("reject")
        if not reason.strip():
            raise IllegalTransitionError("rejecting a dispute needs a reason")
        self.dispute = None
        self.status_notes = reason

    @event("CitizenContacted")
    def contact_citizen(self, note: str, actor: str, correlation_id: str) -> None:
        """The lead contacted the citizen (响应); the first contact counts for the response
        rate."""
        self._require("record a contact on", *ACTIVE)
        if not note.strip():
            raise IllegalTransitionError("a contact needs a note of what was agreed")
        self.contacts += 1

    # -- the citizen's answer (好差评) ---------------------------------------------------

    @event("CaseRated")
    def rate(
        self,
        rating: int,
        comment: str,
        revisit: bool,
        due_at: datetime | None,
        due_soon_at: datetime | None,
        actor: str,
        correlation_id: str,
        solved: bool | None = None,
    ) -> None:
        """Rate the answer 1-5; ``revisit`` (a bad rating) reopens it with a new deadline.
        ``solved``: whether the citizen says the problem was solved (None: not asked)."""
        self._require("rate", "resolved")
        if not 1 <= rating <= 5:
            raise IllegalTransitionError("a rating is 1 to 5")
        new_deadline: tuple[datetime, datetime] | None = None
        if revisit:  # checked before any change: a refused command changes nothing
            if due_at is None or due_soon_at is None:
                raise IllegalTransitionError("a revisit needs a new deadline")
            new_deadline = (due_at, due_soon_at)
        self.rating = rating
        self.rating_comment = comment
        self.solved = solved
        if new_deadline is not None:
            self.status = "reopened"
            self.revisits += 1
            self._set_deadline(*new_deadline)
            self.status_notes = "reopened for a revisit after a bad rating"
        else:
            self.status = "closed"
            self.status_notes = self.reply or ""

    @event("CaseClosed")
    def close(self, actor: str, reason: str, correlation_id: str) -> None:
        """Close a resolved case the citizen did not rate in time."""
        self._require("close", "resolved")
        self.status = "closed"

    @event("CaseCancelled")
    def cancel(self, actor: str, reason: str, correlation_id: str) -> None:
        self._require("cancel", *OPEN)
        self.status = "cancelled"
        self.extension_request = None
        self.dispute = None
        self.status_notes = reason or "cancelled by the citizen"

    # -- the SLA clock --------------------------------------------------------------------

    def due_soon_pending(self, now: datetime) -> bool:
        return (
            self.status in ACTIVE
            and self.due_soon_at is not None
            and now >= self.due_soon_at
            and self.due_soon_recorded < self.deadline_no
        )

    def overdue_pending(self, now: datetime) -> bool:
        return (
            self.status in ACTIVE
            and self.due_at is not None
            and now >= self.due_at
            and self.overdue_recorded < self.deadline_no
        )

    def _require_unmarked(self, command: str, mark: str, deadline_no: int, recorded: int) -> None:
        """``deadline_no`` is the current deadline, and its ``mark`` is not recorded yet."""
        self._require(command, *ACTIVE)
        if deadline_no != self.deadline_no or recorded >= deadline_no:
            raise IllegalTransitionError(f"deadline {deadline_no} is not pending {mark}")

    @event("CaseDueSoon")
    def mark_due_soon(
        self, deadline_no: int, due_at: datetime, actor: str, correlation_id: str
    ) -> None:
        self._require_unmarked(
            "mark as due soon", "a due-soon mark", deadline_no, self.due_soon_recorded
        )
        self.due_soon_recorded = deadline_no

    @event("CaseBecameOverdue")
    def mark_overdue(
        self, deadline_no: int, due_at: datetime, actor: str, correlation_id: str
    ) -> None:
        self._require_unmarked(
            "mark as overdue", "an overdue mark", deadline_no, self.overdue_recorded
        )
        self.overdue_recorded = deadline_no

    # -- the join with the management network ---------------------------------------------

    @event("LinkedToIncident")
    def link_incident(
        self,
        incident_id: str,
        rule_id: str,
        rule_version: int,
        distance_m: float,
        actor: str,
        correlation_id: str,
    ) -> None:
        """The case reports the same problem as the incident (the correlation rule says)."""
        self._require("link", *OPEN)
        if self.incident_id == incident_id:
            raise IllegalTransitionError(f"the case is already linked to {incident_id}")
        self.incident_id = incident_id

    @event("SensorsChecked")
    def note_sensor_check(
        self,
        result: str,
        sensors: list[str],
        rule_id: str,
        rule_version: int,
        actor: str,
        correlation_id: str,
    ) -> None:
        """What sensors of the right type nearby show: confirmed, not_confirmed, no_sensors."""
        if result not in SENSOR_CHECKS:
            raise IllegalTransitionError(f"unknown sensor check result {result!r}")
        self.sensor_check = result

    # -- personal data -------------------------------------------------------------------

    @event("PersonalDataErased")
    def note_erasure(self, actor: str, reason: str, correlation_id: str) -> None:
        """Record that the citizen's key was destroyed; the token is now unreadable."""
        if self.erased:
            raise IllegalTransitionError("personal data is already erased")
        self.erased = True
