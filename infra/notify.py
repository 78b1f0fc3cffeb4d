"""Adapters of the citizen notification port (``core.case.notify.Notifier``): log and SMTP."""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from core.case.notify import Notice, NotificationError, Notifier
from core.personal import mask_email, mask_phone
from infra.settings import Settings

log = logging.getLogger(__name__)


def masked_address(notice: Notice) -> str:
    """The notice's address as a log may show it (138****5678, a***@example.com)."""
    masked = mask_phone(notice.address) if notice.channel == "sms" else mask_email(notice.address)
    return masked or ""


class LoggingNotifier:
    """Logs each notice (address masked) once per key; for development and as SMS stand-in."""

    def __init__(self) -> None:
        self.sent: set[str] = set()
        self._lock = threading.Lock()

    def send(self, notice: Notice) -> None:
        with self._lock:
            if notice.key in self.sent:
                log.debug("notice %s already sent", notice.key)
                return
            self.sent.add(notice.key)
        log.info(
            "notice %s by %s to %s: %s",
            notice.key,
            notice.channel,
            masked_address(notice),
            notice.body.replace("\n", " / "),
        )


@dataclass(eq=False)
class SmtpNotifier:
    """Emails email notices over SMTP; SMS ones go to ``fallback`` (we have no SMS gateway).

    Each email carries ``X-CityOps-Key: <key>`` so a receiving system can drop the
    duplicate of a notice sent again after a failure.
    """

    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    timeout: float = 10
    # None: a LoggingNotifier of its own (set in __post_init__).
    fallback: Notifier | None = None

    def __post_init__(self) -> None:
        if self.fallback is None:
            self.fallback = LoggingNotifier()

    def message(self, notice: Notice) -> EmailMessage:
        """The email of ``notice`` (UTF-8)."""
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = notice.address
        msg["Subject"] = notice.subject
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        msg["X-CityOps-Key"] = notice.key
        msg["Content-Language"] = notice.locale
        msg.set_content(notice.body, charset="utf-8")
        return msg

    def send(self, notice: Notice) -> None:
        if notice.channel != "email":
            assert self.fallback is not None  # set in __post_init__
            self.fallback.send(notice)
            return
        msg = self.message(notice)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(msg)
        except OSError as exc:  # smtplib's errors are OSErrors too
            # An SMTP reply may quote the address: name the error, not its text.
            detail = (
                f"{type(exc).__name__} {getattr(exc, 'smtp_code', '')}".rstrip()
                if isinstance(exc, smtplib.SMTPException)
                else str(exc)
            )
            raise NotificationError(
                f"SMTP {self.host}:{self.port} did not take notice {notice.key}: {detail}"
            ) from exc
        log.info("notice %s emailed to %s", notice.key, masked_address(notice))


def notifier_from_settings(settings: Settings) -> Notifier:
    """The notifier ``CITYOPS_NOTIFY_BACKEND`` names."""
    if settings.notify_backend == "smtp":
        password = settings.smtp_password
        return SmtpNotifier(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_sender,
            username=settings.smtp_username,
            password=password.get_secret_value() if password is not None else None,
            starttls=settings.smtp_starttls,
        )
    return LoggingNotifier()
