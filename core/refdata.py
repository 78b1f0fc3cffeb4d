"""Reading the versioned YAML reference data (rules, categories, policies, weights).

Each file is packaged next to the code that parses it; a caller may name another file
(a rule version under test, a backtest's candidate policy) instead.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml


def load_yaml(
    package: str,
    name: str,
    path: Path | None = None,
    *,
    invalid: tuple[type[Exception], str] | None = None,
) -> Any:
    """The YAML document at ``path``, or the packaged file ``name`` of ``package``.

    ``invalid`` (error class, message): a file that is not YAML raises that error with
    ``"<message>: <parser error>"``; without it the parser's ``yaml.YAMLError`` goes up.

    Examples
    --------
    >>> load_yaml("core.sensor", "rules.yaml")["version"] >= 1
    True
    """
    source: Traversable | Path = resources.files(package).joinpath(name) if path is None else path
    text = source.read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if invalid is None:
            raise
        error, message = invalid
        raise error(f"{message}: {exc}") from None
