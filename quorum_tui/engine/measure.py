"""Measure what the planner needs: each stage's speed on this model's layers, each link, memory.

- Links, in this process (pure Python over the RPC protocol, like engine.probe): the round
  trip is the median of DEVICE_COUNT calls on one connection; the bandwidth is timed by
  sending SET_TENSOR messages of two sizes that the worker reads in full and then rejects
  (their tensor names no buffer), so the difference in time is the transfer of the extra
  bytes over the same path the weights and activations take.
- Stages, in a child process (`python -m quorum_tui.engine.measure`, started like the
  coordinator): a synthetic model with this model's layer shape (width, feed-forward, heads,
  weight type) and 1, 2, 4, ... layers (the largest holding at least MEASURE_BYTES, so that
  it streams its weights from memory like a real stage) is loaded with all its layers on one
  stage, for every stage, and single tokens are decoded through it, interleaved in short
  rounds. Each count's time less the fixed costs is the stage's compute curve, and the slope
  at the large end its time per layer beyond; for a worker, the rise of the intercept over
  the coordinator's is its per-token overhead (round trip and RPC calls), never below the
  measured round trip.
- Memory: the probe's free memory, or a cap given by the user.

A worker serves one client at a time: the link measurements close their connection before the
child starts, and nothing here runs while a coordinator uses the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import socket
import statistics
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from quorum_tui import paths
from quorum_tui.engine.coordinator import Job
from quorum_tui.engine.endpoint import parse_endpoint
from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.planner import INF, ClusterProfile, Explanation, StageProfile, solve
from quorum_tui.engine.probe import (
    CMD_DEVICE_COUNT,
    CMD_HELLO,
    HELLO_REPLY_BYTES,
    HELLO_REQUEST_BYTES,
    ConnectionClosed,
    call,
)
from quorum_tui.engine.supervisor import CoordinatorProcess, preflight
from quorum_tui.engine.synthetic import SyntheticSpec, synthetic_model
from quorum_tui.errors import QuorumError

CMD_SET_TENSOR = 6
SET_TENSOR_HEADER = 512
"""More than an rpc_tensor plus cache flag and offset; all zero, so no buffer is named."""
MEASURE_BYTES = 128 << 20
"""The larger measuring model holds at least this much (when the model has that many layers):
a model small enough to stay in the CPU's caches runs several times faster per layer than
one that streams its weights from memory, as every real stage does."""
STAGE_QUANTILE = 0.25
"""Stage speeds come from this quantile of the per-token times: on a shared machine the
median mixes in other processes' load, which differs from trial to trial more than the
stages' own speeds do; a low quantile is the stage's speed when it gets the CPU."""
DTYPE_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}
PROMPT = "the quorum of workers"
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


# --- the child -----------------------------------------------------------------------------


@dataclass
class MeasureJob(Job):
    """Trials to time in one child, interleaved over `repeats` rounds of `n_predict` tokens.

    Short rounds interleave finely: on a shared machine the load changes within seconds, and
    each trial should see the same mix of it.
    """

    trials: list[dict[str, Any]] = field(default_factory=list)
    repeats: int = 1
    keep_loaded: bool = True


@dataclass(frozen=True)
class Trial:
    """One configuration to time.

    `workers` names the workers the plan uses, in plan order (a subset of the child's
    workers; None is all of them in their order). `counts` is the plan's split, coordinator
    first; None asks llama.cpp for its own memory-proportional split over those workers.
    """

    label: str
    model: str
    counts: list[int] | None
    workers: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "model": self.model,
            "counts": self.counts,
            "workers": self.workers,
        }


@dataclass
class TrialResult:
    trial: Trial
    per_token_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    realized: list[int] | None = None
    mismatch: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Median seconds per generated token, over every token of every round."""
        return statistics.median(self.per_token_s) if self.per_token_s else float("inf")

    @property
    def tokens_per_s(self) -> float:
        return 1.0 / self.seconds if self.per_token_s else 0.0

    def quick(self, fraction: float = STAGE_QUANTILE) -> float:
        """Seconds per token at a low quantile: the speed when the machine lets it run."""
        if not self.per_token_s:
            return float("inf")
        ordered = sorted(self.per_token_s)
        return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]

    @property
    def ttft(self) -> float:
        return statistics.median(self.ttft_s) if self.ttft_s else float("inf")


def _child_main() -> int:
    from quorum_tui.engine import coordinator as co

    co._die_with_parent()
    events = co._events_channel()
    try:
        job = MeasureJob.from_json(sys.stdin.read())
        assert isinstance(job, MeasureJob)
        capture = co.LogCapture()
        _child_run(job, events, capture)
    except QuorumError as exc:
        events.emit("error", kind="input", message=str(exc))
        return co.EXIT_ERROR
    except Exception as exc:
        events.emit("error", kind="internal", message=f"{type(exc).__name__}: {exc}")
        return co.EXIT_ERROR
    return 0


def _child_run(job: MeasureJob, events: Any, capture: Any) -> None:
    from quorum_tui.engine import ggml

    for worker in job.workers:
        ggml.add_rpc_server(worker.endpoint)
    devices = _worker_devices(job)
    loaded: dict[int, Any] = {}
    for repeat in range(job.repeats):
        for index, data in enumerate(job.trials):
            trial = Trial(**data)
            llm = loaded.get(index)
            if llm is None:
                llm = _load_trial(job, trial, devices, index, events, capture)
            times, ttft = _time_decode(llm, job.n_predict)
            events.emit("trial", index=index, repeat=repeat, per_token_s=times, ttft_s=ttft)
            if job.keep_loaded:
                loaded[index] = llm
            else:
                llm.close()


def _worker_devices(job: MeasureJob) -> list[list[int]]:
    """The ggml device handles of each worker, in the order the workers were registered."""
    from quorum_tui.engine import ggml

    lib = ggml.lib()
    by_name = {}
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        by_name[(lib.ggml_backend_dev_name(dev) or b"").decode()] = int(dev)
    counts = job.device_counts or [1] * len(job.workers)
    out = []
    first = 0
    for count in counts:
        out.append([by_name[f"RPC{first + k}"] for k in range(count)])
        first += count
    return out


def _load_trial(
    job: MeasureJob, trial: Trial, devices: list[list[int]], index: int, events: Any, capture: Any
) -> Any:
    import llama_cpp

    from quorum_tui.engine.gguf_info import inspect_model
    from quorum_tui.engine.loadlog import device_stage, differences, layer_devices

    n_layers = inspect_model(trial.model).n_layers
    position = {w.name: i for i, w in enumerate(job.workers)}
    names = trial.workers if trial.workers is not None else list(position)
    unknown = [n for n in names if n not in position]
    if unknown:
        raise QuorumError(f"trial {trial.label} names unknown workers {unknown}")
    order = [position[n] for n in names]
    refs = [job.workers[i] for i in order]
    counts = job.device_counts or [1] * len(job.workers)
    plan = None
    if trial.counts is None:
        n_gpu, split = n_layers + 1, None
    else:
        plan = LayerPlan.from_counts(n_layers, trial.counts, refs)
        params = plan.to_llama_params([counts[i] for i in order])
        n_gpu, split = params.n_gpu_layers, list(params.tensor_split) or None
    handles = [h for i in order for h in devices[i]]
    before = len(capture.snapshot())
    with _only_devices(handles):
        llm = llama_cpp.Llama(
            model_path=trial.model,
            n_gpu_layers=n_gpu,
            split_mode=1,
            tensor_split=split,
            n_ctx=job.ctx,
            seed=job.seed,
            flash_attn=True,
            n_threads=job.threads or None,
            verbose=True,
        )
    found = layer_devices(capture.snapshot()[before:])
    missing = [il for il in range(n_layers + 1) if il not in found]
    if missing:
        raise QuorumError(f"llama.cpp's load log does not say where layers {missing[:5]} went")
    realized = []
    for il in range(n_layers + 1):
        stage = device_stage(found[il], job.workers, job.device_counts)
        realized.append(0 if stage == 0 else order.index(stage - 1) + 1)
    wrong = differences(plan, realized) if plan else []
    events.emit("loaded", index=index, realized=realized, mismatch=wrong)
    return llm


@contextlib.contextmanager
def _only_devices(handles: list[int]) -> Iterator[None]:
    """Make the next Llama() offload to exactly `handles`, in that order (llama_model_params)."""
    import llama_cpp.llama_cpp as api

    original = api.llama_model_default_params
    array = (ctypes.c_void_p * (len(handles) + 1))(*handles, None)

    def params() -> Any:
        value = original()
        value.devices = ctypes.cast(array, ctypes.c_void_p)
        return value

    api.llama_model_default_params = params
    try:
        yield
    finally:
        api.llama_model_default_params = original


def _time_decode(llm: Any, n_tokens: int) -> tuple[list[float], float]:
    """Seconds of each decoded token, and seconds to the first token (the prompt).

    The first single-token decode after the prompt builds a new graph (and sends it to the
    workers); it is left out of the per-token times, which measure the steady state.
    """
    tokens = llm.tokenize(PROMPT.encode(), add_bos=True, special=False)
    llm.reset()
    started = time.perf_counter()
    llm.eval(tokens)
    ttft = time.perf_counter() - started
    token = tokens[-1]
    llm.eval([token])
    times = []
    for _ in range(n_tokens):
        started = time.perf_counter()
        llm.eval([token])
        times.append(time.perf_counter() - started)
    return times, ttft


class MeasureProcess(CoordinatorProcess):
    module = "quorum_tui.engine.measure"


async def run_trials(
    workers: Sequence[WorkerRef],
    trials: Sequence[Trial],
    tokens: int = 32,
    repeats: int = 3,
    keep_loaded: bool = True,
    ctx: int = 256,
    threads: int = 0,
) -> list[TrialResult]:
    """Time every trial in one child (repeats interleaved); the workers must be idle."""
    results_probe = await preflight(list(workers))
    job = MeasureJob(
        model=trials[0].model if trials else "",
        workers=list(workers),
        counts=[],
        mode="measure",
        ctx=ctx,
        n_predict=tokens,
        threads=threads,
        device_counts=[len(r.devices) for r in results_probe] or None,
        trials=[t.to_json() for t in trials],
        repeats=repeats,
        keep_loaded=keep_loaded,
    )
    results = [TrialResult(t) for t in trials]
    proc = MeasureProcess(job)
    await proc.start()
    try:
        async for event in proc.events():
            if event["event"] == "loaded":
                result = results[event["index"]]
                result.realized = event["realized"]
                result.mismatch = event["mismatch"]
            elif event["event"] == "trial":
                result = results[event["index"]]
                result.per_token_s += event["per_token_s"]
                result.ttft_s.append(event["ttft_s"])
    finally:
        if proc.running:
            await proc.stop()
    if proc.returncode != 0:
        raise QuorumError(await proc.failure_reason())
    return results


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


def measuring_layers(info: ModelInfo) -> list[int]:
    """Layer counts of the measuring models: 1, 2, 4, ... up to one that outgrows the caches."""
    spec = shape_spec(info, 1).resolved()
    kv_width = spec.n_embd // spec.n_head * spec.n_head_kv
    params = 2 * spec.n_embd * (spec.n_embd + kv_width) + 3 * spec.n_embd * spec.n_ff
    layer = max(params * DTYPE_BYTES[spec.dtype], 1.0)
    many = min(max(info.n_layers, 2), max(2, math.ceil(MEASURE_BYTES / layer)))
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
    threads: int = 0,
    model_dir: Path | None = None,
) -> Measurement:
    """Measure every stage and link; return the planner's profile of the cluster.

    `memory_caps` maps worker endpoints to a memory limit used instead of the free memory
    the worker reports (a CPU worker reports its host's memory).
    """
    caps = memory_caps or {}
    probes = await preflight(list(workers))
    links = []
    for worker in workers:
        links.append(await asyncio.to_thread(measure_link, worker.endpoint))
    directory = model_dir or paths.ensure(paths.cache_dir() / "synthetic")
    sizes = measuring_layers(info)
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
    import psutil

    coordinator = _stage(
        "coordinator",
        None,
        sizes,
        seconds["coordinator"],
        base,
        scale,
        free=coordinator_memory
        if coordinator_memory is not None
        else int(psutil.virtual_memory().available),
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
    info: ModelInfo, workers: Sequence[WorkerRef], ctx: int, out: TextIO | None = None
) -> tuple[LayerPlan, Explanation]:
    """Measure the workers, solve, print the explanation; a model that fits nowhere is an error."""
    stream = out or sys.stderr
    print(f"measuring the coordinator and {len(workers)} worker(s)...", file=stream, flush=True)
    measured = await measure_cluster(info, workers)
    explanation = solve(info, ctx, measured.profile)
    if explanation.plan is None:
        raise QuorumError(" ".join(explanation.messages))
    for line in explanation.lines():
        print(line, file=stream)
    stream.flush()
    return explanation.plan, explanation


if __name__ == "__main__":
    sys.exit(_child_main())
