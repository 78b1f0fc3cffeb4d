"""Whether ``apply_schema`` uses TimescaleDB: the decision from what the server reports."""

from __future__ import annotations

import pytest

from infra.pgstore import _preloads_timescale, _timescale_decision


@pytest.mark.parametrize(
    ("setting", "preloaded"),
    [
        ("timescaledb", True),
        ("pg_stat_statements, timescaledb", True),
        ('"timescaledb",auto_explain', True),
        ("$libdir/timescaledb", True),
        ("timescaledb-2.28.3", True),
        ("TimescaleDB.so", True),
        ("", False),
        ("pg_stat_statements", False),
        ("timescaledb_toolkit", False),
        ("not_timescaledb", False),
    ],
)
def test_the_loader_is_found_in_shared_preload_libraries(setting: str, preloaded: bool) -> None:
    assert _preloads_timescale(setting) is preloaded


def test_not_installed_is_the_plain_path() -> None:
    use, why = _timescale_decision(None, None, False)
    assert not use
    assert "not installed" in why


def test_installed_but_not_preloaded_is_the_plain_path_and_says_what_to_do() -> None:
    use, why = _timescale_decision("2.28.3", None, False)
    assert not use
    assert "not in shared_preload_libraries" in why
    assert "add it to use hypertables" in why
    use, why = _timescale_decision("2.28.3", "2.28.3", False)
    assert not use
    assert "created in this database" in why


def test_preloaded_uses_it_created_or_not() -> None:
    assert _timescale_decision("2.28.3", None, True) == (
        True,
        "TimescaleDB 2.28.3 preloaded: creating the extension",
    )
    assert _timescale_decision("2.28.3", "2.27.0", True) == (
        True,
        "TimescaleDB 2.27.0: readings is a hypertable",
    )
