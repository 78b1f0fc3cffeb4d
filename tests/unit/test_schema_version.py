"""The schema's version follows its file: a change to infra/schema.sql adds a version."""

from __future__ import annotations

import hashlib
from importlib import resources

from infra.pgstore import SCHEMA_HISTORY, SCHEMA_VERSION


def test_the_newest_version_is_the_schema_file_as_it_is() -> None:
    sql = resources.files("infra").joinpath("schema.sql").read_text(encoding="utf-8")
    digest = hashlib.sha256(sql.encode()).hexdigest()
    assert SCHEMA_HISTORY[SCHEMA_VERSION] == digest, (
        "infra/schema.sql changed: add the next version to infra.pgstore.SCHEMA_HISTORY"
        f" with digest {digest}"
    )


def test_versions_count_up_from_one_and_each_file_is_new() -> None:
    assert sorted(SCHEMA_HISTORY) == list(range(1, SCHEMA_VERSION + 1))
    assert len(set(SCHEMA_HISTORY.values())) == len(SCHEMA_HISTORY)
