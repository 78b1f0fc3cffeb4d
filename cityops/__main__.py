"""``python -m cityops``."""

from cityops.cli import app

app()
