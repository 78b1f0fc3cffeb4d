"""OpenAPI 3.0 from the OpenAPI 3.1 that FastAPI writes, for the OGC API's definition.

OGC API – Features' ``oas30`` conformance class, and clients such as GDAL's OAPIF driver,
read OpenAPI 3.0, whose Schema Object is JSON Schema draft 5 with a few additions; FastAPI
writes OpenAPI 3.1 (JSON Schema 2020-12). ``definition`` keeps the app's paths under a
prefix, relative to it (the prefix is the server URL, as OGC API definitions are written),
with the components they reference, and ``schema`` rewrites each Schema Object:

- ``null`` in ``type``, or as a branch of ``anyOf``/``oneOf``: ``nullable: true``;
- several types: ``anyOf`` of one type each;
- ``const``: an ``enum`` of one value;
- ``examples`` (a list in 3.1): ``example``, the first of them;
- a number as ``exclusiveMinimum``/``exclusiveMaximum``: ``minimum``/``maximum`` with the
  boolean;
- a ``$ref`` with siblings: ``allOf: [{$ref}]`` beside them (3.0 ignores a ``$ref``'s
  siblings, and with them a field's description).

A keyword with no 3.0 form (``prefixItems``, ``if``/``then``, ...) is left as it is: the
OpenAPI 3.0 validator of the tests refuses the document then. Only what the OGC routes can
hold is handled: operations' parameters, bodies, responses and headers, component schemas
and the security schemes the operations name.

Written here rather than taken from a package: the one on PyPI (openapi-downgrade) fetches
the 3.0 meta-schema over the network on every conversion, writes a warnings file in the
working directory and turns every "true"/"false" string of a document into a boolean.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

VERSION = "3.0.3"
SCHEMAS = "#/components/schemas/"

Json = dict[str, Any]

_ONE = ("items", "additionalProperties", "not")  # keywords whose value is a schema
_MANY = ("allOf", "anyOf", "oneOf")  # ... a list of schemas
_NAMED = ("properties",)  # ... a map of names to schemas
_ANNOTATIONS = frozenset({"title", "description", "default", "example", "deprecated"})
_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def schema(node: Any) -> Any:
    """One Schema Object in 3.0 form: a new object, ``node`` is not changed.

    >>> schema({"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Bbox"})
    {'type': 'string', 'title': 'Bbox', 'nullable': True}
    """
    if not isinstance(node, dict):  # a boolean, e.g. additionalProperties: false
        return node
    out: Json = {}
    for key, value in _without_null_branches(node).items():
        if key in _ONE:
            out[key] = schema(value)
        elif key in _MANY:
            out[key] = [schema(v) for v in value]
        elif key in _NAMED:
            out[key] = {name: schema(v) for name, v in value.items()}
        else:
            out[key] = value
    return _sibling_ref(_bounds(_examples(_const(_types(out)))))


def _is_null(branch: Any) -> bool:
    return isinstance(branch, dict) and branch.get("type") == "null"


def _without_null_branches(node: Json) -> Json:
    """``anyOf``/``oneOf`` with a ``{"type": "null"}`` branch: nullable, that branch gone
    (and a single branch left merged into the schema, or under ``allOf`` if it is a
    ``$ref`` or says something the schema says too)."""
    for key in ("anyOf", "oneOf"):
        branches = node.get(key)
        if not isinstance(branches, list) or not any(_is_null(b) for b in branches):
            continue
        kept = [b for b in branches if not _is_null(b)]
        node = {k: v for k, v in node.items() if k != key}
        node["nullable"] = True
        if not kept:
            node["enum"] = [None]
        elif len(kept) > 1:
            node[key] = kept
        elif "$ref" in kept[0] or (set(kept[0]) & set(node)) - _ANNOTATIONS:
            node["allOf"] = [*node.get("allOf", ()), kept[0]]
        else:  # the schema's own title and description win over the branch's
            node = {**kept[0], **node}
    return node


def _types(node: Json) -> Json:
    types = node.get("type")
    if types == "null":
        return {**{k: v for k, v in node.items() if k != "type"}, "nullable": True, "enum": [None]}
    if not isinstance(types, list):
        return node
    named = [t for t in types if t != "null"]
    out = {k: v for k, v in node.items() if k != "type"}
    if len(named) < len(types):
        out["nullable"] = True
    if len(named) == 1:
        out["type"] = named[0]
    elif named:
        out["allOf"] = [*out.get("allOf", ()), {"anyOf": [{"type": t} for t in named]}]
    else:
        out["enum"] = [None]
    return out


def _const(node: Json) -> Json:
    if "const" not in node:
        return node
    out = {k: v for k, v in node.items() if k != "const"}
    out["enum"] = [node["const"]]
    return out


def _examples(node: Json) -> Json:
    examples = node.get("examples")
    if not isinstance(examples, list):
        return node
    out = {k: v for k, v in node.items() if k != "examples"}
    if examples and "example" not in out:
        out["example"] = examples[0]
    return out


def _bounds(node: Json) -> Json:
    """A numeric exclusive bound as 3.0 writes it; of two bounds on one side, the tighter."""
    out = dict(node)
    for exclusive, inclusive, tighter in (
        ("exclusiveMinimum", "minimum", max),
        ("exclusiveMaximum", "maximum", min),
    ):
        bound = out.get(exclusive)
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            continue
        limit = out.get(inclusive)
        if limit is None or tighter(bound, limit) == bound:
            out[inclusive] = bound
            out[exclusive] = True
        else:  # the inclusive bound is the tighter one
            del out[exclusive]
    return out


def _sibling_ref(node: Json) -> Json:
    if "$ref" not in node or len(node) == 1:
        return node
    out = {k: v for k, v in node.items() if k != "$ref"}
    out["allOf"] = [{"$ref": node["$ref"]}, *out.get("allOf", ())]
    return out


# -- the document -------------------------------------------------------------------------


def _with_schema(obj: Json) -> Json:
    """A parameter, header or media type, with its schema (and content) in 3.0 form."""
    out = dict(obj)
    if "schema" in obj:
        out["schema"] = schema(obj["schema"])
    if "content" in obj:
        out["content"] = {media: _with_schema(m) for media, m in obj["content"].items()}
    return out


def _response(response: Json) -> Json:
    out = _with_schema(response)
    if "headers" in response:
        out["headers"] = {name: _with_schema(h) for name, h in response["headers"].items()}
    return out


def _operation(operation: Json) -> Json:
    out = dict(operation)
    if "parameters" in operation:
        out["parameters"] = [_with_schema(p) for p in operation["parameters"]]
    if "requestBody" in operation:
        out["requestBody"] = _with_schema(operation["requestBody"])
    out["responses"] = {status: _response(r) for status, r in operation["responses"].items()}
    return out


def _path_item(item: Json) -> Json:
    out: Json = {}
    for key, value in item.items():
        if key in _METHODS:
            out[key] = _operation(value)
        elif key == "parameters":
            out[key] = [_with_schema(p) for p in value]
        else:
            out[key] = value
    return out


def _schema_refs(node: Any) -> Iterator[str]:
    """The names of the component schemas ``node`` refers to."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(SCHEMAS):
            yield ref.removeprefix(SCHEMAS)
        for value in node.values():
            yield from _schema_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schema_refs(value)


def _referenced(node: Any, schemas: Json) -> dict[str, Any]:
    """The component schemas ``node`` refers to, and those they refer to in turn."""
    found: dict[str, Any] = {}
    pending = [node]
    while pending:
        for name in _schema_refs(pending.pop()):
            if name not in found:
                found[name] = schemas[name]
                pending.append(schemas[name])
    return dict(sorted(found.items()))


def definition(document: Json, prefix: str, server: str, info: Json) -> Json:
    """The OpenAPI 3.0 definition of ``document``'s operations under ``prefix``.

    ``document`` is an OpenAPI 3.1 document (FastAPI's ``app.openapi()``, not changed);
    the paths are given relative to ``prefix``, whose absolute URL ``server`` is the one
    server, with ``info`` (title, version, description) as the document's.
    """
    paths = {
        path.removeprefix(prefix): _path_item(item)
        for path, item in document["paths"].items()
        if path.startswith(f"{prefix}/")
    }
    components = document.get("components", {})
    schemas = _referenced(paths, components.get("schemas", {}))
    named = {
        name
        for item in paths.values()
        for method, op in item.items()
        if method in _METHODS
        for requirement in op.get("security", ())
        for name in requirement
    }
    security = {k: v for k, v in components.get("securitySchemes", {}).items() if k in named}
    parts = {
        "schemas": {name: schema(s) for name, s in schemas.items()},
        "securitySchemes": security,
    }
    out: Json = {"openapi": VERSION, "info": info, "servers": [{"url": server}], "paths": paths}
    if any(parts.values()):
        out["components"] = {k: v for k, v in parts.items() if v}
    return out
