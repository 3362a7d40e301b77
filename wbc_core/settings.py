"""Where things live: WBC_HOME (images, runs, caches) and the database URL."""

from __future__ import annotations

import os
from pathlib import Path


def wbc_home() -> Path:
    """Root folder for the database, stored images, run artifacts and caches (env WBC_HOME, default ./wbc_data)."""
    home = Path(os.environ.get("WBC_HOME", "wbc_data")).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def database_url() -> str:
    """SQLAlchemy URL: WBC_DB_URL if set (e.g. postgresql+psycopg://...), else SQLite at WBC_HOME/wbc.db."""
    url = os.environ.get("WBC_DB_URL")
    if url:
        return url
    return f"sqlite:///{wbc_home() / 'wbc.db'}"


def images_dir() -> Path:
    """Folder holding the bytes of every imported or generated cell, by dataset."""
    return _sub("images")


def runs_dir() -> Path:
    """Folder holding one subfolder per run (checkpoints, sample grids, models)."""
    return _sub("runs")


def cache_dir() -> Path:
    """Folder for derived, rebuildable data: tensor stores and thumbnails."""
    return _sub("cache")


def _sub(name: str) -> Path:
    path = wbc_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
