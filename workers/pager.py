"""The pager: escalations opened from the read models, pages recorded, then delivered.

One pass (``tick``), at the injected clock's ``now``:

1. the pages view catches up with the log (the pager runs ``PageProjection`` itself);
2. the subjects every trigger holds true of now (``PageQueries.subjects``) open their
   escalation once (a deterministic id per trigger and subject), and an open
   escalation whose subject no longer holds (acknowledged, resolved, re-timed) stops;
3. each open escalation with a level due and nobody paged at it yet records the pages
   due now (``PagerDesk.escalate``; the rate caps count the outside pages of the last
   day); every ``FULL_PASS_EVERY`` passes all of them do, for the pages held back;
4. the outbox: every recorded outside page not yet delivered is sent and its outcome
   recorded (``PagerDesk.deliver``).

Pages are recorded before anything is sent, and a page counts as delivered only once
its outcome is recorded: a pager killed mid-send sends that page again on its next pass,
with the same idempotency key, and the receiver drops the repeat. Several pagers may run:
every write is checked against the aggregate's version.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from core.paging.channels import PageChannel
from core.paging.desk import PagerDesk, Subject
from projections.pages import PageQueries, window_start
from projections.runner import ProjectionWorker
from workers.polling import poll

log = logging.getLogger(__name__)

SUBJECT_LIMIT = 5_000
# Every this many passes each open escalation is decided again, also when none of its
# levels is newly due: the pages held for quiet hours or a rate cap go out then.
FULL_PASS_EVERY = 12
STOP_REASONS = {
    "critical_alarm": "the incident was acknowledged, closed or is no longer critical",
    "incident_overdue": "the incident was resolved, closed or given a new deadline",
    "case_overdue": "the case was resolved, closed or given a new deadline",
    "dispute_unarbitrated": "the dispute was arbitrated",
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class Pager:
    desk: PagerDesk
    queries: PageQueries
    view: ProjectionWorker
    channels: Mapping[str, PageChannel]
    poll_s: float = 5.0
    clock: Callable[[], datetime] = field(default=_utc_now)
    passes: int = field(default=0, init=False)

    def tick(self) -> dict[str, int]:
        """One pass: open, stop, page, deliver; the counts of each."""
        now = self.clock()
        correlation_id = f"pager:{now.isoformat()}"
        totals = Counter({"opened": 0, "stopped": 0, "paged": 0, "delivered": 0, "failed": 0})
        self.view.catch_up()
        policy = self.desk.policy
        found = self.queries.subjects(now, SUBJECT_LIMIT)
        subjects = {s.escalation_id: s for s in found if policy.trigger(s.trigger) is not None}
        # A trigger whose query was cut at the limit may hold of more: stop none of those.
        per_trigger = Counter(s.trigger for s in subjects.values())
        full = {t for t, n in per_trigger.items() if n >= SUBJECT_LIMIT}
        statuses = self.queries.escalation_statuses(subjects)
        for uuid, subject in subjects.items():
            if uuid not in statuses and self.desk.open(subject, correlation_id):
                totals["opened"] += 1
        for uuid, trigger, _ in self.queries.open_escalations():
            if uuid in subjects or trigger in full:
                continue
            reason = (
                STOP_REASONS.get(trigger, "the trigger no longer holds")
                if policy.trigger(trigger) is not None
                else "the paging policy no longer has this trigger"
            )
            totals["stopped"] += self.desk.stop(uuid, reason, correlation_id)
        sent = self.queries.sent_since(window_start(now))
        for uuid in self._to_decide(subjects, statuses, now):
            for order in self.desk.escalate(uuid, now, correlation_id, sent):
                totals["paged"] += 1
                if order.channel != "in_app":
                    sent.setdefault(order.person, []).append(now)
        self.view.catch_up()
        self._deliver(correlation_id, totals)
        self.view.catch_up()
        return dict(totals)

    def _to_decide(
        self, subjects: Mapping[UUID, Subject], statuses: Mapping[UUID, str], now: datetime
    ) -> list[UUID]:
        """The open escalations that may have pages due: a level newly due, or all of them
        on a full pass."""
        self.passes += 1
        live = [uuid for uuid in subjects if statuses.get(uuid, "open") == "open"]
        if self.passes % FULL_PASS_EVERY == 1:
            return live
        paged = self.queries.levels_paged(live)
        chosen = []
        for uuid in live:
            subject = subjects[uuid]
            # As recorded (the view has it once projected), else as the trigger says now.
            started, levels_paged = paged.get(uuid, (subject.started_at, set()))
            policy = self.desk.policy.trigger(subject.trigger)
            levels = policy.levels if policy is not None else ()
            if {s.level for s in levels if now >= started + s.after} - levels_paged:
                chosen.append(uuid)
        return chosen

    def _deliver(self, correlation_id: str, totals: Counter[str]) -> None:
        for uuid, key in self.queries.outbox(backoff_s=self.poll_s):
            outcome = self.desk.deliver(uuid, key, self.channels, correlation_id)
            if outcome in ("delivered", "failed"):
                totals[outcome] += 1

    def run(self, stop: threading.Event) -> None:
        poll("pager", self.tick, self.poll_s, stop)
