"""The inbound hotline contract: the published JSON Schema is the model's, and the model holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from core.case.desk import nul_field
from gis.china import from_wgs84
from gis.crs import distance_m
from infra.hotline_schema import HotlineCase, encode, json_schema
from workers.intake import schema_reason, to_command

PUBLISHED = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "hotline-case.schema.json"


def realistic() -> dict[str, Any]:
    """What a 12345 hotline system sends for one call."""
    return {
        "schema_version": 1,
        "external_id": "12345-2026-000123",
        "source": "sh-12345",
        "channel": "hotline",
        "service_code": "road_damage",
        "description": "徐汇区某路口路面塌陷，约一个车道宽",
        "location": {"lon": 121.47, "lat": 31.215},
        "address": "徐汇区某路 100 号门口",
        "attributes": {"size": "medium"},
        "citizen": {"name": "张三", "phone": "138 0013 8000", "email": "Zhang@Example.cn"},
        "received_at": "2026-03-02T09:15:00+08:00",
    }


def test_published_schema_is_the_generated_one() -> None:
    generated = json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
    assert PUBLISHED.read_text(encoding="utf-8") == generated, (
        "docs/schemas/hotline-case.schema.json is stale: regenerate it from "
        "infra.hotline_schema.json_schema()"
    )


def test_published_schema_states_the_contract() -> None:
    schema = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    assert schema["$id"] == "https://cityops.example/schemas/hotline-case.schema.json"
    assert schema["additionalProperties"] is False
    assert sorted(schema["required"]) == ["external_id", "service_code"]
    assert schema["$defs"]["Location"]["additionalProperties"] is False
    assert schema["$defs"]["Location"]["properties"]["lat"]["maximum"] == 90


def test_a_realistic_message_is_accepted() -> None:
    msg = HotlineCase.model_validate_json(orjson.dumps(realistic()))
    assert msg.external_id == "12345-2026-000123"
    assert msg.location is not None
    assert (msg.location.lon, msg.location.lat) == (121.47, 31.215)
    assert msg.citizen is not None
    assert msg.citizen.name == "张三"
    assert msg.received_at is not None
    assert msg.received_at.utcoffset() is not None


def test_defaults_of_a_minimal_message() -> None:
    msg = HotlineCase.model_validate_json(b'{"external_id": "x-1", "service_code": "flooding"}')
    assert (msg.schema_version, msg.source, msg.channel) == (1, "12345", "hotline")
    assert msg.attributes == {}
    assert msg.location is None
    assert msg.citizen is None


def test_encode_round_trips_and_keys_by_external_id() -> None:
    msg = HotlineCase.model_validate(realistic())
    key, value = encode(msg)
    assert key == b"12345-2026-000123"
    assert HotlineCase.model_validate_json(value) == msg


def test_to_command_keys_the_case_by_source_and_external_id() -> None:
    cmd = to_command(HotlineCase.model_validate(realistic()))
    assert cmd.channel == "hotline"
    assert cmd.external_id == "sh-12345:12345-2026-000123"
    assert (cmd.category, cmd.lon, cmd.lat) == ("road_damage", 121.47, 31.215)
    assert cmd.attributes == {"size": "medium"}
    assert cmd.contact.phone == "13800138000"
    assert cmd.contact.email == "zhang@example.cn"


def test_a_location_in_a_chinese_map_system_is_stored_as_wgs84() -> None:
    """People's Square as AMap (GCJ-02) and Baidu (BD-09) show it: WGS-84 in the command."""
    wgs = (121.4737, 31.2304)
    shown = {"gcj02": from_wgs84(*wgs, "gcj02"), "bd09": from_wgs84(*wgs, "bd09")}
    for system, (lon, lat) in shown.items():
        assert distance_m(lon, lat, *wgs) > 300  # the shifts are hundreds of metres
        msg = realistic()
        msg["location"] = {"lon": lon, "lat": lat, "coord_system": system}
        cmd = to_command(HotlineCase.model_validate(msg))
        assert cmd.lon is not None
        assert cmd.lat is not None
        assert distance_m(cmd.lon, cmd.lat, *wgs) < 0.01
    # The default is WGS-84; an unknown system is a schema error.
    assert to_command(HotlineCase.model_validate(realistic())).lon == 121.47
    bad = realistic()
    bad["location"] = {"lon": 121.47, "lat": 31.2, "coord_system": "mars"}
    with pytest.raises(ValidationError, match="coord_system"):
        HotlineCase.model_validate(bad)


def _without(key: str) -> dict[str, Any]:
    msg = realistic()
    del msg[key]
    return msg


def _with(**changes: Any) -> dict[str, Any]:
    return {**realistic(), **changes}


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"{not json", "message"),
        (b"", "message"),
        (b"[]", "message"),
        (orjson.dumps(_without("service_code")), "service_code"),
        (orjson.dumps(_without("external_id")), "external_id"),
        (orjson.dumps(_with(external_id="has space")), "external_id"),
        (orjson.dumps(_with(external_id="")), "external_id"),
        (orjson.dumps(_with(source="a/b")), "source"),
        (orjson.dumps(_with(schema_version=2)), "schema_version"),
        (orjson.dumps(_with(channel="fax")), "channel"),
        (orjson.dumps(_with(location={"lon": 121.47, "lat": 95})), "location.lat"),
        (orjson.dumps(_with(location={"lon": 181, "lat": 31.2})), "location.lon"),
        (orjson.dumps(_with(location={"lon": 121.47})), "location.lat"),
        (b'{"external_id": "x", "service_code": "y", "location": {"lon": NaN, "lat": 1}}', "lon"),
        (orjson.dumps(_with(location={"lon": 121.47, "lat": 31.2, "alt": 4})), "location.alt"),
        (orjson.dumps(_with(colour="red")), "colour"),
        (orjson.dumps(_with(citizen={"name": "x", "ssn": "1"})), "citizen.ssn"),
        (orjson.dumps(_with(description="x" * 4_001)), "description"),
        (orjson.dumps(_with(received_at="yesterday")), "received_at"),
        (orjson.dumps(_with(attributes=["size"])), "attributes"),
    ],
)
def test_bad_messages_are_refused_with_a_reason_naming_the_problem(raw: bytes, where: str) -> None:
    with pytest.raises(ValidationError) as info:
        HotlineCase.model_validate_json(raw)
    reason = schema_reason(info.value)
    assert reason.startswith("schema: ")
    assert where in reason


def test_nul_characters_are_found_wherever_they_hide() -> None:
    """JSON allows U+0000 but PostgreSQL text does not: intake refuses such messages."""
    assert nul_field(HotlineCase.model_validate(realistic()).model_dump()) is None
    assert nul_field(_with(description="a\x00b")) == "description"
    assert nul_field(_with(attributes={"size": ["ok", "b\x00"]})) == "attributes.size.1"
    assert nul_field(_with(citizen={"name": "\x00"})) == "citizen.name"
    raw = orjson.dumps(_with(address="x\x00"))
    assert b"\\u0000" in raw  # valid JSON, so the schema alone lets it through
    assert nul_field(HotlineCase.model_validate_json(raw).model_dump()) == "address"
