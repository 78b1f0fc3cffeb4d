"""The contract of ``cityops.cases.inbound``: one service case from a hotline system.

Key: the external case id (UTF-8). Value: a JSON object matching ``HotlineCase``; its
JSON Schema is published as ``docs/schemas/hotline-case.schema.json`` (generated from
this model; a test keeps the two equal).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gis.china import CoordSystem, to_wgs84


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lon: float = Field(ge=-180, le=180, description="longitude, in coord_system")
    lat: float = Field(ge=-90, le=90, description="latitude, in coord_system")
    coord_system: CoordSystem = Field(
        default=CoordSystem.WGS84,
        description="the system of lon/lat: wgs84 (GPS), gcj02 (AMap, Tencent) or bd09"
        " (Baidu); stored as WGS-84 (outside China all three are the same)",
    )

    def wgs84(self) -> tuple[float, float]:
        """The position as the platform stores it."""
        return to_wgs84(self.lon, self.lat, self.coord_system)


class Citizen(BaseModel):
    """The caller. Personal information: stored sealed, shown masked, erasable."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=100)
    phone: str | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, max_length=254)
    address: str | None = Field(
        default=None, max_length=300, description="the caller's own address"
    )


class HotlineCase(BaseModel):
    """A service case pushed by a hotline (12345) or service system."""

    model_config = ConfigDict(
        extra="forbid",
        title="CityOps inbound service case",
        json_schema_extra={"$id": "https://cityops.example/schemas/hotline-case.schema.json"},
    )

    schema_version: Literal[1] = 1
    external_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:\-]+$",
        description="the source system's case id; the same id twice is one case",
    )
    source: str = Field(
        default="12345",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._\-]+$",
        description="the sending system",
    )
    channel: Literal["hotline", "app", "web", "wechat"] = "hotline"
    service_code: str = Field(min_length=1, max_length=64, description="a category code")
    description: str = Field(default="", max_length=4_000)
    location: Location | None = Field(default=None, description="where the problem is")
    address: str | None = Field(
        default=None, max_length=300, description="where the problem is, as text"
    )
    attributes: dict[str, Any] = Field(default_factory=dict)
    citizen: Citizen | None = None
    received_at: datetime | None = Field(
        default=None, description="when the hotline took the call (ISO 8601)"
    )


def json_schema() -> dict[str, Any]:
    return HotlineCase.model_json_schema()


def encode(msg: HotlineCase) -> tuple[bytes, bytes]:
    """Kafka key and value of an inbound case (what a hotline system sends)."""
    return msg.external_id.encode(), msg.model_dump_json(exclude_none=True).encode()
