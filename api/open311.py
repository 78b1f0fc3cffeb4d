"""Open311 GeoReport v2 (contract: DESIGN 3.3) under ``/open311/v2/``. JSON only.

GET endpoints are public and never show personal data. POST ``requests.json`` needs an
API key (the spec's ``api_key`` field, or ``X-API-Key``) or a bearer token of a citizen,
operator or dispatcher. Errors use the spec's format: ``[{"code": 400, "description":
"..."}]``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from api.auth import Forbidden, OptionalPrincipalDep, Unauthorized, citizen_uuid
from api.concurrency import in_thread
from api.deps import CasesDep, ContainerDep, DeskDep
from api.responses import open311_errors
from core.case import OPEN, STATUSES, ServiceCase
from core.case.categories import Category
from core.case.desk import ServiceDesk, SubmitCase
from core.personal import Contact
from gis.china import CoordSystem, UnknownCoordSystemError, to_wgs84
from projections.case_queries import CaseFilter

router = APIRouter(prefix="/open311/v2", tags=["open311"], responses=open311_errors(503))

SUBMITTERS = ("citizen", "operator", "dispatcher")
PUBLIC_OPEN = OPEN  # everything still being worked on; resolved counts as closed
DEFAULT_WINDOW = timedelta(days=90)  # the spec's default date range


class Open311Error(HTTPException):
    """An error in the spec's shape (the error handlers format it by path)."""


def bad(description: str, code: int = 400) -> Open311Error:
    return Open311Error(code, description)


# -- services ------------------------------------------------------------------------------


def service(category: Category) -> dict[str, Any]:
    return {
        "service_code": category.code,
        "service_name": category.name_en,
        "description": f"{category.name_zh} / {category.name_en}",
        "metadata": bool(category.attributes),
        "type": "realtime",
        "keywords": f"{category.department_type},{category.case_class}",
        "group": category.case_class,
    }


@router.get("/services.json")
def services(desk: DeskDep) -> list[dict[str, Any]]:
    """Every service (category) a request can be filed under."""
    return [service(c) for c in desk.categories]


@router.get("/services/{service_code}.json", responses=open311_errors(404))
def service_definition(desk: DeskDep, service_code: str) -> dict[str, Any]:
    """A service's definition: the attributes a request must or may carry."""
    category = desk.categories.by_code.get(service_code)
    if category is None:
        raise bad(f"unknown service_code {service_code!r}", 404)
    return {
        "service_code": category.code,
        "attributes": [
            {
                "variable": True,
                "code": a.code,
                "datatype": a.datatype,
                "required": a.required,
                "datatype_description": a.description,
                "order": i + 1,
                "description": a.description,
                **({"values": [{"key": k, "name": n} for k, n in a.values]} if a.values else {}),
            }
            for i, a in enumerate(category.attributes)
        ],
    }


# -- requests: reading ---------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def public_status(status: str) -> str:
    return "open" if status in PUBLIC_OPEN else "closed"


def public_request(desk: ServiceDesk, row: dict[str, Any]) -> dict[str, Any]:
    """A case as an Open311 service request: public fields only, no personal data."""
    category = desk.categories.by_code.get(row["category"])
    department = desk.locator.departments().get(row["department_code"] or "")
    return {
        "service_request_id": str(row["case_id"]),
        "status": public_status(row["status"]),
        "status_notes": row["status_notes"] or None,
        "service_name": category.name_en if category else row["category"],
        "service_code": row["category"],
        "description": row["description"],
        "agency_responsible": department.name if department else row["department_code"],
        "service_notice": None,
        "requested_datetime": _iso(row["submitted_at"]),
        "updated_datetime": _iso(row["updated_at"]),
        "expected_datetime": _iso(row["due_at"]),
        "address": row["address"],
        "address_id": None,
        "zipcode": None,
        "lat": row["lat"],
        "long": row["lon"],
        "media_url": None,
    }


def _row_of(case: ServiceCase) -> dict[str, Any]:
    return {
        "case_id": case.id,
        "status": case.status,
        "status_notes": case.status_notes,
        "category": case.category,
        "description": case.description,
        "department_code": case.department_code,
        "submitted_at": case.created_on,
        "updated_at": case.modified_on,
        "due_at": case.due_at if case.status in PUBLIC_OPEN else None,
        "address": case.address,
        "lat": case.lat,
        "lon": case.lon,
    }


def _date(raw: str | None, name: str) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise bad(f"{name} must be an ISO 8601 date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _csv(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    items = [x.strip() for x in raw.split(",") if x.strip()]
    return items or None


@router.get("/requests.json", responses=open311_errors(400))
def list_requests(
    desk: DeskDep,
    cases: CasesDep,
    service_request_id: str | None = None,
    service_code: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    status: str | None = None,
    page_size: Annotated[int, Query(ge=1, le=1_000)] = 100,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> list[dict[str, Any]]:
    """Service requests, newest first. ``service_request_id`` overrides the other filters."""
    ids = _csv(service_request_id)
    if ids is not None:
        try:
            flt = CaseFilter(case_ids=tuple(uuid.UUID(i) for i in ids))
        except ValueError:
            raise bad("service_request_id must be request ids separated by commas") from None
    else:
        codes = _csv(service_code)
        for code in codes or ():
            if code not in desk.categories.by_code:
                raise bad(f"unknown service_code {code!r}")
        statuses = _csv(status)
        wanted: tuple[str, ...] | None = None
        if statuses is not None:
            unknown = set(statuses) - {"open", "closed"}
            if unknown:
                raise bad("status must be open, closed or both")
            wanted = tuple(s for s in STATUSES if public_status(s) in statuses)
        end = _date(end_date, "end_date")
        start = _date(start_date, "start_date")
        if start is None and end is None:
            start = datetime.now(UTC) - DEFAULT_WINDOW
        if start is not None and end is not None and start > end:
            raise bad("start_date is after end_date")
        flt = CaseFilter(
            statuses=wanted,
            categories=tuple(codes) if codes else None,
            submitted_from=start,
            submitted_to=end,
        )
    rows = cases.cases(flt, order="newest", limit=page_size, offset=(page - 1) * page_size)
    return [public_request(desk, r) for r in rows]


@router.get("/requests/{request_id}.json", responses=open311_errors(404))
async def get_request(desk: DeskDep, request_id: str) -> list[dict[str, Any]]:
    """One service request (as a one-element list, as the spec has it)."""
    try:
        case_uuid = uuid.UUID(request_id)
    except ValueError:
        raise bad(f"unknown service_request_id {request_id!r}", 404) from None
    case = await in_thread(desk.get, case_uuid)
    return [public_request(desk, _row_of(case))]


# -- requests: filing ----------------------------------------------------------------------


async def _fields(request: Request) -> dict[str, Any]:
    """The POST's fields: form-encoded (the spec) or a JSON object."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise bad("malformed JSON body") from None
        if not isinstance(body, dict):
            raise bad("the JSON body must be an object")
        return body
    if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        out: dict[str, Any] = {}
        for key in form:
            values = [v for v in form.getlist(key) if isinstance(v, str)]
            out[key] = values if key.endswith("[]") or len(values) != 1 else values[0]
        return out
    raise bad("send application/x-www-form-urlencoded (or JSON)", 415)


def _attributes(fields: dict[str, Any]) -> dict[str, Any]:
    """``attribute[code]=v`` and ``attribute[code][]=v`` form fields, or a JSON object."""
    found: dict[str, Any] = {}
    raw = fields.get("attribute")
    if isinstance(raw, dict):
        found.update(raw)
    for key, value in fields.items():
        if key.startswith("attribute[") and key.endswith("]"):
            inner = key[len("attribute[") : -1]
            if inner.endswith("]["):
                found[inner[:-2]] = value if isinstance(value, list) else [value]
            else:
                found[inner] = value
    return found


def _text(fields: dict[str, Any], name: str, limit: int) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int | float):
        raise bad(f"{name} must be text")
    text = str(value)
    if len(text) > limit:
        raise bad(f"{name} is longer than {limit} characters")
    return text


def _coordinate(fields: dict[str, Any], name: str, low: float, high: float) -> float | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise bad(f"{name} must be a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise bad(f"{name} must be a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise bad(f"{name} must be between {low:g} and {high:g}")
    return value


def _string(limit: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": limit}


# ``_fields`` reads the body itself (form or JSON), so FastAPI cannot see it: described
# here. Other fields are allowed: ``attribute[code]`` for the service's attributes.
REQUEST_FIELDS = {
    "type": "object",
    "required": ["service_code"],
    "properties": {
        "service_code": _string(64),
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "long": {"type": "number", "minimum": -180, "maximum": 180},
        "coord_system": {
            "type": "string",
            "enum": [cs.value for cs in CoordSystem],
            "default": "wgs84",
            "description": "an extension: the system of lat/long, wgs84 (GPS), gcj02 (AMap,"
            " Tencent) or bd09 (Baidu); stored as WGS-84",
        },
        "address_string": _string(300),
        "description": _string(4_000),
        "first_name": _string(50),
        "last_name": _string(50),
        "phone": _string(32),
        "email": _string(254),
        "api_key": {"type": "string", "description": "or X-API-Key, or a bearer token"},
    },
}
REQUEST_BODY = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {"schema": REQUEST_FIELDS},
        "application/json": {"schema": REQUEST_FIELDS},
    },
}


def _dedup_key(fields: dict[str, Any], pepper: bytes) -> str:
    """Same request from the same caller on the same day: one case (a double submit).

    Keyed (HMAC): the fields include the contact, and the key ends up in the case's
    external id, which masked viewers see; a plain hash would give the phone away.
    """
    canonical = {k: v for k, v in fields.items() if k != "api_key" and isinstance(v, str | list)}
    body = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    digest = hmac.new(pepper, body, hashlib.sha256).hexdigest()
    return f"{datetime.now(UTC).date().isoformat()}:{digest[:32]}"


@router.post(
    "/requests.json",
    status_code=201,
    openapi_extra={"requestBody": REQUEST_BODY},
    responses=open311_errors(400, 401, 403, 409, 413, 415),
)
async def create_request(
    request: Request,
    c: ContainerDep,
    who: OptionalPrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=100)] = None,
) -> JSONResponse:
    """File a service request. Returns ``[{"service_request_id": ..., ...}]``."""
    fields = await _fields(request)
    if who is None and isinstance(fields.get("api_key"), str):
        who = c.api_keys.verify(fields["api_key"])
    if who is None:
        raise Unauthorized("an api_key or a bearer token is required to file requests")
    if who.role not in SUBMITTERS:
        raise Forbidden(f"role {who.role} may not file service requests")
    code = _text(fields, "service_code", 64)
    if code is None:
        raise bad("service_code is required")
    lat = _coordinate(fields, "lat", -90, 90)
    lon = _coordinate(fields, "long", -180, 180)
    address = _text(fields, "address_string", 300)
    if (lat is None) != (lon is None):
        raise bad("give both lat and long")
    if lat is None and address is None:
        raise bad("a location is required: lat and long, or address_string")
    system = _text(fields, "coord_system", 16) or CoordSystem.WGS84
    try:
        system = CoordSystem.parse(system)
    except UnknownCoordSystemError as exc:
        raise bad(str(exc)) from None
    if lat is not None and lon is not None:
        lon, lat = to_wgs84(lon, lat, system)
    first = _text(fields, "first_name", 50)
    last = _text(fields, "last_name", 50)
    name = " ".join(p for p in (first, last) if p) or None
    # An Open311 app's API key files for many citizens: only a token names one.
    citizen = citizen_uuid(who) if who.via == "token" else None
    cmd = SubmitCase(
        channel="open311",
        external_id=f"{who.actor}:"
        + (
            idempotency_key or _dedup_key(fields, c.settings.pii_pepper.get_secret_value().encode())
        ),
        category=code,
        description=_text(fields, "description", 4_000) or "",
        lon=lon,
        lat=lat,
        address=address,
        attributes=_attributes(fields),
        contact=Contact.parse(
            name=name,
            phone=_text(fields, "phone", 32),
            email=_text(fields, "email", 254),
        ),
        citizen_id=citizen,
    )
    case = await in_thread(c.desk.submit, cmd, who.actor, f"open311:{uuid.uuid4()}")
    notice = (
        f"rejected: {case.status_notes}"
        if case.status == "rejected"
        else f"expected by {_iso(case.due_at)}"
        if case.due_at
        else "received"
    )
    return JSONResponse(
        [
            {
                "service_request_id": str(case.id),
                "service_notice": notice,
                "account_id": None,
            }
        ],
        status_code=201,
    )
