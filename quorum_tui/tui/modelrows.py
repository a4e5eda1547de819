"""What the Models tab shows, computed from the models package (no Textual)."""

from __future__ import annotations

import contextlib
import logging

from quorum_tui import paths
from quorum_tui.engine.gguf_info import ModelInfo, inspect_model
from quorum_tui.engine.memory import whole_model_memory
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.errors import QuorumError
from quorum_tui.logs import logged
from quorum_tui.models import hub
from quorum_tui.models.cache import cached_models
from quorum_tui.models.preview import preview
from quorum_tui.models.resolve import SYNTHETIC_PREFIX, resolve_model
from quorum_tui.models.spec import ModelSpec, parse_spec
from quorum_tui.tui.session import model_label
from quorum_tui.units import human_bytes

log = logging.getLogger(__name__)

CachedRow = tuple[str, int, str]
"""(name, bytes, spec to load it)."""


def cached_rows() -> list[CachedRow]:
    """Pulled models (by their spec) and generated synthetic ones (by path)."""
    rows: list[CachedRow] = []
    with logged(log, "listing the cached models", QuorumError, OSError):
        rows += [(m.name, m.size, m.name) for m in cached_models(describe=False)]
    synthetic = paths.cache_dir() / "synthetic"
    for path in sorted(synthetic.glob("*.gguf")) if synthetic.is_dir() else []:
        with contextlib.suppress(OSError):
            rows.append((path.stem, path.stat().st_size, str(path)))
    return rows


def spec_of(text: str) -> ModelSpec:
    return parse_spec(text, hub.hub_hosts())


def describe_spec(text: str) -> tuple[ModelInfo, bool]:
    """The model's header (from the cache, the file, or read remotely) and whether it is local."""
    if text.startswith(SYNTHETIC_PREFIX):
        return inspect_model(resolve_model(text)), True
    found = preview(text, spec_of(text))
    return found.info, found.cached


def preview_text(text: str, settings: EngineSettings, free: list[int | None]) -> str:
    """Layers, size, memory need against the cluster's free memory (the coordinator's first),
    whether this machine alone would do, and where the file is."""
    info, local = describe_spec(text)
    need = whole_model_memory(info, settings.ctx, settings.slots).total
    known = [f for f in free if f is not None]
    have = sum(known)
    if not known:
        verdict = "free memory unknown"
    elif free[0] is not None and need <= free[0]:
        have = free[0]
        verdict = "[green]fits on this machine alone[/]: sharding is not needed for it"
    elif need <= have:
        verdict = "[green]fits the current cluster[/] (not this machine alone)"
    else:
        verdict = (
            f"[b red]does NOT fit the current cluster[/] (short by {human_bytes(need - have)})"
        )
    where = "in the cache" if local else "not downloaded yet: Download fetches it"
    context = f"context {settings.ctx} x {settings.slots} slots"
    return (
        f"[b]{model_label(info)}[/]\n"
        f"{info.n_layers} layers, file {human_bytes(info.file_bytes)}, {where}\n"
        f"needs about {human_bytes(need)} at {context}; {human_bytes(have)} free: {verdict}"
    )
