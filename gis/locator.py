"""The service network's view of the map: the ``core.case.desk.Locator`` port over gis/."""

from __future__ import annotations

import pandas as pd

from core.case.desk import Department, Place
from gis.assign import NOWHERE, GridIndex, Jurisdictions
from gis.layers import CityLayers


class CityLocator:
    """Grid cell, district and responsible department of a point, from the city's layers.

    Examples
    --------
    >>> locator = CityLocator(layers)  # doctest: +SKIP
    >>> locator.department_for(121.47, 31.23, "water")  # doctest: +SKIP
    '310104-water'
    """

    def __init__(self, layers: CityLayers) -> None:
        self.grid = GridIndex(layers.grid)
        self.jurisdictions = Jurisdictions(layers.jurisdictions)
        jur = layers.jurisdictions
        self._departments = {
            str(row.department_code): Department(
                code=str(row.department_code),
                department_type=str(row.department_type),
                name=str(row.get("name", row.department_code)),
                name_zh=str(row.get("name_zh", row.get("name", row.department_code))),
            )
            for _, row in jur.iterrows()
            if not pd.isna(row.department_code)
        }

    def place(self, lon: float, lat: float) -> Place | None:
        """The point's grid cell and district; None outside every grid cell (the city)."""
        pos = self.grid.locate_one(lon, lat)
        if pos == NOWHERE:
            return None
        return Place(str(self.grid.grid_codes[pos]), str(self.grid.district_codes[pos]))

    def department_for(self, lon: float, lat: float, department_type: str) -> str | None:
        """The department of that type whose jurisdiction contains the point, if any."""
        if department_type not in self.jurisdictions.department_types:
            return None
        return self.jurisdictions.department_for(lon, lat, department_type)

    def departments(self) -> dict[str, Department]:
        """Every department of the jurisdictions layer, by code."""
        return self._departments
