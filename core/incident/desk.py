"""The management network's incident commands: dispatch, accept, resolve, verify, escalate.

Resolving an incident resolves, in the same transaction, every linked service case that
is still open, with a reply built from the field feedback (主动服务); the notifier then
tells each citizen. Deadlines come from the correlation policy's time limits by
severity, in calendar hours; ``now`` is injected (tests and replays pass their own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from core.app import CityApp
from core.brain.correlation import CorrelationPolicy
from core.case import OPEN, ServiceCase
from core.commands import CommandContext
from core.errors import ConcurrentUpdateError, IllegalTransitionError
from core.incident import Incident
from core.incident.commands import AcceptWork, Dispatch, IncidentCommand, Resolve, Verify

SYSTEM_ESCALATION = "system:incident-clock"
# The caller's authorization, run on the incident the command is about to change.
Check = Callable[[Incident], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command changed: the incident, and the linked cases it resolved with it."""

    incident: Incident
    cases: list[ServiceCase] = field(default_factory=list)


def proactive_reply(feedback: str) -> str:
    """What a citizen is told when the incident behind their report is fixed."""
    return (
        "您反映的问题已由城市运行中心统一处置。处置结果："
        + feedback.strip()
        + " / The city operations center has fixed the problem you reported: "
        + feedback.strip()
    )


class IncidentDesk:
    def __init__(
        self,
        app: CityApp,
        policy: CorrelationPolicy,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.app = app
        self.policy = policy
        self.now = now

    def get(self, incident_uuid: UUID) -> Incident:
        return self.app.get_incident(incident_uuid)

    def _save(self, *aggregates: Incident | ServiceCase) -> None:
        self.app.save_unless_changed(*aggregates, what=f"incident {aggregates[0].id}")

    def _due(self, incident: Incident) -> datetime:
        return self.now() + self.policy.time_limit(incident.severity)

    def execute(
        self,
        incident_uuid: UUID,
        command: IncidentCommand,
        ctx: CommandContext,
        check: Check | None = None,
    ) -> Outcome:
        """Run ``command`` on the incident: load it, let ``check`` (the caller's
        authorization) see it, apply the command, and save the incident with the cases it
        changed, atomically."""
        incident = self.get(incident_uuid)
        if check is not None:
            check(incident)
        cases = self._apply(incident, command, ctx)
        self._save(incident, *cases)
        return Outcome(incident, cases)

    def _apply(
        self, incident: Incident, command: IncidentCommand, ctx: CommandContext
    ) -> list[ServiceCase]:
        """Apply ``command``; the linked service cases it changed too."""
        match command:
            case Dispatch():
                self._dispatch(incident, command, ctx)
            case AcceptWork():
                incident.accept_work(**ctx.stamp())
            case Resolve():
                return self._resolve(incident, command.feedback, ctx)
            case Verify():
                self._verify(incident, command, ctx)
            case _:
                raise TypeError(f"not an incident command: {command!r}")
        return []

    def _dispatch(self, incident: Incident, command: Dispatch, ctx: CommandContext) -> None:
        department = command.department_code or incident.department_code
        if not department:
            raise IllegalTransitionError(
                "no department for this place: name the department to dispatch to"
            )
        incident.dispatch(
            department_code=department,
            due_at=self._due(incident),
            reason=command.reason,
            **ctx.stamp(),
        )

    def _resolve(self, incident: Incident, feedback: str, ctx: CommandContext) -> list[ServiceCase]:
        incident.resolve(feedback=feedback, **ctx.stamp())
        cases = []
        for key in incident.linked_cases:
            case = self.app.get_typed(UUID(key), ServiceCase, "service case")
            if case.status in OPEN and case.incident_id == str(incident.id):
                case.resolve_with_incident(
                    incident_id=str(incident.id),
                    reply=proactive_reply(feedback),
                    reason="resolved with the linked incident",
                    **ctx.stamp(),
                )
                cases.append(case)
        return cases

    def _verify(self, incident: Incident, command: Verify, ctx: CommandContext) -> None:
        if command.passed:
            incident.verify(note=command.note, **ctx.stamp())
            incident.close(reason=command.note or "verified on site", **ctx.stamp())
        else:
            incident.order_rework(reason=command.note, due_at=self._due(incident), **ctx.stamp())

    # -- the commands by name, for callers that pass actor and correlation id apart ------

    def dispatch(
        self,
        incident_uuid: UUID,
        department_code: str | None,
        actor: str,
        reason: str,
        correlation_id: str,
    ) -> Incident:
        """To ``department_code``, or the department the incident's place belongs to."""
        command = Dispatch(department_code, reason)
        return self.execute(incident_uuid, command, CommandContext(actor, correlation_id)).incident

    def accept(
        self, incident_uuid: UUID, actor: str, correlation_id: str, check: Check | None = None
    ) -> Incident:
        ctx = CommandContext(actor, correlation_id)
        return self.execute(incident_uuid, AcceptWork(), ctx, check).incident

    def resolve(
        self,
        incident_uuid: UUID,
        feedback: str,
        actor: str,
        correlation_id: str,
        check: Check | None = None,
    ) -> tuple[Incident, list[ServiceCase]]:
        """Field feedback (处置反馈); every linked open case is resolved with it, atomically."""
        ctx = CommandContext(actor, correlation_id)
        done = self.execute(incident_uuid, Resolve(feedback), ctx, check)
        return done.incident, done.cases

    def verify(
        self, incident_uuid: UUID, passed: bool, note: str, actor: str, correlation_id: str
    ) -> Incident:
        """On-site verification (核查): passed closes (结案), failed orders rework (返工)."""
        command = Verify(passed, note)
        return self.execute(incident_uuid, command, CommandContext(actor, correlation_id)).incident

    def check_escalations(self, incident_ids: Iterable[UUID], correlation_id: str) -> int:
        """Escalate each incident whose deadline (or last escalation's) has passed."""
        clock = CommandContext(SYSTEM_ESCALATION, correlation_id)
        done = 0
        now = self.now()
        for incident_uuid in incident_ids:
            incident = self.get(incident_uuid)
            if not incident.escalation_pending(now):
                continue
            level = incident.escalation_level + 1
            if level > self.policy.max_escalation_level:
                continue
            last = level == self.policy.max_escalation_level
            next_at = None if last else now + self.policy.time_limit(incident.severity)
            incident.escalate(level=level, next_at=next_at, **clock.stamp())
            try:
                self._save(incident)
            except ConcurrentUpdateError:
                continue  # another clock (or a person) got there first; next round sees it
            done += 1
        return done
