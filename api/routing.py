"""Command routes declared as a table: one generic endpoint, its parameters set per row.

FastAPI reads an endpoint's parameters (dependencies, path parameters, the body model)
from its signature. A table row's endpoint is one function written once; ``add_command``
gives it the row's parameter types before registering it, so the route is the same as
one written out by hand: same parameters in the same order, same OpenAPI operation.

The answer is written by ``JSONBody`` (orjson) straight from the endpoint's dict: FastAPI
would first validate the dict against the route's response model (``dict[str, Any]``,
which any dict passes) and then serialize it through pydantic: 2–3 % of an API worker's
Python time (py-spy) for nothing. The document still gives that model.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Response
from pydantic_core import to_jsonable_python  # pydantic's own core, pinned by pydantic


class JSONBody(Response):
    """A JSON answer written by orjson, in the format FastAPI's own would have: UTC as
    ``Z``, and what orjson does not know (a ``Decimal``, a set) as pydantic writes it."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=to_jsonable_python, option=orjson.OPT_UTC_Z)


def add_command(
    router: APIRouter,
    path: str,
    name: str,
    description: str,
    endpoint: Callable[..., Awaitable[dict[str, Any]]],
    responses: dict[int | str, dict[str, Any]] | None = None,
    **params: Any,
) -> None:
    """POST ``path`` runs ``endpoint``; ``name`` is its OpenAPI summary and operation id,
    ``responses`` its answers besides success.

    ``params`` maps each parameter the route has to its type (a model, ``uuid.UUID``, an
    ``Annotated`` dependency); each is required. A parameter of ``endpoint`` not in
    ``params`` is not part of the route, and keeps its default.
    """
    signature = inspect.signature(endpoint, eval_str=True)
    missing = set(params) - set(signature.parameters)
    assert not missing, f"{endpoint.__qualname__} has no parameter {', '.join(missing)}"
    declared = [
        p.replace(annotation=params[p.name], default=inspect.Parameter.empty)
        for p in signature.parameters.values()
        if p.name in params
    ]

    async def answered(**values: Any) -> Response:
        return JSONBody(await endpoint(**values))

    answered.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=declared, return_annotation=Response
    )
    router.add_api_route(
        path,
        answered,
        response_model=dict[str, Any],
        methods=["POST"],
        name=name,
        description=description,
        responses=responses,
    )
