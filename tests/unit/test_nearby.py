"""The order of what the correlation policy finds nearby."""

from __future__ import annotations

from projections.nearby import nearest


def test_rows_at_one_distance_are_ordered_by_id_not_compared_as_rows() -> None:
    # Two reports from one spot: equal distances, and rows (dicts) that cannot be ordered.
    rows = [
        {"case_id": "b", "lon": 121.5, "lat": 31.2},
        {"case_id": "a", "lon": 121.5, "lat": 31.2},
        {"case_id": "c", "lon": 121.5001, "lat": 31.2},
    ]
    found = nearest(rows, "case_id", 121.5, 31.2, 100.0)
    assert [r["case_id"] for _, r in found] == ["a", "b", "c"]
    assert found[0][0] == found[1][0] == 0.0


def test_rows_beyond_the_radius_are_left_out() -> None:
    rows = [
        {"case_id": "far", "lon": 121.6, "lat": 31.2},
        {"case_id": "near", "lon": 121.5, "lat": 31.2},
    ]
    assert [r["case_id"] for _, r in nearest(rows, "case_id", 121.5, 31.2, 500.0)] == ["near"]
