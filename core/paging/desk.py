"""The paging commands: open an escalation, record the pages due, deliver one, acknowledge,
stop.

Every write is saved with optimistic concurrency (``CityApp.save_unless_changed``) on
freshly loaded state, so an acknowledgement and a page that race cannot both win on
the same version: when the pager's save of new pages loses to an acknowledgement, it
reloads, the decision finds the escalation ended, and nothing is recorded nor sent. The
acknowledgement itself is retried on such a conflict, so it always lands. Outside
pages are recorded first and delivered after (an outbox): ``deliver`` sends a recorded
page and records the outcome; a page whose escalation ended before it went out is
withdrawn instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from core.app import CityApp
from core.commands import CommandContext
from core.errors import ConcurrentUpdateError, IllegalTransitionError, NotFoundError
from core.paging import DELIVERED, FAILED, PENDING, WITHDRAWN, Escalation, escalation_id, page_id
from core.paging.channels import Delivery, DeliveryError, PageChannel, page_text
from core.paging.decide import PageOrder, due_pages
from core.paging.policy import PagingPolicy

SYSTEM_PAGER = "system:pager"
RETRIES = 5


@dataclass(frozen=True, slots=True)
class Subject:
    """Something a trigger holds true of now: the escalation it opens and where it is."""

    trigger: str
    subject: str
    title: str
    grid_code: str | None
    district_code: str | None
    started_at: datetime

    @property
    def escalation_id(self) -> UUID:
        return escalation_id(self.trigger, self.subject)


class PagerDesk:
    def __init__(self, app: CityApp, policy: PagingPolicy) -> None:
        self.app = app
        self.policy = policy

    def get(self, escalation: UUID) -> Escalation:
        return self.app.get_typed(escalation, Escalation, "escalation")

    def _save(self, escalation: Escalation) -> None:
        self.app.save_unless_changed(escalation, what=f"escalation {escalation.id}")

    def _retrying(self, escalation: UUID, change: Callable[[Escalation], bool]) -> Escalation:
        """Load, ``change`` (False: nothing to save), save; again on a conflict."""
        for _ in range(RETRIES):
            found = self.get(escalation)
            if not change(found):
                return found
            try:
                self._save(found)
            except ConcurrentUpdateError:
                continue
            return found
        raise ConcurrentUpdateError(f"escalation {escalation} kept changing; try again")

    def open(self, subject: Subject, correlation_id: str) -> bool:
        """Open the escalation of ``subject`` unless it exists; True when new."""
        if self.app.exists(subject.escalation_id):
            return False
        policy = self.policy.trigger(subject.trigger)
        escalation = Escalation.open(
            subject.trigger,
            subject.subject,
            title=subject.title,
            grid_code=subject.grid_code,
            district_code=subject.district_code,
            critical=bool(policy and policy.critical),
            started_at=subject.started_at,
            policy_version=self.policy.version,
            actor=SYSTEM_PAGER,
            correlation_id=correlation_id,
        )
        try:
            self._save(escalation)
        except ConcurrentUpdateError:
            return False  # another pager opened it first
        return True

    def escalate(
        self,
        escalation: UUID,
        now: datetime,
        correlation_id: str,
        sent: Mapping[str, Sequence[datetime]] | None = None,
    ) -> list[PageOrder]:
        """Record the pages due at ``now``; the ones recorded (none once it has ended)."""
        ctx = CommandContext(SYSTEM_PAGER, correlation_id)
        recorded: list[PageOrder] = []

        def page(found: Escalation) -> bool:
            recorded.clear()
            for order in due_pages(found, self.policy, now, sent).due:
                key = page_id(found.id, order.level, order.person, order.channel)
                found.page(
                    page_id=str(key),
                    person=order.person,
                    channel=order.channel,
                    level=order.level,
                    at=now,
                    **ctx.stamp(),
                )
                recorded.append(order)
            return bool(recorded)

        self._retrying(escalation, page)
        return recorded

    def acknowledge(
        self,
        escalation: UUID,
        page: str | None,
        ctx: CommandContext,
        check: Callable[[Escalation], None] | None = None,
    ) -> Escalation:
        """``ctx.actor`` takes the escalation: paging stops. Retried on a conflict with the
        pager (the acknowledgement wins); 409 (``IllegalTransitionError``) once ended."""

        def ack(found: Escalation) -> bool:
            if check is not None:
                check(found)
            found.acknowledge(page_id=page, **ctx.stamp())
            return True

        return self._retrying(escalation, ack)

    def stop(self, escalation: UUID, reason: str, correlation_id: str) -> bool:
        """End the escalation (its subject needs no one now); False if it had ended."""
        stopped = False

        def end(found: Escalation) -> bool:
            nonlocal stopped
            stopped = found.live
            if stopped:
                found.stop(reason=reason, actor=SYSTEM_PAGER, correlation_id=correlation_id)
            return stopped

        self._retrying(escalation, end)
        return stopped

    # -- the outbox -------------------------------------------------------------------

    def delivery(self, escalation: Escalation, key: str) -> Delivery | None:
        """What goes out for page ``key``; None when its person has no address for it now."""
        page = escalation.pages[key]
        person = self.policy.person(page["person"])
        address = person.addresses.get(page["channel"]) if person is not None else None
        if not address:
            return None
        return Delivery(
            key=key,
            escalation_id=str(escalation.id),
            person=page["person"],
            channel=page["channel"],
            address=address,
            level=page["level"],
            trigger=escalation.trigger,
            subject=escalation.subject,
            title=escalation.title,
            text=page_text(escalation.trigger, page["level"], escalation.title, key),
        )

    def deliver(
        self,
        escalation_uuid: UUID,
        key: str,
        channels: Mapping[str, PageChannel],
        correlation_id: str,
    ) -> str:
        """Send recorded page ``key`` unless done or the escalation ended (then withdrawn);
        record the outcome; return it (delivered, failed, withdrawn)."""
        stamp = CommandContext(SYSTEM_PAGER, correlation_id).stamp()
        escalation = self.get(escalation_uuid)
        page = escalation.pages.get(key)
        if page is None:
            raise NotFoundError(f"escalation {escalation_uuid} has no page {key}")
        if page["delivery"] not in (PENDING, FAILED):
            return str(page["delivery"])
        if not escalation.live:
            self._outcome(
                escalation_uuid,
                key,
                lambda e: e.withdraw(key, reason=f"escalation {e.status}", **stamp),
            )
            return WITHDRAWN
        attempt = int(page["attempts"]) + 1
        delivery = self.delivery(escalation, key)
        channel = channels.get(page["channel"])
        error = None
        if delivery is None or channel is None:
            error = f"no {page['channel']} address or channel for {page['person']}"
        else:
            try:
                channel.send(delivery)
            except DeliveryError as exc:
                error = str(exc)[:500]
        if error is None:
            self._outcome(escalation_uuid, key, lambda e: e.record_delivery(key, attempt, **stamp))
            return DELIVERED
        final = delivery is None or channel is None or attempt >= self.policy.max_attempts
        self._outcome(
            escalation_uuid,
            key,
            lambda e: e.record_failure(key, attempt, error=error, final=final, **stamp),
        )
        return FAILED

    def _outcome(self, escalation: UUID, key: str, record: Callable[[Escalation], None]) -> None:
        """Record a delivery outcome on fresh state, unless it is recorded already."""

        def change(found: Escalation) -> bool:
            if found.pages[key]["delivery"] not in (PENDING, FAILED):
                return False  # another pager recorded it
            try:
                record(found)
            except IllegalTransitionError:
                return False
            return True

        self._retrying(escalation, change)
