"""The OGC API's definition (``/ogc/api``, ``api.openapi30``) is valid OpenAPI 3.0 and whole.

The rewriting rules one by one on small schemas; then the document the app serves,
in-process (no services: nothing the routes need is opened), checked by
openapi-spec-validator as OpenAPI 3.0 and compared with the app's /ogc routes, so that a
route added without its definition fails here.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from openapi_spec_validator import OpenAPIV30SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from api.app import create_app
from api.ogc_common import OPENAPI_30, PREFIX
from api.openapi30 import definition, schema
from infra.settings import Settings

OAS30 = "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30"
NULL: dict[str, Any] = {"type": "null"}


@pytest.fixture(scope="module")
def client() -> TestClient:
    # Not entered: the lifespan (which builds the container) does not run.
    return TestClient(create_app(lambda: None, Settings()))  # type: ignore[arg-type,return-value]


@pytest.fixture(scope="module")
def served(client: TestClient) -> dict[str, Any]:
    answer = client.get(f"{PREFIX}/api")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == OPENAPI_30
    return dict(answer.json())


# -- the rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # FastAPI's optional query parameter.
        (
            {"anyOf": [{"type": "string"}, NULL], "title": "Bbox"},
            {"type": "string", "title": "Bbox", "nullable": True},
        ),
        # An optional model: 3.0 ignores a $ref's siblings, so it goes under allOf.
        (
            {"anyOf": [{"$ref": "#/components/schemas/A"}, NULL], "description": "d"},
            {"description": "d", "nullable": True, "allOf": [{"$ref": "#/components/schemas/A"}]},
        ),
        # Several branches left: they stay, nullable beside them.
        (
            {"oneOf": [{"type": "integer"}, {"type": "string"}, NULL]},
            {"oneOf": [{"type": "integer"}, {"type": "string"}], "nullable": True},
        ),
        (
            {"type": ["integer", "null"], "minimum": 1},
            {"type": "integer", "minimum": 1, "nullable": True},
        ),
        (
            {"type": ["integer", "string"]},
            {"allOf": [{"anyOf": [{"type": "integer"}, {"type": "string"}]}]},
        ),
        ({"const": "Feature"}, {"enum": ["Feature"]}),
        ({"type": "string", "examples": ["a", "b"]}, {"type": "string", "example": "a"}),
        (
            {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 1,
                "exclusiveMaximum": True,
            },
        ),
        # Of an inclusive and an exclusive bound, the tighter one stays.
        ({"minimum": 5, "exclusiveMinimum": 0}, {"minimum": 5}),
        ({"minimum": 0, "exclusiveMinimum": 5}, {"minimum": 5, "exclusiveMinimum": True}),
        (
            {"$ref": "#/components/schemas/A", "description": "why"},
            {"description": "why", "allOf": [{"$ref": "#/components/schemas/A"}]},
        ),
        ({"$ref": "#/components/schemas/A"}, {"$ref": "#/components/schemas/A"}),
    ],
)
def test_each_rule(given: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(given)
    assert schema(given) == expected
    assert given == before  # FastAPI's cached document is not changed


def test_subschemas_are_rewritten_and_names_and_values_are_not() -> None:
    given = {
        "type": "object",
        "properties": {
            # Property names that are keywords stay names.
            "const": {"anyOf": [{"type": "string"}, NULL]},
            "examples": {"type": "array", "items": {"const": 1}},
            "extra": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
        },
        # Values are data, not schemas.
        "default": {"type": "null", "const": 3},
        "example": {"examples": [1, 2]},
        "not": {"const": 0},
        "allOf": [{"examples": [7]}],
    }
    assert schema(given) == {
        "type": "object",
        "properties": {
            "const": {"type": "string", "nullable": True},
            "examples": {"type": "array", "items": {"enum": [1]}},
            "extra": {
                "type": "object",
                "additionalProperties": {"type": "number", "nullable": True},
            },
        },
        "default": {"type": "null", "const": 3},
        "example": {"examples": [1, 2]},
        "not": {"enum": [0]},
        "allOf": [{"example": 7}],
    }


def _document(parameter_schema: dict[str, Any]) -> dict[str, Any]:
    """A small OpenAPI 3.1 document: one /x operation under /p, one outside it."""
    ref = {"$ref": "#/components/schemas/A"}
    ok = {"description": "ok", "content": {"application/json": {"schema": ref}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1", "summary": "3.1 only"},
        "paths": {
            "/p/x": {
                "get": {
                    "parameters": [{"name": "q", "in": "query", "schema": parameter_schema}],
                    "responses": {"200": ok},
                    "security": [{"Bearer": []}],
                }
            },
            "/other": {"get": {"responses": {"200": {"description": "ok"}}}},
        },
        "components": {
            "schemas": {
                "A": {"type": "object", "properties": {"b": {"$ref": "#/components/schemas/B"}}},
                "B": {"type": ["string", "null"]},
                "Unused": {"type": "string"},
            },
            "securitySchemes": {
                "Bearer": {"type": "http", "scheme": "bearer"},
                "Key": {"type": "apiKey", "in": "header", "name": "K"},
            },
        },
    }


def test_definition_keeps_the_prefix_and_what_it_refers_to() -> None:
    document = _document({"anyOf": [{"type": "integer", "exclusiveMinimum": 0}, NULL]})
    got = definition(document, "/p", "http://h/p", {"title": "T", "version": "1"})
    validate(got, cls=OpenAPIV30SpecValidator)
    assert got["openapi"] == "3.0.3"
    assert got["servers"] == [{"url": "http://h/p"}]
    assert list(got["paths"]) == ["/x"]
    assert got["paths"]["/x"]["get"]["parameters"][0]["schema"] == {
        "type": "integer",
        "minimum": 0,
        "exclusiveMinimum": True,
        "nullable": True,
    }
    assert set(got["components"]["schemas"]) == {"A", "B"}  # B through A
    assert got["components"]["schemas"]["B"] == {"type": "string", "nullable": True}
    assert set(got["components"]["securitySchemes"]) == {"Bearer"}


def test_the_validator_refuses_what_has_no_3_0_form() -> None:
    # The rules leave prefixItems as it is: the validator is what stops it.
    document = _document({"type": "array", "prefixItems": [{"type": "number"}]})
    with pytest.raises(OpenAPIValidationError):
        validate(definition(document, "/p", "http://h/p", {"title": "T", "version": "1"}))
    # And it does check 3.1-isms: FastAPI's own schemas, untouched, are refused as 3.0.
    raw = {**_document({"anyOf": [{"type": "string"}, NULL]}), "openapi": "3.0.3"}
    raw["info"] = {"title": "t", "version": "1"}
    with pytest.raises(OpenAPIValidationError):
        validate(raw, cls=OpenAPIV30SpecValidator)


# -- the app's document -------------------------------------------------------------------


def test_the_served_definition_is_valid_openapi_3_0(served: dict[str, Any]) -> None:
    validate(served, cls=OpenAPIV30SpecValidator)
    assert served["openapi"].startswith("3.0.")
    assert served["servers"] == [{"url": f"http://testserver{PREFIX}"}]


def test_every_ogc_route_is_in_the_definition(client: TestClient, served: dict[str, Any]) -> None:
    contexts = iter_route_contexts(client.app.routes)  # type: ignore[attr-defined]
    paths = [(r.path or "", r) for r in contexts]
    ogc = [(path.removeprefix(PREFIX), r) for path, r in paths if path.startswith(f"{PREFIX}/")]
    routes = {(path, method.lower()) for path, route in ogc for method in route.methods or ()}
    documented = {(path, method) for path, item in served["paths"].items() for method in item}
    assert ("/api", "get") in routes
    assert ("/collections/{collection_id}/items", "get") in routes
    assert routes == documented
    # Each with the parameters the route takes.
    for path, route in ogc:
        assert isinstance(route.original_route, APIRoute)
        parameters = served["paths"][path]["get"].get("parameters", ())
        taken = route.dependant.query_params + route.dependant.path_params
        assert {p["name"] for p in parameters} == {p.alias for p in taken}, path


def test_no_422_an_ogc_route_never_answers(served: dict[str, Any]) -> None:
    # OgcRoute answers request validation with a 400, an OGC exception.
    for item in served["paths"].values():
        assert "422" not in item["get"]["responses"]
        assert "400" in item["get"]["responses"]
    assert set(served["components"]["schemas"]) == {"OgcException"}


def test_the_landing_page_links_it_and_conformance_declares_oas30(client: TestClient) -> None:
    links = client.get(f"{PREFIX}/").json()["links"]
    described = [link for link in links if link["rel"] == "service-desc"]
    assert described[0] == {
        "href": f"http://testserver{PREFIX}/api",
        "rel": "service-desc",
        "type": OPENAPI_30,
        "title": "the API definition",
    }
    assert {link["href"] for link in described[1:]} == {"http://testserver/openapi.json"}
    assert OAS30 in client.get(f"{PREFIX}/conformance").json()["conformsTo"]
    assert client.get(f"{PREFIX}/api", params={"color": "red"}).status_code == 400
