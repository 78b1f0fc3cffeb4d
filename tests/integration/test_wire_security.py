"""On the wire (api.security, api.session): security headers, CORS closed by default, rate
limits on the public and sign-in routes, the development sign-in only from this machine,
and no secret in the logs of a run."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg_pool
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from api.auth import issue_token
from cityops.bootstrap import api_app, seed
from infra.apikeys import PgApiKeys
from infra.settings import Environment, Settings
from tests.browser.stack import demo_stack
from tests.helpers.db import fresh_settings
from tests.helpers.web import auth_header
from tests.helpers.workers import api_server, worker_env

pytestmark = pytest.mark.integration

LOOPBACK = ("127.0.0.1", 50000)
LOGIN = "/api/v1/auth/dev-token"
SERVICES = "/open311/v2/services.json"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A seeded city in development, with the rate limits off (turned on per test)."""
    data_dir = tmp_path_factory.mktemp("city") / "city"
    with fresh_settings(
        data_dir,
        environment=Environment.DEVELOPMENT,
        dev_login=True,
        rate_limit_public="0",
        rate_limit_login="0",
    ) as settings:
        seed(settings)
        yield settings


def client(settings: Settings, address: tuple[str, int] = LOOPBACK) -> TestClient:
    return TestClient(api_app(settings), client=address)


# -- headers ------------------------------------------------------------------------------


def test_the_page_and_the_api_carry_the_security_headers(seeded: Settings) -> None:
    with client(seeded) as c:
        page = c.get("/")
        api = c.get(SERVICES)
        docs = c.get("/docs")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ):
        assert directive in policy
    assert "unsafe" not in policy
    for answer in (page, api):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "geolocation=()" in answer.headers["permissions-policy"]
    # FastAPI's docs page runs an inline script from a CDN: its own, looser policy.
    assert docs.status_code == 200
    assert "cdn.jsdelivr.net" in docs.headers["content-security-policy"]


def test_a_base_map_server_is_allowed_for_images_only(seeded: Settings) -> None:
    tiled = seeded.model_copy(update={"map_tile_url": "https://tiles.example.org/{z}/{x}/{y}.png"})
    with client(tiled) as c:
        policy = c.get("/").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert "https://tiles.example.org" in directives["img-src"]
    assert "tiles.example.org" not in directives["connect-src"]
    assert "tiles.example.org" not in directives["script-src"]


def test_errors_carry_the_headers_too(seeded: Settings) -> None:
    with client(seeded) as c:
        missing = c.get("/api/v1/cases/not-a-case", headers={"X-API-Key": "nope.nope"})
        too_big = c.post("/api/v1/cases", content=b"x" * 70_000)
    assert missing.status_code == 401
    assert too_big.status_code == 413
    for answer in (missing, too_big):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "content-security-policy" in answer.headers


# -- CORS -----------------------------------------------------------------------------------


def preflight(c: TestClient, origin: str) -> httpx.Response:
    return c.options(
        SERVICES,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )


def test_cors_is_closed_by_default(seeded: Settings) -> None:
    with client(seeded) as c:
        asked = preflight(c, "https://evil.example")
        simple = c.get(SERVICES, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in asked.headers
    assert asked.status_code in (405, 400)
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers


def test_cors_opens_to_the_listed_origins_only(seeded: Settings) -> None:
    opened = seeded.model_copy(
        update={"cors_origins": "https://gis.example.org, https://ops.example.org/"}
    )
    with client(opened) as c:
        listed = preflight(c, "https://gis.example.org")
        slash = c.get(SERVICES, headers={"Origin": "https://ops.example.org"})
        other = preflight(c, "https://evil.example")
        other_get = c.get(SERVICES, headers={"Origin": "https://evil.example"})
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == "https://gis.example.org"
    assert "authorization" in listed.headers["access-control-allow-headers"].lower()
    assert slash.headers["access-control-allow-origin"] == "https://ops.example.org"
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    assert "access-control-allow-origin" not in other_get.headers


# -- rate limits --------------------------------------------------------------------------


def test_the_public_routes_answer_429_with_retry_after_over_the_limit(seeded: Settings) -> None:
    limited = seeded.model_copy(update={"rate_limit_public": "5/minute"})
    with client(limited) as c, client(limited, ("10.0.0.7", 40000)) as neighbour:
        answers = [c.get(SERVICES).status_code for _ in range(5)]
        over = c.get(SERVICES)
        ogc = c.get("/ogc/collections")
        other_address = neighbour.get(SERVICES)
        # Not public, not limited: staff and machines are limited by their credentials.
        health = [c.get("/healthz").status_code for _ in range(10)]
    assert answers == [200] * 5
    assert over.status_code == 429
    assert 1 <= int(over.headers["retry-after"]) <= 60
    # Each API answers in its own error format.
    assert over.json() == [{"code": 429, "description": over.json()[0]["description"]}]
    assert "too many requests" in over.json()[0]["description"]
    assert ogc.status_code == 429
    assert ogc.json()["code"] == "TooManyRequests"
    assert other_address.status_code == 200
    assert health == [200] * 10
    assert over.headers["x-content-type-options"] == "nosniff"


def test_the_limit_lets_the_client_in_again_once_the_window_has_passed(seeded: Settings) -> None:
    limited = seeded.model_copy(update={"rate_limit_public": "2/second"})
    with client(limited) as c:
        first = [c.get(SERVICES).status_code for _ in range(3)]
        wait = int(c.get(SERVICES).headers.get("retry-after", "1"))
        time.sleep(wait + 0.1)
        again = c.get(SERVICES)
    assert first == [200, 200, 429]
    assert again.status_code == 200


def test_the_sign_in_has_its_own_stricter_limit(seeded: Settings) -> None:
    limited = seeded.model_copy(
        update={"rate_limit_public": "100/minute", "rate_limit_login": "3/minute"}
    )
    with client(limited) as c:
        logins = [c.post(LOGIN).status_code for _ in range(4)]
        services = c.get(SERVICES)
        schema = c.get("/openapi.json").json()
    assert logins == [200, 200, 200, 429]
    assert services.status_code == 200
    # The 429 is part of the documented answers of the limited routes.
    assert "429" in schema["paths"][LOGIN]["post"]["responses"]
    assert "429" in schema["paths"][SERVICES]["get"]["responses"]
    assert "429" not in schema["paths"]["/healthz"]["get"]["responses"]


def test_zero_turns_the_limits_off(seeded: Settings) -> None:
    with client(seeded) as c:
        answers = {c.get(SERVICES).status_code for _ in range(60)}
    assert answers == {200}


@pytest.mark.parametrize("notation", ["lots", "5/fortnight", "-1/minute"])
def test_a_bad_limit_is_refused_at_start(notation: str) -> None:
    with pytest.raises(ValidationError, match="rate_limit_public"):
        Settings(rate_limit_public=notation)


# -- the development sign-in ----------------------------------------------------------------


@pytest.mark.parametrize("address", [("127.0.0.1", 5000), ("::1", 5000), ("127.0.0.9", 5000)])
def test_the_dev_sign_in_answers_on_loopback(seeded: Settings, address: tuple[str, int]) -> None:
    with client(seeded, address) as c:
        assert c.post(LOGIN).status_code == 200


@pytest.mark.parametrize(
    "address", [("10.1.2.3", 5000), ("192.168.0.20", 5000), ("2001:db8::1", 5000), ("x", 1)]
)
def test_the_dev_sign_in_does_not_exist_for_other_machines(
    seeded: Settings, address: tuple[str, int]
) -> None:
    with client(seeded, address) as c:
        answer = c.post(LOGIN)
        assert answer.status_code == 404
        # The rest of the API answers them as usual.
        assert c.get(SERVICES).status_code == 200


def test_over_a_real_socket_only_loopback_gets_a_dev_token(seeded: Settings) -> None:
    """The server listens on every interface; a request to this machine's own network
    address arrives from that address, not from loopback."""
    outside = _network_address()
    if outside is None:
        pytest.skip("this machine has no network address besides loopback")
    env = {
        **worker_env(seeded),
        "CITYOPS_ENVIRONMENT": "development",
        "CITYOPS_DEV_LOGIN": "true",
    }
    log = seeded.data_dir.parent / "api-any.log"
    with api_server(env, log, "--host", "0.0.0.0", "--log-level", "warning") as base:
        port = base.rsplit(":", 1)[1]
        local = httpx.post(f"{base}{LOGIN}", timeout=10)
        remote = httpx.post(f"http://{outside}:{port}{LOGIN}", timeout=10)
        remote_services = httpx.get(f"http://{outside}:{port}{SERVICES}", timeout=10)
    assert local.status_code == 200
    assert remote.status_code == 404
    assert remote_services.status_code == 200


def _network_address() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outgoing address
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


# -- secrets in logs --------------------------------------------------------------------------


def _requests_with_credentials(
    base: str, settings: Settings, jwt_secret: str, api_key: str
) -> list[int]:
    """Valid and invalid credentials of each kind, in headers and in the live channel's
    query string; the status codes answered."""
    token = issue_token(
        settings.model_copy(update={"jwt_secret": SecretStr(jwt_secret)}), "t", "operator"
    )
    forged = issue_token(
        settings.model_copy(update={"jwt_secret": SecretStr("wrong" * 8)}), "t", "operator"
    )
    codes = []
    with httpx.Client(base_url=base, timeout=10) as http:
        for headers in (
            auth_header(token),
            auth_header(forged),
            auth_header(token[:-3] + "abc"),
            {"X-API-Key": api_key},
            {"X-API-Key": api_key[:-4] + "zzzz"},
        ):
            codes.append(http.get("/api/v1/incidents", headers=headers).status_code)
        with http.stream("GET", f"/api/v1/live?access_token={token}") as live:
            codes.append(live.status_code)
        codes.append(http.get(f"/api/v1/live?access_token={forged}").status_code)
        codes.append(
            http.post("/api/v1/cases", headers={"X-API-Key": api_key}, json={"bad": 1}).status_code
        )
    return codes


def _leaks(text: str, secrets_: dict[str, str]) -> list[str]:
    """The names of the secrets whose value (or a 12-character piece of it) is in ``text``."""
    found = []
    for name, value in secrets_.items():
        pieces = {value} | {value[i : i + 12] for i in range(0, max(1, len(value) - 12), 6)}
        if any(p and p in text for p in pieces):
            found.append(name)
    return found


def test_no_secret_reaches_the_logs(tmp_path: Path, seeded: Settings) -> None:
    """The API as production runs it (uvicorn, access log on, DEBUG), then the whole demo
    (every worker, the simulator) at DEBUG: neither writes a secret it was given or
    was shown."""
    jwt_secret = secrets.token_urlsafe(32)
    pepper = secrets.token_urlsafe(32)
    smtp_password = secrets.token_urlsafe(16)
    given = {
        "CITYOPS_JWT_SECRET": jwt_secret,
        "CITYOPS_PII_PEPPER": pepper,
        "CITYOPS_SMTP_PASSWORD": smtp_password,
        "CITYOPS_LOG_LEVEL": "DEBUG",
    }
    with psycopg_pool.ConnectionPool(seeded.database_url, min_size=1, max_size=1) as pool:
        api_key = PgApiKeys(pool).create(f"logs-{secrets.token_hex(3)}", "operator")
    watched = {"jwt secret": jwt_secret, "pii pepper": pepper, "smtp password": smtp_password}
    watched["api key"] = api_key

    log = tmp_path / "api.log"
    with api_server({**worker_env(seeded), **given}, log, "--log-level", "debug") as base:
        codes = _requests_with_credentials(base, seeded, jwt_secret, api_key)
    assert codes == [200, 401, 401, 200, 401, 200, 401, 422]
    api_log = log.read_text(errors="replace")
    # The run did log the requests: the access log is on, with the credentials blanked.
    assert "/api/v1/live?access_token=***" in api_log
    tokens = re.findall(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", api_log)
    assert tokens == []
    assert _leaks(api_log, watched) == []

    state = tmp_path / "demo"
    with demo_stack(state, simulator=True, rate=50.0, sensors=100, **given) as stack:
        demo_key_pool = psycopg_pool.ConnectionPool(stack.database_url, min_size=1, max_size=1)
        with demo_key_pool:
            demo_key = PgApiKeys(demo_key_pool).create("logs-demo", "operator")
        codes = _requests_with_credentials(stack.base, stack.settings, jwt_secret, demo_key)
        time.sleep(5)  # the simulator's readings through every worker
    demo_log = (state / "demo.log").read_text(errors="replace")
    assert codes[0] == 200
    assert "DEBUG" in demo_log
    assert _leaks(demo_log, {**watched, "demo api key": demo_key}) == []
    assert re.findall(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", demo_log) == []
