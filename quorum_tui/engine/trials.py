"""Time configurations of the stages side by side, in one child process.

The planner's measurements and `quorum bench plan` compare many placements of small models
on the same workers. A worker serves one client at a time, so they cannot each have a
llama-server: one child (`python -m quorum_tui.engine.trials`) registers the workers once,
loads every trial with its own devices and split (`llama_model_params.devices`), and decodes
single tokens through each in interleaved rounds, so every trial sees the same mix of the
machine's load. It is built from the same libraries as llama-server and runs with the threads
the coordinator would use. Events come back as typed JSON lines on the child's stdout;
llama.cpp's log goes to a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from quorum_tui.engine.exits import describe_exit
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.supervisor import new_log_path, preflight
from quorum_tui.errors import QuorumError

PROMPT = "the quorum of workers"
STAGE_QUANTILE = 0.25
"""Stage speeds come from this quantile of the per-token times: on a shared machine the
median mixes in other processes' load, which differs from trial to trial more than the
stages' own speeds do; a low quantile is the stage's speed when it gets the CPU."""


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


@dataclass
class TrialJob:
    """What the child does: every trial over `repeats` rounds of `tokens` tokens each.

    Short rounds interleave finely: on a shared machine the load changes within seconds.
    """

    workers: list[WorkerRef]
    trials: list[Trial]
    tokens: int = 32
    repeats: int = 1
    ctx: int = 256
    threads: int = 1
    device_counts: list[int] | None = None
    keep_loaded: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrialJob:
        data = json.loads(text)
        data["workers"] = [WorkerRef(**w) for w in data["workers"]]
        data["trials"] = [Trial(**t) for t in data["trials"]]
        return cls(**data)


@dataclass(frozen=True)
class TrialLoaded:
    index: int
    realized: list[int]
    mismatch: list[str]


@dataclass(frozen=True)
class TrialTimed:
    index: int
    repeat: int
    per_token_s: list[float]
    ttft_s: float


@dataclass(frozen=True)
class TrialsFailed:
    message: str


ChildEvent = TrialLoaded | TrialTimed | TrialsFailed
_EVENTS: dict[str, type[ChildEvent]] = {
    "loaded": TrialLoaded,
    "timed": TrialTimed,
    "failed": TrialsFailed,
}


def encode(event: ChildEvent) -> str:
    kind = next(k for k, t in _EVENTS.items() if isinstance(event, t))
    return json.dumps({"event": kind, **asdict(event)})


def decode(line: bytes | str) -> ChildEvent | None:
    try:
        data = json.loads(line)
        kind = _EVENTS[data.pop("event")]
        return kind(**data)
    except (ValueError, KeyError, TypeError):
        return None


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


async def run_trials(
    workers: Sequence[WorkerRef],
    trials: Sequence[Trial],
    tokens: int = 32,
    repeats: int = 3,
    keep_loaded: bool = True,
    ctx: int = 256,
    threads: int = 1,
) -> list[TrialResult]:
    """Time every trial in one child (repeats interleaved); the workers must be idle."""
    probes = await preflight(list(workers))
    job = TrialJob(
        list(workers),
        list(trials),
        tokens,
        repeats,
        ctx,
        threads,
        [len(r.devices) for r in probes] or None,
        keep_loaded,
    )
    results = [TrialResult(t) for t in trials]
    log_path = new_log_path("trials")
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=dict(os.environ, GGML_NO_BACKTRACE="1"),
            limit=1 << 20,
        )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    failed: str | None = None
    try:
        proc.stdin.write(job.to_json().encode())
        await proc.stdin.drain()
        proc.stdin.close()
        async for line in proc.stdout:
            event = decode(line)
            if isinstance(event, TrialLoaded):
                results[event.index].realized = event.realized
                results[event.index].mismatch = event.mismatch
            elif isinstance(event, TrialTimed):
                results[event.index].per_token_s += event.per_token_s
                results[event.index].ttft_s.append(event.ttft_s)
            elif isinstance(event, TrialsFailed):
                failed = event.message
        await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if failed or proc.returncode != 0:
        raise QuorumError(failed or await _crash_reason(workers, proc.returncode, log_path))
    return results


async def _crash_reason(workers: Sequence[WorkerRef], code: int | None, log: Any) -> str:
    from quorum_tui.engine.probe import probe_all

    results = await probe_all([w.endpoint for w in workers], timeout=2.0)
    dead = [
        f"worker {w.name} ({w.endpoint}) is {r.status}: {r.reason}"
        for w, r in zip(workers, results, strict=True)
        if r.status in ("unreachable", "incompatible")
    ]
    if dead:
        return "the measurement stopped because " + "; ".join(dead)
    return describe_exit("the measurement (a child process)", code, log)


# --- the child ----------------------------------------------------------------------------


class LogCapture:
    """llama.cpp's log callback: every line to stderr, and kept for parsing."""

    def __init__(self) -> None:
        import llama_cpp

        self.lines: list[str] = []
        self._partial = ""
        self._lock = threading.Lock()

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            chunk = text.decode("utf-8", errors="replace")
            sys.stderr.write(chunk)
            with self._lock:
                *complete, self._partial = (self._partial + chunk).split("\n")
                self.lines.extend(complete)

        self._callback = callback
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))

    def snapshot(self) -> list[str]:
        with self._lock:
            return [*self.lines, self._partial]


def _child_main() -> int:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # die with the parent
    sys.stdout.flush()
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # native code writing to stdout lands in the log

    def emit(event: ChildEvent) -> None:
        events.write(encode(event) + "\n")

    try:
        _child_run(TrialJob.from_json(sys.stdin.read()), emit)
    except Exception as exc:
        text = str(exc) if isinstance(exc, QuorumError) else f"{type(exc).__name__}: {exc}"
        emit(TrialsFailed(text))
        return 2
    return 0


def _child_run(job: TrialJob, emit: Any) -> None:
    from quorum_tui.engine import ggml

    capture = LogCapture()
    for worker in job.workers:
        ggml.add_rpc_server(worker.endpoint)
    devices = _worker_devices(job)
    loaded: dict[int, Any] = {}
    for repeat in range(job.repeats):
        for index, trial in enumerate(job.trials):
            llm = loaded.get(index) or _load_trial(job, trial, devices, index, emit, capture)
            times, ttft = _time_decode(llm, job.tokens)
            emit(TrialTimed(index, repeat, times, ttft))
            if job.keep_loaded:
                loaded[index] = llm
            else:
                llm.close()


def _worker_devices(job: TrialJob) -> list[list[int]]:
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
    job: TrialJob, trial: Trial, devices: list[list[int]], index: int, emit: Any, capture: Any
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
            flash_attn=True,
            n_threads=job.threads,
            n_threads_batch=job.threads,
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
    emit(TrialLoaded(index, realized, differences(plan, realized) if plan else []))
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


if __name__ == "__main__":
    sys.exit(_child_main())
