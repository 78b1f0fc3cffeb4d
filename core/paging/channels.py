"""The port every outside page leaves through, and the message a person reads.

One ``PageChannel`` per channel name (``email``, ``webhook``, ``sms``); the adapters live
in ``infra/channels.py``. Each delivery carries the page's idempotency key: a delivery
tried again (after a failure, or after the pager was killed mid-send) carries the same
key, so the receiver can drop the repeat. In-app pages have no channel: they are the
page events themselves, read through the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

TRIGGER_TEXT = {
    "critical_alarm": ("紧急告警无人确认", "critical alarm not acknowledged"),
    "incident_overdue": ("事件处置超时", "incident past its deadline"),
    "case_overdue": ("工单办理超时", "service case past its deadline"),
    "dispute_unarbitrated": ("异议超时未裁定", "dispute not arbitrated in time"),
}
LEVEL_TEXT = {"street": "街镇", "district": "区", "city": "市"}


class DeliveryError(Exception):
    """The channel did not take the page this time; sending it again may succeed."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One page to one address; ``key`` (the page id) is the idempotency key."""

    key: str
    escalation_id: str
    person: str
    channel: str
    address: str
    level: str
    trigger: str
    subject: str
    title: str
    text: str


class PageChannel(Protocol):
    """Delivers pages over one channel; an adapter implements it."""

    def send(self, delivery: Delivery) -> None:
        """Deliver; raise ``DeliveryError`` on a failure worth retrying."""
        ...


def page_text(trigger: str, level: str, title: str, key: str) -> str:
    """What the person reads: Chinese first, then English; short enough for one SMS."""
    zh, en = TRIGGER_TEXT.get(trigger, (trigger, trigger))
    return (
        f"【城运督办·{LEVEL_TEXT.get(level, level)}级】{zh}：{title[:80]}。请在城运中心确认。"
        f" [CityOps {level} page] {en}: {title[:80]}. Acknowledge in the operations center."
        f" ({key[:8]})"
    )
