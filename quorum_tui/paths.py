"""Where Quorum keeps its config, data and caches (platformdirs, overridable by env)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "quorum"


def _dir(env: str, default: str) -> Path:
    value = os.environ.get(env)
    path = Path(value) if value else Path(default)
    return path


def config_dir() -> Path:
    """Config files: the cluster file and the keymap. QUORUM_CONFIG_DIR overrides."""
    return _dir("QUORUM_CONFIG_DIR", platformdirs.user_config_dir(APP))


def data_dir() -> Path:
    """Conversations and run logs. QUORUM_DATA_DIR overrides."""
    return _dir("QUORUM_DATA_DIR", platformdirs.user_data_dir(APP))


def cache_dir() -> Path:
    """Models, the workers' tensor cache, synthetic models. QUORUM_CACHE_DIR overrides."""
    return _dir("QUORUM_CACHE_DIR", platformdirs.user_cache_dir(APP))


def ensure(path: Path) -> Path:
    """Create a directory (and parents) if needed and return it."""
    path.mkdir(parents=True, exist_ok=True)
    return path
