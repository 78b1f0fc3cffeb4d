"""Resolution notices to citizens: the text they read, the channel, and the logging adapter."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID, uuid4

import pytest

from core.case.notify import MAX_BODY_CHARS, Notice, resolution_notice
from core.personal import Contact
from infra.notify import LoggingNotifier, SmtpNotifier, notifier_from_settings
from infra.settings import Settings

PHONE = "13812345678"
EMAIL = "li.lei@example.com"


def notice(
    contact: Contact | None = None,
    reply: str = "已修复路面坑洞",
    proactive: bool = False,
    case_id: UUID | None = None,
    version: int = 7,
) -> Notice | None:
    return resolution_notice(
        case_id=case_id or uuid4(),
        external_id="H-20261001-0042",
        category_name_zh="道路破损",
        category_name_en="Road surface damage",
        reply=reply,
        contact=Contact(phone=PHONE) if contact is None else contact,
        version=version,
        proactive=proactive,
    )


def sent(contact: Contact | None = None, **kw: Any) -> Notice:
    made = notice(contact, **kw)
    assert made is not None
    return made


class RecordingNotifier:
    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def send(self, notice: Notice) -> None:
        self.notices.append(notice)


def test_chinese_comes_first_then_english() -> None:
    case_id = uuid4()
    made = sent(case_id=case_id, reply="已修复路面坑洞。")
    zh, en = made.body.split("\n")
    assert zh == (
        "【12345】您反映的“道路破损”问题（工单号 H-20261001-0042）已办结：已修复路面坑洞。"
        "如不满意请回复评价。"
    )
    assert en.startswith('[12345] Your report on "Road surface damage" (case H-20261001-0042)')
    assert "resolved" in en
    assert "rate" in en
    assert made.locale == "zh"
    assert made.key == f"{case_id}:7"
    assert made.case_id == case_id
    assert "H-20261001-0042" in made.subject
    assert "已办结" in made.subject
    assert "resolved" in made.subject


def test_proactive_notice_says_the_operations_center_handled_it() -> None:
    proactive = sent(proactive=True)
    assert "该问题已由城市运行中心统一处置" in proactive.body
    assert "city operations center" in proactive.body
    plain = sent(proactive=False)
    assert "城市运行中心" not in plain.body
    assert "operations center" not in plain.body


def test_a_long_reply_is_cut_with_an_ellipsis() -> None:
    reply = "经现场核查，" + "施工单位已完成修补并压实。" * 80
    made = sent(reply=reply)
    assert len(made.body) == MAX_BODY_CHARS
    zh = made.body.split("\n")[0]
    assert "…。如不满意请回复评价。" in zh
    assert made.body.endswith("Not satisfied? Reply to rate our service.")


def test_a_reply_that_fits_is_kept_whole_on_one_line() -> None:
    made = sent(reply="  已修复。\n路面已恢复通行  ")
    assert "已办结：已修复。 路面已恢复通行。" in made.body
    assert "…" not in made.body
    assert made.body.count("\n") == 1


def test_sms_when_there_is_a_phone_else_email() -> None:
    both = sent(Contact(name="李雷", phone=PHONE, email=EMAIL))
    assert (both.channel, both.address) == ("sms", PHONE)
    email_only = sent(Contact(email=EMAIL))
    assert (email_only.channel, email_only.address) == ("email", EMAIL)


@pytest.mark.parametrize(
    "contact", [Contact(), Contact(name="李雷", address="黄浦区南京东路1号")], ids=str
)
def test_no_phone_or_email_means_no_notice(contact: Contact) -> None:
    assert notice(contact) is None


def test_an_erased_contact_means_no_notice() -> None:
    made = resolution_notice(uuid4(), "H-1", "道路破损", "Road damage", "ok", None, 3, False)
    assert made is None


def test_logging_notifier_masks_the_address_and_sends_a_key_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="infra.notify")
    notifier = LoggingNotifier()
    by_sms = sent(Contact(phone=PHONE))
    notifier.send(by_sms)
    notifier.send(by_sms)
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(records) == 1
    line = records[0].getMessage()
    assert PHONE not in caplog.text
    assert "138****5678" in line
    assert by_sms.key in line
    assert "已修复路面坑洞" in line

    by_email = sent(Contact(email=EMAIL), version=8)
    notifier.send(by_email)
    assert EMAIL not in caplog.text
    assert "l***@example.com" in caplog.text
    assert notifier.sent == {by_sms.key, by_email.key}


def test_smtp_notifier_hands_sms_to_its_fallback() -> None:
    fallback = RecordingNotifier()
    # Nothing listens on port 1: an SMS notice must not try to connect.
    notifier = SmtpNotifier("127.0.0.1", 1, "12345@cityops.local", fallback=fallback)
    by_sms = sent(Contact(phone=PHONE, email=EMAIL))
    notifier.send(by_sms)
    assert fallback.notices == [by_sms]


def test_notifier_from_settings() -> None:
    assert isinstance(notifier_from_settings(Settings(notify_backend="log")), LoggingNotifier)
    smtp = notifier_from_settings(
        Settings(
            notify_backend="smtp",
            smtp_host="mail.example.com",
            smtp_port=587,
            smtp_username="cityops",
            smtp_password="s3cret",  # type: ignore[arg-type]
            smtp_starttls=True,
        )
    )
    assert isinstance(smtp, SmtpNotifier)
    assert (smtp.host, smtp.port, smtp.username, smtp.password, smtp.starttls) == (
        "mail.example.com",
        587,
        "cityops",
        "s3cret",
        True,
    )
    assert isinstance(smtp.fallback, LoggingNotifier)
