"""``cityops replay``: the city's map as of an instant, or the changes in a window."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, help=__doc__)
