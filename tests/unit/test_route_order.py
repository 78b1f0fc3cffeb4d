"""The case routes are tried first (api/app.py): no other route may share a path with them.

A request goes to the first route whose path matches, so the order of the routers only
changes an answer when two routes of different routers match one path. Each route's path
is made concrete (every parameter filled in) and tried against the other side's routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from api import cases
from api.app import create_app
from infra.settings import Settings

PARAMETER = re.compile(r"{[^}]+}")


def routes(route: Any) -> Iterator[Any]:
    """``route``, or each route of the router it includes (at any depth)."""
    included = getattr(route, "original_router", None)
    if included is None:
        yield route
        return
    for inner in included.routes:
        yield from routes(inner)


def concrete(route: Any) -> str:
    """A path the route matches: its parameters filled with an id."""
    return PARAMETER.sub("0b0e5b38-4d1c-4d55-9d43-6b3a4fbc1b0e", route.path_format)


@pytest.fixture(scope="module")
def split() -> tuple[list[Any], list[Any]]:
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none")
    app = create_app(lambda: None, settings)  # type: ignore[arg-type, return-value]
    every = [r for top in app.router.routes for r in routes(top) if hasattr(r, "path_regex")]
    mine = [r for r in every if r in cases.router.routes]
    return mine, [r for r in every if r not in cases.router.routes]


def test_every_case_route_is_found(split: tuple[list[Any], list[Any]]) -> None:
    mine, _ = split
    assert len(mine) == len(cases.router.routes)


def test_no_other_route_shares_a_path_with_a_case_route(
    split: tuple[list[Any], list[Any]],
) -> None:
    mine, others = split
    for case_route in mine:
        path = concrete(case_route)
        assert case_route.path_regex.match(path), path
        clashing = [r.path_format for r in others if r.path_regex.match(path)]
        assert not clashing, f"{path} also matches {clashing}"
    for other in others:
        path = concrete(other)
        clashing = [r.path_format for r in mine if r.path_regex.match(path)]
        assert not clashing, f"{path} also matches {clashing}"
