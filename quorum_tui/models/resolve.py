"""Turn what the user typed for a model into a local GGUF path."""

from __future__ import annotations

from pathlib import Path

from quorum_tui import paths
from quorum_tui.engine.synthetic import SyntheticSpec, synthetic_model
from quorum_tui.errors import QuorumError

SYNTHETIC_PREFIX = "synthetic:"


def parse_synthetic(text: str) -> SyntheticSpec:
    """`synthetic:layers=8,embd=128,dtype=f16` -> SyntheticSpec."""
    keys = {
        "layers": "n_layers",
        "embd": "n_embd",
        "ff": "n_ff",
        "heads": "n_head",
        "kv_heads": "n_head_kv",
        "vocab": "n_vocab",
        "ctx": "n_ctx",
        "dtype": "dtype",
        "seed": "seed",
    }
    values: dict[str, int | str] = {}
    body = text[len(SYNTHETIC_PREFIX) :]
    for part in filter(None, (p.strip() for p in body.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in keys:
            raise QuorumError(
                f"{text!r}: {part!r} is not one of {', '.join(k + '=' for k in keys)}"
            )
        if name == "dtype":
            values[keys[name]] = value
        else:
            try:
                values[keys[name]] = int(value)
            except ValueError:
                raise QuorumError(f"{text!r}: {name} must be a whole number") from None
    return SyntheticSpec(**values)  # type: ignore[arg-type]


def resolve_model(text: str) -> Path:
    """A local path, or `synthetic:...` generated into the cache on first use."""
    if text.startswith(SYNTHETIC_PREFIX):
        return synthetic_model(parse_synthetic(text), paths.cache_dir() / "synthetic")
    path = Path(text).expanduser()
    if path.exists():
        return path
    raise QuorumError(
        f"model {text!r} does not exist: give a path to a .gguf file, or "
        "synthetic:layers=N for a generated test model"
    )
