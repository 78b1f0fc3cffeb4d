"""The SMTP notifier against a real SMTP server (aiosmtpd, in-process): what arrives, and failures.

Needs no PostgreSQL, Kafka or MQTT, but lives with the tests that talk to real servers.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any
from uuid import uuid4

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from cityops.services import free_port
from core.case.notify import Notice, NotificationError, resolution_notice
from core.personal import Contact
from infra.notify import SmtpNotifier

pytestmark = pytest.mark.integration

SENDER = "12345@cityops.local"


@dataclass
class Inbox:
    """An aiosmtpd handler keeping what it received."""

    received: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"


@contextmanager
def serve(inbox: Inbox, **smtp: Any) -> Iterator[Controller]:
    """An SMTP server on a free loopback port, delivering to ``inbox``."""
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), **smtp)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def server(inbox: Inbox) -> Iterator[Controller]:
    with serve(inbox) as controller:
        yield controller


def email_notice(address: str = "li.lei@example.com", proactive: bool = False) -> Notice:
    made = resolution_notice(
        case_id=uuid4(),
        external_id="H-20261001-0042",
        category_name_zh="道路破损",
        category_name_en="Road surface damage",
        reply="已修复路面坑洞",
        contact=Contact(email=address),
        version=5,
        proactive=proactive,
    )
    assert made is not None
    assert made.channel == "email"
    return made


def test_an_email_notice_arrives_in_utf8_with_its_key(server: Controller, inbox: Inbox) -> None:
    notice = email_notice(proactive=True)
    SmtpNotifier(server.hostname, server.port, SENDER).send(notice)

    assert len(inbox.received) == 1
    mail_from, rcpt_tos, message = inbox.received[0]
    assert mail_from == SENDER
    assert rcpt_tos == ["li.lei@example.com"]
    assert message["To"] == "li.lei@example.com"
    assert message["From"] == SENDER
    assert message["Subject"] == notice.subject
    assert "已办结" in message["Subject"]
    assert message["X-CityOps-Key"] == notice.key
    assert message["Message-ID"]
    assert message.get_content_charset() == "utf-8"
    assert message.get_content().rstrip("\n") == notice.body
    assert "该问题已由城市运行中心统一处置" in message.get_content()


def test_the_same_notice_twice_carries_the_same_key(server: Controller, inbox: Inbox) -> None:
    notice = email_notice()
    notifier = SmtpNotifier(server.hostname, server.port, SENDER)
    notifier.send(notice)
    notifier.send(notice)
    keys = [message["X-CityOps-Key"] for _, _, message in inbox.received]
    ids = {message["Message-ID"] for _, _, message in inbox.received}
    assert keys == [notice.key, notice.key]
    assert len(ids) == 2, "the key, not the Message-ID, identifies a notice"


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_login_with_the_configured_credentials(inbox: Inbox) -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        # handled=False: the server answers 535 itself on a failure.
        return AuthResult(success=data.password == b"s3cret", handled=False)

    # Loopback only, so the test server accepts a login without TLS. PLAIN only, so that
    # smtplib makes one attempt per login instead of trying each mechanism in turn.
    with serve(
        inbox,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
        auth_exclude_mechanism=["LOGIN"],
    ) as controller:
        good = SmtpNotifier(
            controller.hostname, controller.port, SENDER, username="cityops", password="s3cret"
        )
        good.send(email_notice())
        bad = SmtpNotifier(
            controller.hostname, controller.port, SENDER, username="cityops", password="wrong"
        )
        with pytest.raises(NotificationError, match="SMTPAuthenticationError 535"):
            bad.send(email_notice())
        anonymous = SmtpNotifier(controller.hostname, controller.port, SENDER)
        with pytest.raises(NotificationError):
            anonymous.send(email_notice())
    assert logins == [(b"cityops", b"s3cret"), (b"cityops", b"wrong")]
    assert len(inbox.received) == 1


def test_a_refused_connection_is_a_notification_error() -> None:
    closed = free_port()  # bound and released: nothing listens there
    notifier = SmtpNotifier("127.0.0.1", closed, SENDER, timeout=2)
    with pytest.raises(NotificationError, match=f"127.0.0.1:{closed}"):
        notifier.send(email_notice())
