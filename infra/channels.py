"""Adapters of the paging port (``core.paging.channels.PageChannel``): email, webhook, SMS.

- email: the citizen notifier's SMTP adapter (``infra.notify.SmtpNotifier``), whose
  ``X-CityOps-Key`` header carries the page's key;
- webhook: a JSON POST to the person's URL, signed: ``X-CityOps-Signature:
  sha256=<hex>`` is the HMAC-SHA256 with ``CITYOPS_PAGER_WEBHOOK_SECRET`` of
  ``<X-CityOps-Timestamp>.<body>``, so a receiver checks both the body and its age;
- sms: a JSON POST ``{"to", "text", "key"}`` to an HTTP SMS gateway
  (``CITYOPS_SMS_GATEWAY_URL``, with a bearer token if one is set).

Every request carries ``X-CityOps-Key`` (and the body its ``key``): a receiver drops a
repeat. The HTTP ones are tried three times with an exponential backoff (tenacity) on
connection errors, timeouts, 429 and 5xx, then the failure goes back to the pager, which
tries the page again on a later pass (``core.paging.desk``). Without an SMTP server or an
SMS gateway configured, those pages are logged (addresses masked), as the citizen
notifier does.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from uuid import UUID

import httpx
import orjson
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from core.case.notify import Notice, NotificationError
from core.paging.channels import Delivery, DeliveryError, PageChannel
from core.personal import mask_email, mask_phone
from infra.notify import SmtpNotifier, notifier_from_settings
from infra.settings import Settings

log = logging.getLogger(__name__)

KEY_HEADER = "X-CityOps-Key"
SIGNATURE_HEADER = "X-CityOps-Signature"
TIMESTAMP_HEADER = "X-CityOps-Timestamp"
HTTP_TIMEOUT_S = 5.0


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The webhook signature header's value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return False


def payload(delivery: Delivery) -> dict[str, str]:
    """What a webhook receives: the page and where it comes from (no address)."""
    return {
        "key": delivery.key,
        "escalation_id": delivery.escalation_id,
        "person": delivery.person,
        "level": delivery.level,
        "trigger": delivery.trigger,
        "subject": delivery.subject,
        "title": delivery.title,
        "text": delivery.text,
    }


@dataclass(eq=False)
class _HttpChannel:
    """A JSON POST with the key header, retried by tenacity; an outcome, not an exception,
    for the caller."""

    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=HTTP_TIMEOUT_S))
    attempts: int = 3
    backoff_s: float = 0.2

    def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> None:
        @retry(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=5),
            reraise=True,
        )
        def post() -> None:
            response = self.client.post(
                url, content=body, headers={"Content-Type": "application/json", **headers}
            )
            response.raise_for_status()

        try:
            post()
        except httpx.HTTPStatusError as exc:
            raise DeliveryError(f"{url} answered {exc.response.status_code}") from None
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{url}: {type(exc).__name__}") from None


@dataclass(eq=False)
class WebhookChannel(_HttpChannel):
    secret: bytes = b""

    def send(self, delivery: Delivery) -> None:
        if not self.secret:
            raise DeliveryError("CITYOPS_PAGER_WEBHOOK_SECRET is not set: webhooks go unsigned")
        body = orjson.dumps(payload(delivery))
        stamp = str(int(time.time()))
        self._post(
            delivery.address,
            body,
            {
                KEY_HEADER: delivery.key,
                TIMESTAMP_HEADER: stamp,
                SIGNATURE_HEADER: signature(self.secret, stamp, body),
            },
        )
        log.info("page %s posted to %s's webhook", delivery.key, delivery.person)


@dataclass(eq=False)
class SmsGatewayChannel(_HttpChannel):
    url: str = ""
    token: str | None = field(default=None, repr=False)

    def send(self, delivery: Delivery) -> None:
        body = orjson.dumps({"to": delivery.address, "text": delivery.text, "key": delivery.key})
        headers = {KEY_HEADER: delivery.key}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._post(self.url, body, headers)
        log.info("page %s sent by SMS to %s", delivery.key, mask_phone(delivery.address))


@dataclass(eq=False)
class EmailChannel:
    """Pages by email through the citizen notifier's SMTP adapter (or its log stand-in)."""

    notifier: SmtpNotifier | None

    def send(self, delivery: Delivery) -> None:
        if self.notifier is None:
            LoggingChannel().send(delivery)
            return
        notice = Notice(
            key=delivery.key,
            case_id=UUID(delivery.escalation_id),
            channel="email",
            address=delivery.address,
            subject=delivery.text.partition("：")[0] + f" / CityOps {delivery.level} page",
            body=delivery.text,
        )
        try:
            self.notifier.send(notice)
        except NotificationError as exc:
            raise DeliveryError(str(exc)) from None


class LoggingChannel:
    """Logs each page (address masked); the stand-in where no transport is configured."""

    def send(self, delivery: Delivery) -> None:
        masked = (
            mask_email(delivery.address)
            if delivery.channel == "email"
            else mask_phone(delivery.address)
            if delivery.channel == "sms"
            else delivery.channel
        )
        log.info("page %s by %s to %s: %s", delivery.key, delivery.channel, masked, delivery.text)


def channels_from_settings(settings: Settings) -> dict[str, PageChannel]:
    """The outside channels, from ``CITYOPS_NOTIFY_BACKEND``, ``CITYOPS_SMS_GATEWAY_URL``
    and ``CITYOPS_PAGER_WEBHOOK_SECRET``."""
    mailer = notifier_from_settings(settings)
    secret = settings.pager_webhook_secret
    token = settings.sms_gateway_token
    sms: PageChannel = (
        SmsGatewayChannel(
            url=settings.sms_gateway_url,
            token=token.get_secret_value() if token is not None else None,
        )
        if settings.sms_gateway_url
        else LoggingChannel()
    )
    return {
        "email": EmailChannel(mailer if isinstance(mailer, SmtpNotifier) else None),
        "webhook": WebhookChannel(secret=secret.get_secret_value().encode() if secret else b""),
        "sms": sms,
    }
