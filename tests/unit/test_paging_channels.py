"""The paging channels' adapters without a network: the webhook's signature and retries,
the SMS gateway's request, each with the page's idempotency key; the pages view's SQL."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from uuid import uuid4

import httpx
import orjson
import pytest

from core.paging import Escalation
from core.paging.channels import Delivery, DeliveryError, page_text
from infra.channels import SmsGatewayChannel, WebhookChannel, channels_from_settings, signature
from infra.settings import Settings
from projections.pages import PageProjection

SECRET = b"unit-secret"


def delivery(channel: str = "webhook", address: str = "http://hook.test/p") -> Delivery:
    key = str(uuid4())
    return Delivery(
        key=key,
        escalation_id=str(uuid4()),
        person="dispatcher:li",
        channel=channel,
        address=address,
        level="district",
        trigger="critical_alarm",
        subject="incident:x",
        title="积水",
        text=page_text("critical_alarm", "district", "积水", key),
    )


def client(answers: list[int], seen: list[httpx.Request]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(answers.pop(0) if answers else 200)

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_a_webhook_is_signed_over_its_timestamp_and_body() -> None:
    seen: list[httpx.Request] = []
    page = delivery()
    WebhookChannel(client=client([], seen), secret=SECRET).send(page)
    (request,) = seen
    stamp = request.headers["x-cityops-timestamp"]
    expected = hmac.new(SECRET, stamp.encode() + b"." + request.content, hashlib.sha256)
    assert request.headers["x-cityops-signature"] == f"sha256={expected.hexdigest()}"
    assert request.headers["x-cityops-signature"] == signature(SECRET, stamp, request.content)
    assert request.headers["x-cityops-key"] == page.key
    body = orjson.loads(request.content)
    assert (body["key"], body["level"], body["person"]) == (page.key, "district", "dispatcher:li")
    assert "address" not in body


def test_a_webhook_is_retried_with_backoff_on_5xx_with_the_same_key() -> None:
    seen: list[httpx.Request] = []
    channel = WebhookChannel(client=client([503, 502], seen), secret=SECRET, backoff_s=0.001)
    channel.send(delivery())
    assert len(seen) == 3
    assert len({r.headers["x-cityops-key"] for r in seen}) == 1


def test_a_webhook_that_keeps_failing_or_refuses_is_a_delivery_error() -> None:
    seen: list[httpx.Request] = []
    failing = WebhookChannel(client=client([500] * 5, seen), secret=SECRET, backoff_s=0.001)
    with pytest.raises(DeliveryError, match="500"):
        failing.send(delivery())
    assert len(seen) == 3
    seen.clear()
    refusing = WebhookChannel(client=client([400], seen), secret=SECRET, backoff_s=0.001)
    with pytest.raises(DeliveryError, match="400"):
        refusing.send(delivery())
    assert len(seen) == 1  # a 4xx is not worth repeating


def test_an_unsigned_webhook_is_never_sent() -> None:
    seen: list[httpx.Request] = []
    with pytest.raises(DeliveryError, match="SECRET"):
        WebhookChannel(client=client([], seen)).send(delivery())
    assert seen == []


def test_the_sms_gateway_gets_the_phone_the_text_and_the_key() -> None:
    seen: list[httpx.Request] = []
    page = delivery("sms", "13800000001")
    SmsGatewayChannel(client=client([], seen), url="http://sms.test/send", token="t0k").send(page)
    (request,) = seen
    assert str(request.url) == "http://sms.test/send"
    assert request.headers["authorization"] == "Bearer t0k"
    assert orjson.loads(request.content) == {
        "to": "13800000001",
        "text": page.text,
        "key": page.key,
    }
    assert len(page.text) < 200


def test_without_transports_pages_are_logged() -> None:
    channels = channels_from_settings(Settings())
    assert set(channels) == {"email", "webhook", "sms"}
    channels["sms"].send(delivery("sms", "13800000001"))
    channels["email"].send(delivery("email", "a@example.org"))


def test_the_pages_view_writes_a_row_per_page_and_ends_the_escalation() -> None:
    escalation = Escalation.open(
        "case_overdue",
        "case:c/deadline-1",
        title="bin",
        grid_code=None,
        district_code="310101",
        critical=False,
        started_at=datetime(2026, 3, 2, tzinfo=UTC),
        policy_version=1,
        actor="system:pager",
        correlation_id="t",
    )
    stamp = {"actor": "system:pager", "correlation_id": "t"}
    key = str(uuid4())
    escalation.page(
        page_id=key,
        person="dispatcher:li",
        channel="sms",
        level="street",
        at=datetime.now(UTC),
        **stamp,
    )
    escalation.record_failure(key, attempt=1, error="503", final=True, **stamp)
    escalation.acknowledge(page_id=None, actor="dispatcher:li", correlation_id="t")
    effects = [PageProjection().handle(e) for e in escalation.collect_events()]
    sql = [s for effect in effects for s, _ in effect.statements]
    assert sql[0].startswith("INSERT INTO paging_escalations")
    assert sql[1].startswith("INSERT INTO paging_pages")
    assert any("delivery = %(delivery)s" in s for s in sql)
    assert any("status = 'acknowledged'" in s for s in sql)
    failed = effects[2].statements[0][1]
    assert (failed["delivery"], failed["page"]) == ("withdrawn", key)
