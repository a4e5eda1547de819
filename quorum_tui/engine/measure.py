"""Measure what the planner needs: each stage's speed on this model's layers, each link, memory.

- Links, in this process (pure Python over the RPC protocol, like engine.probe): the round
  trip is the median of DEVICE_COUNT calls on one connection; the bandwidth is timed by
  sending SET_TENSOR messages of two sizes that the worker reads in full and then rejects
  (their tensor names no buffer), so the difference in time is the transfer of the extra
  bytes over the same path the weights and activations take.
- Stages, in the trials child process (engine.trials), with the coordinator's threads: a
  synthetic model with this model's layer shape (width, feed-forward, heads,
  weight type) and 1, 2, 4, ... layers (the largest holding at least MEASURE_BYTES, so that
  it streams its weights from memory like a real stage) is loaded with all its layers on one
  stage, for every stage, and single tokens are decoded through it, interleaved in short
  rounds. Each count's time less the fixed costs is the stage's compute curve, and the slope
  at the large end its time per layer beyond; for a worker, the rise of the intercept over
  the coordinator's is its per-token overhead (round trip and RPC calls), never below the
  measured round trip.
- Memory: the probe's free memory (the lower of before and after the trials: a worker's tensor
  cache and allocator keep some of what the trials used), or a cap given by the user.

A worker serves one client at a time: the link measurements close their connection before the
child starts, and nothing here runs while a coordinator uses the workers.
"""

from __future__ import annotations

import asyncio
import math
import socket
import statistics
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from quorum_tui import paths
from quorum_tui.engine.endpoint import parse_endpoint
from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.memory import whole_model_memory
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.planner import (
    INF,
    ClusterProfile,
    Explanation,
    StageProfile,
    solve,
    with_draft,
)
from quorum_tui.engine.probe import (
    CMD_DEVICE_COUNT,
    CMD_HELLO,
    HELLO_REPLY_BYTES,
    HELLO_REQUEST_BYTES,
    ConnectionClosed,
    call,
)
from quorum_tui.engine.room import room
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.engine.supervisor import preflight
from quorum_tui.engine.synthetic import SyntheticSpec, synthetic_model
from quorum_tui.engine.trials import Trial, run_trials
from quorum_tui.errors import QuorumError

CMD_SET_TENSOR = 6
SET_TENSOR_HEADER = 512
"""More than an rpc_tensor plus cache flag and offset; all zero, so no buffer is named."""
MEASURE_BYTES = 128 << 20
"""The larger measuring model holds at least this much (when the model has that many layers):
a model small enough to stay in the CPU's caches runs several times faster per layer than
one that streams its weights from memory, as every real stage does."""
DTYPE_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}
MIN_LAYER_S = 1e-6
"""Floor of a measured time per layer: noise can make the 3-layer run no slower than the 1."""


# --- links -------------------------------------------------------------------------------


def _connect(endpoint: str, timeout: float) -> socket.socket:
    host, port = parse_endpoint(endpoint)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise QuorumError(f"cannot reach worker {endpoint}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    try:
        _request(sock, CMD_HELLO, bytes(HELLO_REQUEST_BYTES), HELLO_REPLY_BYTES)
    except (OSError, QuorumError):
        sock.close()
        raise QuorumError(
            f"worker {endpoint} did not answer HELLO: it is busy with a coordinator or is not "
            "a Quorum worker; stop what uses it and measure again"
        ) from None
    return sock


def _request(sock: socket.socket, cmd: int, payload: bytes, reply: int) -> bytes:
    try:
        return call(sock, cmd, payload, reply)
    except ConnectionClosed as exc:
        raise QuorumError(f"the worker closed the connection ({exc})") from None


def link_rtt(endpoint: str, samples: int = 20, timeout: float = 5.0) -> float:
    """Median seconds of a DEVICE_COUNT round trip on one connection."""
    sock = _connect(endpoint, timeout)
    try:
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            _request(sock, CMD_DEVICE_COUNT, b"", 4)
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        sock.close()


def _rejected_send(endpoint: str, size: int, timeout: float) -> float:
    """Seconds from sending a SET_TENSOR of `size` bytes until the worker closes on it."""
    sock = _connect(endpoint, timeout)
    try:
        payload = bytes(SET_TENSOR_HEADER + size)
        started = time.perf_counter()
        sock.sendall(struct.pack("<BQ", CMD_SET_TENSOR, len(payload)) + payload)
        while sock.recv(65536):
            pass
        return time.perf_counter() - started
    except OSError:
        return time.perf_counter() - started
    finally:
        sock.close()


def link_bandwidth(
    endpoint: str, large: int = 8 << 20, small: int = 64 << 10, repeats: int = 3
) -> float:
    """Bytes per second from the extra time a large message takes over a small one."""
    big = min(_rejected_send(endpoint, large, 30.0) for _ in range(repeats))
    little = min(_rejected_send(endpoint, small, 30.0) for _ in range(repeats))
    spent = max(big - little, 1e-6)
    return (large - small) / spent


@dataclass(frozen=True)
class Link:
    endpoint: str
    rtt_s: float
    bandwidth: float


def measure_link(endpoint: str) -> Link:
    return Link(endpoint, link_rtt(endpoint), link_bandwidth(endpoint))


# --- a whole cluster ---------------------------------------------------------------------


def shape_spec(info: ModelInfo, n_layers: int) -> SyntheticSpec:
    """A synthetic model with `info`'s layer shape and `n_layers` layers."""
    quant = info.quant.upper()
    dtype = "f32" if quant == "F32" else "f16" if quant in ("F16", "BF16") else "q8_0"
    n_ff = info.n_ff or 0
    if dtype == "q8_0" and (info.n_embd % 32 or n_ff % 32):
        dtype = "f16"
    return SyntheticSpec(
        n_layers=n_layers,
        n_embd=info.n_embd,
        n_ff=n_ff,
        n_head=info.n_head,
        n_head_kv=info.n_head_kv,
        n_vocab=512,
        n_ctx=512,
        dtype=dtype,
    )


def measuring_layers(info: ModelInfo, room: int | None = None) -> list[int]:
    """Layer counts of the measuring models: 1, 2, 4, ... up to one that outgrows the caches,
    and whose weights take at most half of `room` (the smallest stage's free memory): a
    measurement must never be what runs a capped host out of memory."""
    spec = shape_spec(info, 1).resolved()
    kv_width = spec.n_embd // spec.n_head * spec.n_head_kv
    params = 2 * spec.n_embd * (spec.n_embd + kv_width) + 3 * spec.n_embd * spec.n_ff
    layer = max(params * DTYPE_BYTES[spec.dtype], 1.0)
    many = min(max(info.n_layers, 2), max(2, math.ceil(MEASURE_BYTES / layer)))
    if room is not None:
        many = max(1, min(many, int(room / 2 / layer)))
    if many == 1:
        return [1]
    counts = [1]
    while counts[-1] * 2 < many:
        counts.append(counts[-1] * 2)
    return [*counts, many]


def _monotone(points: list[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
    out = []
    top = 0.0
    for x, y in points:
        top = max(top, y)
        out.append((x, top))
    return tuple(out)


@dataclass(frozen=True)
class Measurement:
    """A cluster profile plus what it was computed from."""

    profile: ClusterProfile
    links: tuple[Link, ...]
    stage_seconds: dict[str, list[float]]
    scale: float

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile.to_json(),
            "links": [
                {"endpoint": link.endpoint, "rtt_s": link.rtt_s, "bandwidth": link.bandwidth}
                for link in self.links
            ],
            "stage_seconds": self.stage_seconds,
            "layer_scale": self.scale,
        }


async def measure_cluster(
    info: ModelInfo,
    workers: Sequence[WorkerRef],
    memory_caps: dict[str, int] | None = None,
    coordinator_memory: int | None = None,
    tokens: int = 4,
    repeats: int = 12,
    threads: int = 1,
    model_dir: Path | None = None,
) -> Measurement:
    """Measure every stage and link; return the planner's profile of the cluster.

    `memory_caps` maps worker endpoints to a memory limit used instead of the free memory
    the worker reports, and `coordinator_memory` limits the coordinator's share; both bound
    the plan. The measuring models are sized by the rooms the hosts really have.
    """
    caps = memory_caps or {}
    probes = await preflight(list(workers))
    links = []
    for worker in workers:
        links.append(await asyncio.to_thread(measure_link, worker.endpoint))
    directory = model_dir or paths.ensure(paths.cache_dir() / "synthetic")
    sizes = measuring_layers(info, min([room().free, *(p.free for p in probes)]))
    models = [synthetic_model(shape_spec(info, k), directory) for k in sizes]
    stages = ["coordinator", *(w.name for w in workers)]
    trials = []
    for index, name in enumerate(stages):
        for path, layers in zip(models, sizes, strict=True):
            counts, used = ([layers], []) if index == 0 else ([0, layers], [name])
            trials.append(Trial(f"{name}:{layers}", str(path), counts, used))
    results = await run_trials(workers, trials, tokens, repeats, threads=threads)
    for r in results:
        if r.mismatch:
            raise QuorumError(f"measuring {r.trial.label}: {'; '.join(r.mismatch)}")
    after = await preflight(list(workers))
    probes = [min(a, b, key=lambda p: p.free) for a, b in zip(probes, after, strict=True)]
    from quorum_tui.engine.gguf_info import inspect_model

    shape_bytes = inspect_model(models[-1]).layer_bytes[0]
    real_bytes = sum(info.layer_bytes) / max(info.n_layers, 1)
    scale = real_bytes / shape_bytes if shape_bytes else 1.0
    seconds: dict[str, list[float]] = {}
    for index, name in enumerate(stages):
        row = results[index * len(sizes) : (index + 1) * len(sizes)]
        seconds[name] = [r.quick() for r in row]
    stage_fits = [_fit(sizes, seconds[name]) for name in stages]
    base = stage_fits[0][1]
    coordinator = _stage(
        "coordinator",
        None,
        sizes,
        seconds["coordinator"],
        base,
        scale,
        free=coordinator_memory if coordinator_memory is not None else room().free,
    )
    profiles = []
    for worker, link, probe_result, (_, intercept) in zip(
        workers, links, probes, stage_fits[1:], strict=True
    ):
        fixed = max(intercept - base, link.rtt_s)
        free = caps.get(worker.endpoint, probe_result.free)
        stage = _stage(
            worker.name, worker.endpoint, sizes, seconds[worker.name], base + fixed, scale, free
        )
        profiles.append(replace(stage, fixed_s=fixed, bandwidth=link.bandwidth))
    return Measurement(ClusterProfile(coordinator, tuple(profiles)), tuple(links), seconds, scale)


def _fit(sizes: list[int], times: list[float]) -> tuple[float, float]:
    """(time per layer at the large end, intercept from the two smallest counts)."""
    if len(sizes) < 2:
        return max(times[0] / sizes[0], MIN_LAYER_S), 0.0
    slope = max((times[-1] - times[-2]) / (sizes[-1] - sizes[-2]), MIN_LAYER_S)
    first = (times[1] - times[0]) / (sizes[1] - sizes[0])
    return slope, max(times[0] - sizes[0] * first, 0.0)


def _stage(
    name: str,
    endpoint: str | None,
    sizes: list[int],
    times: list[float],
    overhead: float,
    scale: float,
    free: int | None,
) -> StageProfile:
    """A stage's profile: its compute curve is each count's time less the fixed costs."""
    slope, intercept = _fit(sizes, times)
    curve = _monotone(
        [(k, max(t - overhead, 0.0) * scale) for k, t in zip(sizes, times, strict=True)]
    )
    return StageProfile(name, endpoint, slope * scale, intercept, INF, free, curve)


async def auto_plan(
    info: ModelInfo,
    workers: Sequence[WorkerRef],
    settings: EngineSettings,
    threads: int,
    draft: ModelInfo | None = None,
    cached: dict[str, tuple[int, ...]] | None = None,
    keep: Sequence[LayerPlan] = (),
) -> Explanation:
    """Measure the stages with the coordinator's `threads` and solve for `settings`' memory
    (a draft model takes its share of the coordinator's); a model that fits nowhere is an
    error. With a draft, the prediction counts the draft's compute too. `cached` (bytes per
    layer in each worker's tensor cache, by endpoint) prices each plan's load, and a plan of
    `keep` whose layers are cached wins when it is nearly as fast (planner.prefer_cached)."""
    measured = await measure_cluster(info, workers, threads=threads)
    profile = measured.profile
    if cached:
        with_cache = [replace(w, cached=cached.get(w.endpoint or "", ())) for w in profile.workers]
        profile = replace(profile, workers=tuple(with_cache))
    if draft is not None and profile.coordinator.free is not None:
        need = whole_model_memory(draft, settings.ctx, settings.slots).total
        coordinator = replace(profile.coordinator, free=max(profile.coordinator.free - need, 0))
        profile = replace(profile, coordinator=coordinator)
    explanation = solve(info, settings.ctx, profile, settings.slots, keep)
    if explanation.plan is None:
        raise QuorumError(" ".join(explanation.messages))
    return with_draft(explanation, profile, info, draft) if draft else explanation
