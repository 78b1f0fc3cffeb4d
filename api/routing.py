"""Command routes declared as a table: one generic endpoint, its parameters set per row.

FastAPI reads an endpoint's parameters (dependencies, path parameters, the body model)
from its signature. A table row's endpoint is one function written once; ``add_command``
gives it the row's parameter types before registering it, so the route is the same as
one written out by hand: same parameters in the same order, same OpenAPI operation.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter


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
    endpoint.__signature__ = signature.replace(parameters=declared)  # type: ignore[attr-defined]
    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        name=name,
        description=description,
        responses=responses,
    )
