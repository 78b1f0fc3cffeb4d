"""The ``Escalation`` aggregate: one kind of neglect of one subject, and who was told.

An escalation is opened once per (trigger, subject) (``escalation_id``): a critical
incident nobody acknowledged, an incident or a case past a deadline, a dispute nobody
arbitrated. Each page (one person, one channel, one level) is an event with its
idempotency key; so is each delivery outcome of an outside channel (delivered, failed,
withdrawn because the escalation ended first), the acknowledgement (who: the actor;
when: the event's time) and the stop (the subject was acknowledged or resolved). In-app
pages are delivered by being recorded: the API reads them.

    open --paged...--> acknowledged
        \\-----------> stopped

Nothing is paged after the acknowledgement or the stop; a page recorded before them and
not yet sent is withdrawn, not sent. Times are passed in (the pager's clock).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from core.errors import IllegalTransitionError

ESCALATION_NS = uuid5(NAMESPACE_URL, "https://cityops.example/escalation")
# What a page's outside delivery is: waiting to be sent, or its last outcome.
PENDING, DELIVERED, FAILED, WITHDRAWN, IN_APP = (
    "pending",
    "delivered",
    "failed",
    "withdrawn",
    "in_app",
)


def escalation_id(trigger: str, subject: str) -> UUID:
    """The one escalation of ``trigger`` about ``subject`` (``incident:<id>``, ...)."""
    return uuid5(ESCALATION_NS, f"{trigger}|{subject}")


def page_id(escalation: UUID, level: str, person: str, channel: str) -> UUID:
    """One page per (level, person, channel) of an escalation: the idempotency key."""
    return uuid5(escalation, f"{level}|{person}|{channel}")


class Escalation(Aggregate):
    @event("Opened")
    def __init__(
        self,
        trigger: str,
        subject: str,
        title: str,
        grid_code: str | None,
        district_code: str | None,
        critical: bool,
        started_at: datetime,
        policy_version: int,
        actor: str,
        correlation_id: str,
    ) -> None:
        self.trigger = trigger
        self.subject = subject
        self.title = title
        self.grid_code = grid_code
        self.district_code = district_code
        self.critical = critical
        self.started_at = started_at
        self.policy_version = policy_version
        self.status = "open"
        self.acknowledged_by: str | None = None
        self.stop_reason: str | None = None
        # page id (str) -> {person, channel, level, at, delivery, attempts}
        self.pages: dict[str, dict[str, Any]] = {}

    @classmethod
    def open(cls, trigger: str, subject: str, **kwargs: Any) -> Escalation:
        return cls._create(
            cls.Opened,  # type: ignore[attr-defined]
            id=escalation_id(trigger, subject),
            trigger=trigger,
            subject=subject,
            **kwargs,
        )

    @property
    def live(self) -> bool:
        """Still paging: neither acknowledged nor stopped."""
        return self.status == "open"

    def paged(self, level: str, person: str, channel: str) -> bool:
        return str(page_id(self.id, level, person, channel)) in self.pages

    def _page(self, key: str) -> dict[str, Any]:
        page = self.pages.get(key)
        if page is None:
            raise IllegalTransitionError(f"escalation {self.id} has no page {key}")
        return page

    @event("Paged")
    def page(
        self,
        page_id: str,
        person: str,
        channel: str,
        level: str,
        at: datetime,
        actor: str,
        correlation_id: str,
    ) -> None:
        """``person`` paged over ``channel`` at ``level``; ``page_id`` is the key every
        delivery of it carries."""
        if not self.live:
            raise IllegalTransitionError(f"escalation is {self.status}: nobody is paged")
        if page_id in self.pages:
            raise IllegalTransitionError(f"page {page_id} is recorded already")
        self.pages[page_id] = {
            "person": person,
            "channel": channel,
            "level": level,
            "at": at,
            "delivery": IN_APP if channel == "in_app" else PENDING,
            "attempts": 0,
        }

    def _require_pending(self, key: str) -> dict[str, Any]:
        page = self._page(key)
        if page["delivery"] not in (PENDING, FAILED):
            raise IllegalTransitionError(f"page {key} is {page['delivery']}")
        return page

    @event("PageDelivered")
    def record_delivery(self, page_id: str, attempt: int, actor: str, correlation_id: str) -> None:
        """The channel took the page (recorded even if the escalation ended meanwhile:
        it was sent)."""
        page = self._require_pending(page_id)
        page["delivery"] = DELIVERED
        page["attempts"] = attempt

    @event("PageDeliveryFailed")
    def record_failure(
        self, page_id: str, attempt: int, error: str, final: bool, actor: str, correlation_id: str
    ) -> None:
        """One attempt failed; ``final``: no attempt follows."""
        page = self._require_pending(page_id)
        page["attempts"] = attempt
        page["delivery"] = WITHDRAWN if final else FAILED

    @event("PageWithdrawn")
    def withdraw(self, page_id: str, reason: str, actor: str, correlation_id: str) -> None:
        """Not sent: the escalation ended before the page went out."""
        self._require_pending(page_id)["delivery"] = WITHDRAWN

    @event("Acknowledged")
    def acknowledge(self, page_id: str | None, actor: str, correlation_id: str) -> None:
        """Someone took it (``actor``; ``page_id``: the page they answered, if any)."""
        if not self.live:
            raise IllegalTransitionError(f"escalation is {self.status} already")
        self.status = "acknowledged"
        self.acknowledged_by = actor

    @event("Stopped")
    def stop(self, reason: str, actor: str, correlation_id: str) -> None:
        """The subject no longer needs anyone: acknowledged, resolved, closed, re-timed."""
        if not self.live:
            raise IllegalTransitionError(f"escalation is {self.status} already")
        self.status = "stopped"
        self.stop_reason = reason

    def undelivered(self) -> list[str]:
        """The pages whose outside delivery is still to be done."""
        return [k for k, p in self.pages.items() if p["delivery"] in (PENDING, FAILED)]
