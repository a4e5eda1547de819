"""Turn what the user typed for a model into a local GGUF path."""

from __future__ import annotations

from pathlib import Path

from quorum_tui import paths
from quorum_tui.engine.synthetic import SyntheticSpec, synthetic_model
from quorum_tui.errors import QuorumError
from quorum_tui.models import hub
from quorum_tui.models.download import ProgressCallback
from quorum_tui.models.progress import ProgressLine
from quorum_tui.models.pull import cached_paths, pull
from quorum_tui.models.spec import LocalSpec, no_such_model, parse_spec

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


def resolve_model(text: str, on_progress: ProgressCallback | None = None) -> Path:
    """A local path for a path, `synthetic:...`, a Hub/URL spec or a registry model's name.

    `synthetic:...` is generated into the cache on first use. A spec already in the cache
    resolves without touching the network; otherwise it is pulled, reporting to `on_progress`
    (a progress line on stderr when not given). The path returned is the first part of a
    split model; llama.cpp finds the other parts beside it.
    """
    if text.startswith(SYNTHETIC_PREFIX):
        return synthetic_model(parse_synthetic(text), paths.cache_dir() / "synthetic")
    spec = parse_spec(text, hub.hub_hosts())
    if isinstance(spec, LocalSpec):
        if spec.path.exists():
            return spec.path
        raise no_such_model(text)
    found = cached_paths(spec)
    if found:
        return found[0]
    return pull(text, spec, on_progress or ProgressLine()).path
