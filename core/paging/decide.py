"""Which pages are due now: a pure function of the escalation, the policy and the clock.

For each level whose delay has passed since the trigger's start, every person on call
there for the subject's place is paged once over each channel they want (deduplication:
once per trigger, subject, level, person and channel, since the escalation's record of
pages is checked). In-app pages are always due at once; an outside channel (email,
webhook, SMS) waits while the person is in quiet hours, unless the trigger is critical,
and while the person's rate cap is reached. A waiting page is decided again on a later
call, so it goes out once the quiet hours end or the cap has room, unless the
escalation has ended by then. Nothing is due for an escalation that has ended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from core.paging import Escalation
from core.paging.policy import PagingPolicy, Person


@dataclass(frozen=True, slots=True)
class PageOrder:
    """One page to record: ``person`` over ``channel`` at ``level``."""

    level: str
    person: str
    channel: str


@dataclass(frozen=True, slots=True)
class Held:
    """A page not due yet, and why (``quiet_hours``, ``rate_cap``)."""

    order: PageOrder
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    due: list[PageOrder]
    held: list[Held]


def _capped(person: Person, sent: Sequence[datetime], now: datetime, extra: int) -> bool:
    recent = sum(1 for t in sent if now - t < person.window)
    return recent + extra >= person.max_pages


def due_pages(
    escalation: Escalation,
    policy: PagingPolicy,
    now: datetime,
    sent: Mapping[str, Sequence[datetime]] | None = None,
) -> Decision:
    """The pages due for ``escalation`` at ``now``; ``sent``: per person, when their
    outside pages (every escalation's) were recorded, for the rate cap."""
    trigger = policy.trigger(escalation.trigger)
    if not escalation.live or trigger is None:
        return Decision([], [])
    sent = sent or {}
    due: list[PageOrder] = []
    held: list[Held] = []
    outside: dict[str, int] = {}  # outside pages decided in this call, per person
    for step in trigger.levels:
        if now < escalation.started_at + step.after:
            break
        for person in policy.on_call(step.level, escalation.grid_code, escalation.district_code):
            for channel in person.channels:
                if escalation.paged(step.level, person.id, channel):
                    continue
                order = PageOrder(step.level, person.id, channel)
                if channel != "in_app":
                    quiet = person.quiet_hours is not None and person.quiet_hours.contains(now)
                    if quiet and not escalation.critical:
                        held.append(Held(order, "quiet_hours"))
                        continue
                    extra = outside.get(person.id, 0)
                    if _capped(person, sent.get(person.id, ()), now, extra):
                        held.append(Held(order, "rate_cap"))
                        continue
                    outside[person.id] = extra + 1
                due.append(order)
    return Decision(due, held)
