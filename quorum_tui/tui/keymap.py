"""The keymap file: binding id -> keys, read from the config dir and applied with set_keymap."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from quorum_tui import paths
from quorum_tui.errors import QuorumError

KEYMAP_FILE = "keymap.toml"


def keymap_path() -> Path:
    return paths.config_dir() / KEYMAP_FILE


def load_keymap(path: Path | None = None) -> dict[str, str]:
    """Read `[keymap]` (or top-level) `"binding.id" = "keys"` pairs; no file means no changes."""
    path = path or keymap_path()
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise QuorumError(f"cannot read the keymap {path}: {exc}; fix or delete it") from None
    table = data.get("keymap", data)
    if not isinstance(table, dict):
        raise QuorumError(f'{path}: [keymap] must be a table of binding id = "keys"')
    keymap: dict[str, str] = {}
    for binding_id, keys in table.items():
        if not isinstance(keys, str) or not keys.strip():
            raise QuorumError(
                f'{path}: {binding_id} = {keys!r}: give the keys as a string, like "ctrl+r" '
                'or "f5,ctrl+r"'
            )
        keymap[str(binding_id)] = keys.strip()
    return keymap


def unknown_ids(keymap: Mapping[str, str], known: set[str]) -> list[str]:
    return sorted(set(keymap) - known)
