"""What the Models tab shows, computed from the models package (no Textual)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from quorum_tui import paths
from quorum_tui.engine.gguf_info import ModelInfo, inspect_model
from quorum_tui.engine.memory import whole_model_memory
from quorum_tui.errors import QuorumError
from quorum_tui.models import hub
from quorum_tui.models.cache import cached_models
from quorum_tui.models.download import Progress
from quorum_tui.models.preview import preview
from quorum_tui.models.resolve import SYNTHETIC_PREFIX, resolve_model
from quorum_tui.models.spec import ModelSpec, parse_spec
from quorum_tui.tui.session import model_label
from quorum_tui.units import human_bytes, human_duration, human_rate

CachedRow = tuple[str, int, str]
"""(name, bytes, spec to load it)."""


def cached_rows() -> list[CachedRow]:
    """Pulled models (by their spec) and generated synthetic ones (by path)."""
    rows: list[CachedRow] = []
    with contextlib.suppress(QuorumError, OSError):
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


def preview_text(text: str, ctx: int, free: list[int | None]) -> str:
    """Layers, size, memory need against the cluster's free memory, and where it is."""
    info, local = describe_spec(text)
    need = whole_model_memory(info, ctx).total
    known = [f for f in free if f is not None]
    have = sum(known)
    if not known:
        verdict = "free memory unknown"
    elif need <= have:
        verdict = "[green]fits the current cluster[/]"
    else:
        verdict = (
            f"[b red]does NOT fit the current cluster[/] (short by {human_bytes(need - have)})"
        )
    where = "in the cache" if local else "not downloaded yet: Download fetches it"
    return (
        f"[b]{model_label(info)}[/]\n"
        f"{info.n_layers} layers, file {human_bytes(info.file_bytes)}, {where}\n"
        f"needs about {human_bytes(need)} at context {ctx}; {human_bytes(have)} free: {verdict}"
    )


def progress_text(p: Progress) -> str:
    """One line about a download: file, bytes, rate and time left."""
    of = f" of {human_bytes(p.total)}" if p.total else ""
    file = f"{p.name} ({p.index}/{p.count})" if p.count > 1 else p.name
    if p.phase == "hash":
        return f"checking the partial download of {file}: {human_bytes(p.done)}{of}"
    if p.phase == "verify":
        return f"verifying {file}"
    eta = f", {human_duration(p.eta)} left" if p.eta is not None else ""
    resumed = f", resumed at {human_bytes(p.resumed_from)}" if p.resumed_from else ""
    return f"{file}: {human_bytes(p.done)}{of} at {human_rate(p.rate)}{eta}{resumed}"


def is_path(text: str) -> bool:
    return Path(text).expanduser().exists()
