"""Access control: OAuth2 bearer tokens (JWT, PyJWT) for people, API keys for machines.

Roles:
- ``operator``   operations center: reads everything (personal data masked), submits
                 cases for callers, acknowledges incidents;
- ``dispatcher`` registers, rejects, dispatches cases, decides extensions; sees contacts;
- ``department`` works its own queue only (``dept`` claim);
- ``auditor``    reads everything, changes nothing, personal data masked;
- ``gateway``    sends telemetry only;
- ``citizen``    files cases and sees, rates and cancels its own.

No credentials: 401. A role the route does not allow, or someone else's object: 403.
"""

from __future__ import annotations

import hmac
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.base import SecurityBase

from api.concurrency import in_thread
from infra.apikeys import API_KEY_PREFIX, StoredKey, hash_secret
from infra.settings import Settings

Role = Literal["operator", "dispatcher", "department", "auditor", "gateway", "citizen"]
ROLES: tuple[str, ...] = get_args(Role)
STAFF_READ: tuple[Role, ...] = ("operator", "dispatcher", "department", "auditor")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: from a verified token or API key."""

    subject: str
    role: Role
    department: str | None = None
    via: Literal["token", "api_key"] = "token"

    @property
    def actor(self) -> str:
        """How events record this caller."""
        return f"{self.role}:{self.subject}"


def citizen_uuid(who: Principal) -> uuid.UUID | None:
    """A citizen's id (the subject of their token); None for every other role."""
    if who.role != "citizen":
        return None
    try:
        return uuid.UUID(who.subject)
    except ValueError:
        raise Forbidden("citizen tokens carry a citizen id as subject") from None


class Unauthorized(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(401, detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(403, detail)


# -- tokens -------------------------------------------------------------------------------


def issue_token(
    settings: Settings,
    subject: str,
    role: str,
    department: str | None = None,
    ttl_s: int | None = None,
) -> str:
    """A signed JWT for ``subject`` in ``role`` (the CLI and the development login use it)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if role == "department" and not department:
        raise ValueError("a department token needs its department code")
    if not subject or len(subject) > 128:
        raise ValueError("subject must be 1 to 128 characters")
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": subject,
        "role": role,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + (ttl_s or settings.token_ttl_s),
        "jti": uuid.uuid4().hex,
    }
    if department:
        claims["dept"] = department
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


class VerifiedTokens:
    """Tokens already verified, with the caller they name and when they expire.

    A JWT's verdict never changes before its ``exp`` (there is no revocation list), so a
    client sending the same token again skips the signature and claims checks (about 6 %
    of a command's CPU). Keyed by the signing secret too: settings with another secret
    (a test's) verify afresh. At most ``size`` entries; the cache empties when full.
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self.entries: dict[tuple[str, str], tuple[float, Principal]] = {}
        self.lock = threading.Lock()

    def get(self, secret: str, token: str) -> Principal | None:
        with self.lock:
            hit = self.entries.get((secret, token))
            if hit is None:
                return None
            if time.time() >= hit[0]:
                del self.entries[(secret, token)]
                return None  # verified again, so that the caller hears "token expired"
            return hit[1]

    def put(self, secret: str, token: str, expires: float, who: Principal) -> None:
        with self.lock:
            if len(self.entries) >= self.size:
                self.entries.clear()
            self.entries[(secret, token)] = (expires, who)


VERIFIED = VerifiedTokens()


def verify_token(settings: Settings, token: str) -> Principal:
    secret = settings.jwt_secret.get_secret_value()
    known = VERIFIED.get(secret, token)
    if known is not None:
        return known
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token: {exc}") from None
    role = claims.get("role")
    if role not in ROLES:
        raise Unauthorized("token has no valid role")
    dept = claims.get("dept")
    if role == "department" and not dept:
        raise Unauthorized("department token without a department")
    who = Principal(subject=str(claims["sub"]), role=role, department=dept)
    VERIFIED.put(secret, token, float(claims["exp"]), who)
    return who


# -- API keys -----------------------------------------------------------------------------


class ApiKeyVerifier:
    """Checks ``cok_<id>_<secret>`` keys against their stored hash; cached for ``ttl``.

    A revocation reaches the cache at once through ``forget`` (the API's change listener
    hears ``REVOKED_CHANNEL``); ``ttl`` bounds the rest, such as a revocation made while
    the listener was reconnecting (it then forgets everything).
    """

    def __init__(self, lookup: Callable[[str], StoredKey | None], ttl: float = 30.0) -> None:
        self.lookup = lookup
        self.ttl = ttl
        self.cache: dict[str, tuple[float, StoredKey | None]] = {}
        self.lock = threading.Lock()
        # Bumped by every forget: a look-up that began before one is not cached.
        self.epoch = 0

    def forget(self, key_id: str | None = None) -> None:
        """Drop ``key_id`` from the cache (every key when None)."""
        with self.lock:
            self.epoch += 1
            if key_id is None:
                self.cache.clear()
            else:
                self.cache.pop(key_id, None)

    def verify(self, key: str) -> Principal:
        if not key.startswith(API_KEY_PREFIX) or key.count("_") < 2:
            raise Unauthorized("malformed API key")
        key_id, _, secret = key[len(API_KEY_PREFIX) :].partition("_")
        now = time.monotonic()
        with self.lock:
            hit = self.cache.get(key_id)
        if hit is None or now - hit[0] > self.ttl:
            with self.lock:
                epoch = self.epoch
            stored = self.lookup(key_id)
            with self.lock:
                if len(self.cache) > 10_000:
                    self.cache.clear()
                if epoch == self.epoch:
                    self.cache[key_id] = (now, stored)
        else:
            stored = hit[1]
        if (
            stored is None
            or stored.revoked
            or not hmac.compare_digest(stored.key_hash, hash_secret(secret))
        ):
            raise Unauthorized("unknown or revoked API key")
        if stored.role not in ROLES:
            raise Unauthorized("API key has no valid role")
        return Principal(
            subject=stored.name,
            role=stored.role,  # type: ignore[arg-type]
            department=stored.department,
            via="api_key",
        )


# -- FastAPI dependencies -----------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="JWT from `cityops token`")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="from `cityops apikey`")


async def _caller(
    request: Request, bearer: HTTPAuthorizationCredentials | None, api_key: str | None
) -> Principal | None:
    """The caller named by the request's credentials, None without any; invalid ones
    are a 401.

    Async, on the event loop: it costs no thread hand-off (about half a millisecond per
    request). Only an API key's lookup touches the database, and it runs in a thread.
    """
    container = request.app.state.container
    if bearer is not None:
        return verify_token(container.settings, bearer.credentials)
    key = api_key or request.query_params.get("api_key")
    if key:
        verified: Principal = await in_thread(container.api_keys.verify, key)
        return verified
    # EventSource cannot send headers: the live channel accepts the token in the query.
    token = request.query_params.get("access_token")
    if token and request.url.path.endswith("/live"):
        return verify_token(container.settings, token)
    return None


async def optional_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal | None:
    """The caller, if they sent credentials; invalid credentials are a 401."""
    return await _caller(request, bearer, api_key)


def known(found: Principal | None) -> Principal:
    """The caller; 401 when they sent no credentials."""
    if found is None:
        raise Unauthorized("authentication required: a bearer token or an API key")
    return found


async def principal(
    found: Annotated[Principal | None, Depends(optional_principal)],
) -> Principal:
    return known(found)


class RoleGate(SecurityBase):
    """The dependency ``require(*roles)`` returns: the caller, if their role is one of
    ``roles`` (401 without credentials, 403 for the other roles).

    It is on every command, and each dependency level costs each request its solving
    (FastAPI walks, caches and calls each one): the gate reads the bearer token itself
    (through ``HTTPBearer``'s own parsing, called, not depended on) and has one
    dependency below it, the API key header. Being a security scheme itself (the bearer
    scheme's model and name), it still gives the OpenAPI document both schemes, as
    ``optional_principal`` does with two levels more.
    """

    def __init__(self, roles: tuple[Role, ...]) -> None:
        self.roles = roles
        self.model = _bearer.model
        self.scheme_name = _bearer.scheme_name

    async def __call__(
        self, request: Request, api_key: Annotated[str | None, Depends(_api_key)]
    ) -> Principal:
        who = known(await _caller(request, await _bearer(request), api_key))
        if who.role not in self.roles:
            needs = " or ".join(self.roles)
            raise Forbidden(f"role {who.role} may not do this (needs {needs})")
        return who


def require(*roles: Role) -> RoleGate:
    """A dependency that lets only ``roles`` through (see ``RoleGate``)."""
    return RoleGate(roles)


PrincipalDep = Annotated[Principal, Depends(principal)]
OptionalPrincipalDep = Annotated[Principal | None, Depends(optional_principal)]
StaffReader = Annotated[Principal, Depends(require(*STAFF_READ))]
