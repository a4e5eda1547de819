"""The coordinator process: registers RPC workers, loads the model with a plan, generates.

Run as `python -m quorum_tui.engine.coordinator` with a JSON job on stdin. It writes one JSON
event per line on stdout; llama.cpp's own output goes to stderr, which the supervisor sends
to a log file. llama.cpp aborts the whole process when a worker fails, which is why this code
runs only here, never in the process the user is looking at.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from quorum_tui.engine.loadlog import differences, realized_assignment
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.errors import QuorumError

QUORUM_ROUTE = "/quorum/plan"
EXIT_MISMATCH = 3
EXIT_ERROR = 2


@dataclass
class Job:
    """What the coordinator is asked to do."""

    model: str
    workers: list[WorkerRef]
    counts: list[int]
    mode: str = "run"
    ctx: int = 2048
    prompt: str = ""
    n_predict: int = 64
    temp: float = 0.0
    seed: int = 0
    threads: int = 0
    host: str = "127.0.0.1"
    port: int = 8080
    alias: str = ""
    device_counts: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        data["workers"] = [WorkerRef(**w) for w in data["workers"]]
        return cls(**data)


class LogCapture:
    """llama.cpp's log callback: every line to stderr, and kept for parsing."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._partial = ""
        self._lock = threading.Lock()
        import llama_cpp

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            chunk = text.decode("utf-8", errors="replace")
            sys.stderr.write(chunk)
            with self._lock:
                data = self._partial + chunk
                *complete, self._partial = data.split("\n")
                self.lines.extend(complete)

        self._callback = callback
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))

    def snapshot(self) -> list[str]:
        with self._lock:
            return [*self.lines, self._partial]


class Events:
    """JSON lines to the supervisor on a private copy of stdout."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def emit(self, event: str, **data: Any) -> None:
        with self._lock:
            self.stream.write(json.dumps({"event": event, **data}) + "\n")
            self.stream.flush()


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the supervisor dies, so no coordinator is orphaned."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _events_channel() -> Events:
    """Keep fd 1 for events only; native code writing to stdout lands in stderr instead."""
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    return Events(os.fdopen(events_fd, "w", buffering=1))


def load(job: Job, events: Events, capture: LogCapture) -> tuple[Any, LayerPlan, float]:
    """Register the workers and load the model; check the realized assignment."""
    from quorum_tui.engine import ggml

    plan = LayerPlan.from_counts(_n_layers(job), job.counts, job.workers)
    params = plan.to_llama_params(job.device_counts)
    for endpoint in params.devices:
        ggml.add_rpc_server(endpoint)
    events.emit("loading", params=asdict(params))
    started = time.perf_counter()
    if job.mode == "serve":
        model = _create_app(job, params)
    else:
        import llama_cpp

        model = llama_cpp.Llama(
            model_path=job.model,
            n_gpu_layers=params.n_gpu_layers,
            split_mode=params.split_mode,
            tensor_split=list(params.tensor_split) or None,
            n_ctx=job.ctx,
            seed=job.seed,
            flash_attn=True,
            n_threads=job.threads or None,
            verbose=True,
        )
    load_s = time.perf_counter() - started
    realized = realized_assignment(
        capture.snapshot(), plan.n_layers, job.workers, job.device_counts
    )
    wrong = differences(plan, realized)
    events.emit("loaded", realized=realized, planned=plan.assignment(), load_s=load_s)
    if wrong:
        raise _Mismatch("; ".join(wrong))
    return model, plan, load_s


class _Mismatch(Exception):
    pass


def _n_layers(job: Job) -> int:
    return sum(job.counts)


def generate(job: Job, llm: Any, events: Events) -> None:
    """Greedy or sampled generation, one event per token."""
    import llama_cpp

    prompt = llm.tokenize(job.prompt.encode("utf-8"), add_bos=True, special=False)
    events.emit("prompt", tokens=len(prompt))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    started = time.perf_counter()
    first = last = started
    count = 0
    for token in llm.generate(prompt, temp=job.temp, top_k=40, top_p=0.95, reset=True):
        now = time.perf_counter()
        if count == 0:
            first = now
        last = now
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        count += 1
        text = decoder.decode(llm.detokenize([token]))
        events.emit("token", id=int(token), text=text)
        if count >= job.n_predict:
            break
    tail = decoder.decode(b"", final=True)
    if tail:
        events.emit("token", id=-1, text=tail)
    decode_s = last - first
    events.emit(
        "done",
        prompt_tokens=len(prompt),
        completion_tokens=count,
        ttft_s=first - started,
        tokens_per_s=(count - 1) / decode_s if count > 1 and decode_s > 0 else 0.0,
    )


def _create_app(job: Job, params: Any) -> Any:
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model_settings = ModelSettings(
        model=job.model,
        model_alias=job.alias or os.path.basename(job.model),
        n_gpu_layers=params.n_gpu_layers,
        split_mode=params.split_mode,
        tensor_split=list(params.tensor_split) or None,
        n_ctx=job.ctx,
        seed=job.seed,
        flash_attn=True,
        n_threads=job.threads or max(os.cpu_count() or 1, 1),
        verbose=True,
    )
    server_settings = ServerSettings(host=job.host, port=job.port)
    return create_app(server_settings=server_settings, model_settings=[model_settings])


def serve(
    job: Job, app: Any, plan: LayerPlan, realized: list[int], load_s: float, events: Events
) -> None:
    import uvicorn

    names = [s.name for s in plan.stages]
    body = {
        "model": job.model,
        "stages": [
            {
                "name": s.name,
                "endpoint": s.endpoint,
                "layers": [s.first, s.last] if s.count else None,
            }
            for s in plan.stages
        ],
        "output_stage": plan.output_stage,
        "planned": plan.assignment(),
        "realized": realized,
        "realized_by_name": [names[i] for i in realized],
        "load_s": load_s,
    }

    @app.get(QUORUM_ROUTE)
    def quorum_plan() -> dict[str, Any]:
        return body

    config = uvicorn.Config(app, host=job.host, port=job.port, log_level="warning")
    server = uvicorn.Server(config)
    started = threading.Event()

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            events.emit("ready", url=f"http://{job.host}:{job.port}/v1")
            started.set()

    threading.Thread(target=announce, daemon=True).start()
    server.run()
    if not started.is_set():
        raise QuorumError(f"could not serve on {job.host}:{job.port}: the port is probably in use")


def main() -> int:
    _die_with_parent()
    events = _events_channel()
    try:
        job = Job.from_json(sys.stdin.read())
        capture = LogCapture()
        model, plan, load_s = load(job, events, capture)
        if job.mode == "serve":
            serve(job, model, plan, plan.assignment(), load_s, events)
        else:
            generate(job, model, events)
    except _Mismatch as exc:
        events.emit("error", kind="mismatch", message=f"llama.cpp did not load the plan: {exc}")
        return EXIT_MISMATCH
    except QuorumError as exc:
        events.emit("error", kind="input", message=str(exc))
        return EXIT_ERROR
    except Exception as exc:
        events.emit("error", kind="internal", message=f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)  # llama.cpp's global teardown can crash after RPC use; nothing is left to free
