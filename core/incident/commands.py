"""The incident workflow's commands: one small frozen object per step.

``IncidentDesk.execute`` runs one with a ``CommandContext`` (who, correlation id): load
the incident, let the caller check it, apply the step, save the incident together with
the service cases the step changed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IncidentCommand:
    """A command that ``IncidentDesk.execute`` runs on one incident."""


@dataclass(frozen=True, slots=True)
class Dispatch(IncidentCommand):
    """To ``department_code``, or the department the incident's place belongs to (派遣)."""

    department_code: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AcceptWork(IncidentCommand):
    """The department takes the incident on (处置 begins)."""


@dataclass(frozen=True, slots=True)
class Resolve(IncidentCommand):
    """Field feedback (处置反馈); every linked open case is resolved with it."""

    feedback: str


@dataclass(frozen=True, slots=True)
class Verify(IncidentCommand):
    """On-site verification (核查): passed closes (结案), failed orders rework (返工)."""

    passed: bool
    note: str = ""
