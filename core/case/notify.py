"""Telling citizens their case was resolved (主动服务): the message and the port that sends it.

The domain decides what a citizen reads and over which channel; an adapter (``infra/notify.py``)
delivers it. Each notice carries an idempotency key of the case and the event version that
caused it, so a redelivered event cannot notify the citizen twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol
from uuid import UUID

from core.personal import Contact

Channel = Literal["sms", "email"]

# An SMS longer than this is split into too many parts to read as one message.
MAX_BODY_CHARS = 500
ELLIPSIS = "…"
_TRAILING_PUNCTUATION = "。.！!；;，, "


class NotificationError(Exception):
    """A notice could not be delivered this time; sending it again may succeed."""


@dataclass(frozen=True, slots=True)
class Notice:
    """One message to one citizen; ``address`` is the clear phone or email."""

    key: str
    case_id: UUID
    channel: Channel
    address: str
    subject: str
    body: str
    locale: str = "zh"


class Notifier(Protocol):
    """Delivers notices; an adapter implements it."""

    def send(self, notice: Notice) -> None:
        """Deliver ``notice``; raise ``NotificationError`` on a failure worth retrying."""
        ...


def resolution_notice(
    case_id: UUID,
    external_id: str,
    category_name_zh: str,
    category_name_en: str,
    reply: str,
    contact: Contact | None,
    version: int,
    proactive: bool,
) -> Notice | None:
    """The notice telling a citizen their case was resolved; None if they left no phone or email.

    Chinese first, then English. ``proactive``: the case was resolved together with an
    incident the city found itself. ``version`` is that of the resolving event.
    """
    if contact is None:
        return None
    if contact.phone:
        channel: Channel = "sms"
        address = contact.phone
    elif contact.email:
        channel = "email"
        address = contact.email
    else:
        return None

    def body_with(text: str) -> str:
        handled = "该问题已由城市运行中心统一处置。" if proactive else ""
        handled_en = (
            " The city operations center handled it together with an incident it had found."
            if proactive
            else ""
        )
        done = f"已办结：{text}。" if text else "已办结。"
        return (
            f"【12345】您反映的“{category_name_zh}”问题（工单号 {external_id}）{done}"
            f"{handled}如不满意请回复评价。\n"
            f'[12345] Your report on "{category_name_en}" (case {external_id}) has been '
            f"resolved.{handled_en} Not satisfied? Reply to rate our service."
        )

    # One line for an SMS; no doubled full stop after the department's own.
    text = re.sub(r"\s+", " ", reply).strip().rstrip(_TRAILING_PUNCTUATION)
    room = MAX_BODY_CHARS - (len(body_with(ELLIPSIS)) - len(ELLIPSIS))
    if len(text) > room:
        text = text[: max(room - 1, 0)].rstrip() + ELLIPSIS
    body = body_with(text)
    if len(body) > MAX_BODY_CHARS:  # only with absurdly long category names or ids
        body = body[: MAX_BODY_CHARS - 1] + ELLIPSIS
    return Notice(
        key=f"{case_id}:{version}",
        case_id=case_id,
        channel=channel,
        address=address,
        subject=f"【12345】工单 {external_id} 已办结 / Case {external_id} resolved",
        body=body,
    )
