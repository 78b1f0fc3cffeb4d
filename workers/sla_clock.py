"""The SLA clock worker: due-soon (80 %) and overdue (100 %) marks on cases, and the
escalation (督办) of incidents past their deadline.

It polls the read models for candidates and lets ``ServiceDesk.check_deadlines`` and
``IncidentDesk.check_escalations`` decide on the aggregate itself, so a mark or an
escalation is written once per deadline even across restarts, with several clocks
running, or with a read model that lags.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from core.case.desk import ServiceDesk
from core.incident.desk import IncidentDesk
from projections.case_queries import CaseQueries
from workers.polling import poll

log = logging.getLogger(__name__)


@dataclass(eq=False)
class SlaClock:
    desk: ServiceDesk
    cases: CaseQueries
    poll_s: float = 5.0
    incidents: IncidentDesk | None = None

    def tick(self) -> dict[str, int]:
        """One pass over the cases whose marks are due now."""
        now = datetime.now(UTC)
        totals = {"due_soon": 0, "overdue": 0, "raced": 0, "missing": 0, "escalated": 0}
        if self.incidents is not None:
            due = self.cases.escalation_candidates(now)
            if due:
                totals["escalated"] = self.incidents.check_escalations(
                    due, correlation_id=f"sla:{now.isoformat()}"
                )
        while True:
            candidates = self.cases.deadline_candidates(now, limit=500)
            if not candidates:
                return totals
            counts = self.desk.check_deadlines(candidates, correlation_id=f"sla:{now.isoformat()}")
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
            if len(candidates) < 500 or counts["due_soon"] + counts["overdue"] == 0:
                # The rest is still in the read model's past: the next tick sees it.
                return totals

    def run(self, stop: threading.Event) -> None:
        poll("SLA clock", self.tick, self.poll_s, stop, _marks_or_escalations)


def _marks_or_escalations(counts: Mapping[str, int]) -> bool:
    return bool(counts["due_soon"] or counts["overdue"] or counts["escalated"])
