"""Request bodies and query types of the case and incident routes.

Their class names are the schema names in the OpenAPI document. A command's body has
the fields of its command (``core.case.commands``, ``core.incident.commands``), by name.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Query
from pydantic import BaseModel, Field, StringConstraints

from core.case import REJECTION_REASONS
from gis.china import CoordSystem, to_wgs84
from projections.queries import BBox

Severity = Literal["warning", "minor", "major", "critical"]
SensorState = Literal["normal", "alarm", "silent", "maintenance"]
SensorType = Literal["water_level", "pm25", "manhole_tilt", "streetlight_power"]
# A grid cell code and a district code (query parameter patterns).
GRID = r"^\d{15}$"
DISTRICT = r"^\d{6}$"
# Rows a list may skip: PostgreSQL's OFFSET takes a bigint, and a larger number is a
# failing query (a 500), not an empty page; no list here comes near this.
MAX_OFFSET = 1_000_000_000
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]
# A code: of a department, a service category, a device. Codes use these characters
# only, so a parameter with others (NUL among them, which PostgreSQL text cannot hold)
# is refused as malformed (422) instead of failing its query.
CODE = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
CodeText = Annotated[str, StringConstraints(pattern=CODE)]
Code = Annotated[str | None, Query(pattern=CODE)]
GridCode = Annotated[str | None, Query(pattern=GRID)]


def bbox_in_wgs84(raw: str | None, system: CoordSystem, status: int = 422) -> BBox | None:
    """A ``bbox`` parameter (``projections.queries.BBox.parse``) given in
    ``system``, as the WGS-84 box the stores are queried with; malformed: ``status``."""
    try:
        box = None if raw is None else BBox.parse(raw)
    except ValueError as exc:
        raise HTTPException(status, f"bbox: {exc}") from None
    if box is None or system is CoordSystem.WGS84:
        return box
    # The offsets are a few hundred metres and smooth: the corners' images bound it.
    west, south = to_wgs84(box.west, box.south, system)
    east, north = to_wgs84(box.east, box.north, system)
    return BBox(west, south, east, north)


def _viewport(status: int) -> Callable[..., BBox | None]:
    def viewport(
        bbox: Annotated[
            str | None, Query(description="west,south,east,north, in bbox_coord_system")
        ] = None,
        bbox_coord_system: Annotated[
            CoordSystem,
            Query(
                description="the system of bbox: wgs84 (stored), or gcj02 / bd09 for a box"
                " taken from an AMap, Tencent or Baidu map; the answer stays WGS-84"
            ),
        ] = CoordSystem.WGS84,
    ) -> BBox | None:
        return bbox_in_wgs84(bbox or None, bbox_coord_system, status)  # empty: none

    return viewport


# A list's viewport: ``bbox`` with the system it is given in; malformed: 400.
Viewport = Annotated[BBox | None, Depends(_viewport(400))]
# The same where every malformed parameter is a 422 (scorecards, hotspots).
StrictViewport = Annotated[BBox | None, Depends(_viewport(422))]
# A command's free text. JSON strings may hold NUL (U+0000) and PostgreSQL text may not:
# recorded, such a reason would stop the read models' projector for good (a submission's
# own texts are checked by ``core.case.desk.nul_field``).
NO_NUL = r"^[^\x00]*$"

# -- service cases ------------------------------------------------------------------------


class ContactIn(BaseModel):
    name: str | None = Field(default=None, max_length=100)
    phone: str | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, max_length=254)
    address: str | None = Field(default=None, max_length=300)


class NewCase(BaseModel):
    category: str = Field(min_length=1, max_length=64, description="a category code")
    description: str = Field(default="", max_length=4_000)
    lon: float | None = Field(default=None, ge=-180, le=180)
    lat: float | None = Field(default=None, ge=-90, le=90)
    address: str | None = Field(default=None, max_length=300, description="problem location")
    attributes: dict[str, Any] = Field(default_factory=dict)
    contact: ContactIn | None = None
    external_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="your id; resubmitting it is refused",
    )


class Reason(BaseModel):
    reason: str = Field(default="", pattern=NO_NUL, max_length=2_000)


class Accept(BaseModel):
    reason: str = Field(default="", pattern=NO_NUL, max_length=2_000)
    department_code: str | None = Field(
        default=None, max_length=64, description="dispatch here instead of by policy"
    )


class Reject(BaseModel):
    rejection: Literal["duplicate", "out_of_scope", "not_our_city"] = Field(
        description=f"one of {', '.join(REJECTION_REASONS)}"
    )
    duplicate_of: uuid.UUID | None = None
    reason: str = Field(default="", pattern=NO_NUL, max_length=2_000)


class Assign(BaseModel):
    department_code: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="", pattern=NO_NUL, max_length=2_000)


class Resolve(BaseModel):
    reply: str = Field(
        min_length=1, pattern=NO_NUL, max_length=4_000, description="the answer to the citizen"
    )
    reason: str = Field(default="", pattern=NO_NUL, max_length=2_000)


class ExtensionRequest(BaseModel):
    hours: float = Field(gt=0, le=24 * 90)
    reason: str = Field(min_length=1, pattern=NO_NUL, max_length=2_000)


class Rate(BaseModel):
    rating: int = Field(ge=1, le=5)
    comment: str = Field(default="", pattern=NO_NUL, max_length=2_000)
    solved: bool | None = Field(
        default=None, description="whether the citizen says the problem was solved (解决)"
    )


class RequiredReason(BaseModel):
    reason: str = Field(min_length=1, pattern=NO_NUL, max_length=2_000)


class AddCoHandler(BaseModel):
    department_code: str = Field(min_length=1, max_length=64)
    part: str = Field(
        min_length=1, pattern=NO_NUL, max_length=1_000, description="its part of the work"
    )
    reason: str = Field(default="", pattern=NO_NUL, max_length=2_000)


class AnswerCoHandling(BaseModel):
    department_code: str = Field(
        min_length=1, max_length=64, description="the co-handling unit answering (yours)"
    )
    feedback: str = Field(min_length=1, pattern=NO_NUL, max_length=4_000)


class Dispute(BaseModel):
    reason: str = Field(min_length=1, pattern=NO_NUL, max_length=2_000)
    proposed_department_code: str | None = Field(
        default=None, max_length=64, description="the unit you believe responsible"
    )


class UpholdDispute(BaseModel):
    department_code: str | None = Field(
        default=None, max_length=64, description="default: the unit the dispute proposed"
    )
    reason: str = Field(default="", pattern=NO_NUL, max_length=2_000)


class ContactCitizen(BaseModel):
    note: str = Field(
        min_length=1, pattern=NO_NUL, max_length=2_000, description="what was said or agreed"
    )


# -- incidents ----------------------------------------------------------------------------


class Acknowledge(BaseModel):
    reason: str = Field(default="", pattern=NO_NUL, max_length=1_000)


class Dispatch(BaseModel):
    department_code: str | None = Field(
        default=None, max_length=64, description="default: the department of the place"
    )
    reason: str = Field(default="", pattern=NO_NUL, max_length=2_000)


class Feedback(BaseModel):
    feedback: str = Field(
        min_length=1, pattern=NO_NUL, max_length=4_000, description="处置反馈 from the field"
    )


class Verification(BaseModel):
    passed: bool
    note: str = Field(default="", pattern=NO_NUL, max_length=2_000)
