"""Commands on an existing service case: one small frozen object per transition.

A command holds only what its caller decides (a reason, a reply, a rating).
``ServiceDesk.execute`` runs it with a ``CommandContext`` (who gives it, the correlation
id): load the case, let the caller check it, apply the command's transition, save. The
HTTP bodies of the case routes have the same fields, by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, slots=True)
class CaseCommand:
    """A command that ``ServiceDesk.execute`` runs on one case."""


# -- dispatcher -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accept(CaseCommand):
    """Register a held case (立案); dispatch it by policy, or to ``department_code``."""

    reason: str = ""
    department_code: str | None = None


@dataclass(frozen=True, slots=True)
class Reject(CaseCommand):
    """Refuse a case: a duplicate of ``duplicate_of``, out of scope, or not the city's."""

    rejection: str
    duplicate_of: UUID | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Assign(CaseCommand):
    """Manual dispatch (or re-dispatch of a returned case) to a named department."""

    department_code: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ApproveExtension(CaseCommand):
    """Grant the pending extension request: the deadline moves by its hours."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class RefuseExtension(CaseCommand):
    """Refuse the pending extension request: the deadline stays."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class AddCoHandler(CaseCommand):
    """Ask ``department_code`` to co-handle (协办) ``part`` of the work."""

    department_code: str
    part: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class WaiveCoHandling(CaseCommand):
    """Let the lead resolve without the co-handlers still pending (a reason is needed)."""

    reason: str


@dataclass(frozen=True, slots=True)
class UpholdDispute(CaseCommand):
    """The disputing unit was wrongly assigned: reassign (改派) to ``department_code``, or
    to the unit the dispute proposed; the new unit's clock starts now."""

    department_code: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RejectDispute(CaseCommand):
    """The assignment stands: the case stays with the unit, its deadline unmoved."""

    reason: str


# -- department -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start(CaseCommand):
    """The department starts work (处置)."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Resolve(CaseCommand):
    """Resolve with a reply to the citizen (反馈)."""

    reply: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ReturnCase(CaseCommand):
    """Not the department's own: the case goes back for re-dispatch (a reason is needed)."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Dispute(CaseCommand):
    """The lead disputes its assignment (异议), within the time allowed after it; it may
    name the unit it believes responsible."""

    reason: str
    proposed_department_code: str | None = None


@dataclass(frozen=True, slots=True)
class ContactCitizen(CaseCommand):
    """Record a contact with the citizen (响应): the first one counts for the response rate."""

    note: str


@dataclass(frozen=True, slots=True)
class AnswerCoHandling(CaseCommand):
    """A co-handling unit's feedback on its part (协办反馈)."""

    department_code: str
    feedback: str


@dataclass(frozen=True, slots=True)
class RequestExtension(CaseCommand):
    """Ask a dispatcher for ``hours`` more (延期申请)."""

    hours: float
    reason: str


# -- citizen ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate(CaseCommand):
    """Rate a resolved case; a bad rating reopens it for a revisit with a new deadline."""

    rating: int
    comment: str = ""
    solved: bool | None = None  # the citizen says the problem was solved (解决)


@dataclass(frozen=True, slots=True)
class Cancel(CaseCommand):
    """Withdraw an unresolved case."""

    reason: str = ""
