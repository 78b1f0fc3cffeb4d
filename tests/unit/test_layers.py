"""The layering contracts in ``pyproject.toml`` ([tool.importlinter]) hold, and cover everything.

import-linter checks the imports (module level, in functions, and under TYPE_CHECKING);
this test runs it, and makes sure that no installed top-level package escapes the
contracts: a new package must be given a layer before it can be imported by anything.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _layered(contract: dict) -> set[str]:
    return {name.strip() for layer in contract["layers"] for name in layer.split("|")}


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_package_has_a_layer() -> None:
    conf = _pyproject()
    linter = conf["tool"]["importlinter"]
    (layers,) = [c for c in linter["contracts"] if c["type"] == "layers"]
    installed = {
        pattern.rstrip("*") for pattern in conf["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    on_disk = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "bench", "build"}
    assert installed == on_disk
    assert set(linter["root_packages"]) == installed
    assert _layered(layers) == installed


def test_the_domain_is_kept_free_of_infrastructure() -> None:
    linter = _pyproject()["tool"]["importlinter"]
    (forbidden,) = [c for c in linter["contracts"] if c["type"] == "forbidden"]
    assert forbidden["source_modules"] == ["core"]
    assert {"psycopg", "kafka", "fastapi", "paho", "httpx"} <= set(forbidden["forbidden_modules"])


def test_the_page_is_small_es_modules() -> None:
    static = REPO / "api" / "static"
    scripts = sorted(static.rglob("*.js"))
    assert scripts, "the operations center has no scripts"
    too_long = {
        str(p.relative_to(static)): n
        for p in scripts
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600
    }
    assert too_long == {}
    index = (static / "index.html").read_text(encoding="utf-8")
    assert '<script type="module" src="/static/js/main.js"></script>' in index


def test_every_router_is_independent_of_the_others() -> None:
    linter = _pyproject()["tool"]["importlinter"]
    (independence,) = [c for c in linter["contracts"] if c["type"] == "independence"]
    routers = {
        f"api.{p.stem}"
        for p in (REPO / "api").glob("*.py")
        if "\nrouter = APIRouter(" in p.read_text(encoding="utf-8")
    }
    assert routers
    assert set(independence["modules"]) == routers
