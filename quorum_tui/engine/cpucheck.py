"""Which CPU backend of the build really runs on this machine, proven by running it.

CPUID can claim what the CPU does not do: one cloud VM lists AMX, its kernel grants the tile
permission, and the first tile instruction still dies of SIGILL. So no variant is trusted on
its score alone. Each is tried, best score first, in a child process that runs its
matrix-multiply kernels on the weight types models use, in every buffer layout llama.cpp would
give them (plain, repacked, AMX); a child that dies by a signal, fails or computes nonsense
refuses its variant, and the first that passes is used by the workers and the coordinator.

The verdict is cached with the build, per CPU. `QUORUM_CPU_REFUSE=haswell,...` makes the
named variants' checks die of a real SIGILL, so the fallback runs on any machine (tests).
The child side uses the standard library only: worker hosts run it before their worker starts.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quorum_tui.engine.exits import describe_exit, signal_name, signal_of
from quorum_tui.engine.llamabuild import LlamaBuild
from quorum_tui.errors import QuorumError

REFUSE_ENV = "QUORUM_CPU_REFUSE"
CHECK_TIMEOUT = 60.0
K, N, ROWS = 256, 64, (1, 32)
"""Weights of N rows of K (K-quants need multiples of 256, AMX 32 output rows); activations
of one row (a decode step) and of 32 (a prompt)."""
TYPES = {"f16": 1, "bf16": 30, "q4_0": 2, "q4_1": 3, "q8_0": 8, "q4_K": 12, "q5_K": 13,
         "q6_K": 14, "iq4_nl": 20}  # fmt: skip
TOLERANCE = 0.03
"""Largest difference from the plain layout's result, relative to its largest value."""


@dataclass(frozen=True)
class VariantResult:
    variant: str
    score: int
    status: str
    """passed, refused (died or failed), or unsupported (CPUID says no)."""
    detail: str = ""
    layouts: tuple[str, ...] = ()
    """The buffer layouts its kernels ran in (CPU, CPU_REPACK, AMX)."""


@dataclass(frozen=True)
class CpuVerdict:
    """The CPU backend this machine runs, and why the better-scoring ones were refused."""

    variant: str
    path: str
    layouts: tuple[str, ...]
    results: tuple[VariantResult, ...] = field(default_factory=tuple)

    @property
    def refused(self) -> list[VariantResult]:
        return [r for r in self.results if r.status == "refused"]

    def summary(self) -> str:
        """One line for reports and screens."""
        text = f"CPU kernels: {self.variant} ({', '.join(self.layouts)}), proven on this CPU"
        refused = self.refused
        if refused:
            text += "; refused: " + ", ".join(f"{r.variant} ({r.detail})" for r in refused)
        return text

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CpuVerdict:
        results = tuple(
            VariantResult(**{**r, "layouts": tuple(r.get("layouts", ()))})
            for r in data.get("results", [])  # type: ignore[attr-defined]
        )
        return cls(
            str(data["variant"]),
            str(data["path"]),
            tuple(data.get("layouts", ())),  # type: ignore[arg-type]
            results,
        )


def cpu_key() -> str:
    """What the verdict depends on besides the build: the CPU, the kernel, the test switch."""
    flags = model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = value.strip()
            elif key.strip() == "model name" and not model:
                model = value.strip()
    except OSError:
        pass
    text = "|".join([model, flags, platform.machine(), platform.release(), refused_by_env()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def refused_by_env() -> str:
    return ",".join(sorted(v for v in os.environ.get(REFUSE_ENV, "").split(",") if v))


def verdict_path(build: LlamaBuild) -> Path:
    """Where the verdict is cached: with the build, per CPU."""
    digest = hashlib.sha256(build.fingerprint().encode()).hexdigest()[:12]
    return build.state_dir() / f"cpu-{digest}-{cpu_key()}.json"


def cpu_verdict(
    build: LlamaBuild | None = None, fresh: bool = False, every: bool = False
) -> CpuVerdict:
    """The proven CPU backend of `build` (the installed one by default), cached; `fresh`
    checks again, `every` checks every variant CPUID allows, not only down to the first that
    passes."""
    build = build or LlamaBuild.installed()
    path = verdict_path(build)
    if not fresh:
        try:
            verdict = CpuVerdict.from_json(json.loads(path.read_text()))
            if Path(verdict.path).exists():
                return verdict
        except (OSError, ValueError, KeyError, TypeError):
            pass
    verdict = prove(build, every)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(verdict.to_json(), indent=1))
    os.replace(tmp, path)
    return verdict


def refuse_in_use(build: LlamaBuild, variant: str, why: str) -> str:
    """`variant` passed its check, yet a process using it died of SIGILL: refuse it on this
    CPU from now on and prove the next one. Returns what was done, in words."""
    path = _refused_path(build)
    refused = _refused(build)
    refused[variant] = why
    path.write_text(json.dumps(refused, indent=1))
    verdict_path(build).unlink(missing_ok=True)
    try:
        verdict = cpu_verdict(build)
    except QuorumError as exc:
        return f"Quorum no longer uses the {variant} kernels here, and {exc}"
    return (
        f"Quorum no longer uses the {variant} kernels on this machine; the next start uses "
        f"{verdict.variant}"
    )


def _refused_path(build: LlamaBuild) -> Path:
    return build.state_dir() / f"cpu-refused-{cpu_key()}.json"


def _refused(build: LlamaBuild) -> dict[str, str]:
    try:
        data = json.loads(_refused_path(build).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def prove(build: LlamaBuild, every: bool = False) -> CpuVerdict:
    """Check the variants, best score first, until one passes (`every`: all of them)."""
    variants = build.cpu_variants()
    scores = _scores(build, variants)
    order = sorted(variants, key=lambda v: -scores.get(v, 0))
    refused = _refused(build)
    results: list[VariantResult] = []
    for name in order:
        score = scores.get(name, 0)
        if score <= 0:
            results.append(VariantResult(name, score, "unsupported", "not for this CPU (CPUID)"))
            continue
        if name in refused:
            results.append(VariantResult(name, score, "refused", refused[name]))
            continue
        result = _run_child(build, name, variants[name], score)
        results.append(result)
        if result.status == "passed" and not every:
            break
    verdict = _choose(build, results)
    if verdict is None:
        tried = "; ".join(f"{r.variant}: {r.detail}" for r in results if r.status == "refused")
        raise QuorumError(
            f"none of the CPU backends of the llama.cpp build in {build.root} runs on this "
            f"machine ({tried or 'CPUID rules them all out'}); rebuild it here with `make clean "
            "&& make`, and report the CPU (`grep -m1 'model name' /proc/cpuinfo`)"
        )
    return verdict


def _choose(build: LlamaBuild, results: list[VariantResult]) -> CpuVerdict | None:
    variants = build.cpu_variants()
    passed = [r for r in results if r.status == "passed" and r.variant in variants]
    if not passed:
        return None
    best = max(passed, key=lambda r: r.score)
    return CpuVerdict(best.variant, str(variants[best.variant]), best.layouts, tuple(results))


def _child_argv(build: LlamaBuild, *args: str) -> list[str]:
    return [sys.executable, "-m", "quorum_tui.engine.cpucheck", str(build.lib_dir), *args]


def _child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}


def _scores(build: LlamaBuild, variants: dict[str, Path]) -> dict[str, int]:
    """ggml's own score of each variant (0: CPUID rules it out), read in a child process."""
    argv = _child_argv(build, "scores", *map(str, variants.values()))
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT, env=_child_env()
        )
    except subprocess.TimeoutExpired:
        raise QuorumError("reading the CPU backends' scores timed out") from None
    if done.returncode != 0:
        raise QuorumError(
            describe_exit("reading the CPU backends' scores", done.returncode)
            + f": {done.stderr.strip()[-500:]}"
        )
    by_path = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: int(by_path.get(str(path), 0)) for name, path in variants.items()}


def _run_child(build: LlamaBuild, name: str, path: Path, score: int) -> VariantResult:
    argv = _child_argv(build, "run", str(path), name)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT, env=_child_env()
        )
    except subprocess.TimeoutExpired:
        return VariantResult(name, score, "refused", f"no answer in {CHECK_TIMEOUT:g} s")
    if done.returncode != 0:
        signum = signal_of(done.returncode)
        err = [line for line in done.stderr.strip().splitlines() if line.strip()]
        how = f"died of {signal_name(signum)}" if signum else f"exit status {done.returncode}"
        return VariantResult(name, score, "refused", how + (f": {err[-1]}" if err else ""))
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if answer.get("error"):
        return VariantResult(name, score, "refused", str(answer["error"]))
    return VariantResult(name, score, "passed", "", tuple(answer["layouts"]))


# --- the child: plain ctypes over ggml, standard library only --------------------------------


class _InitParams(ctypes.Structure):
    _fields_ = [
        ("mem_size", ctypes.c_size_t),
        ("mem_buffer", ctypes.c_void_p),
        ("no_alloc", ctypes.c_bool),
    ]


def _ggml(lib_dir: Path) -> ctypes.CDLL:
    build = LlamaBuild(lib_dir, lib_dir)
    ctypes.CDLL(str(build.libggml_base), mode=ctypes.RTLD_GLOBAL)
    g = ctypes.CDLL(str(build.libggml), mode=ctypes.RTLD_GLOBAL)
    p, size, i64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64
    signatures: dict[str, tuple[object, list[object]]] = {
        "ggml_backend_load": (p, [ctypes.c_char_p]),
        "ggml_backend_reg_dev_get": (p, [p, size]),
        "ggml_backend_reg_get_proc_address": (p, [p, ctypes.c_char_p]),
        "ggml_backend_dev_init": (p, [p, ctypes.c_char_p]),
        "ggml_backend_dev_buffer_type": (p, [p]),
        "ggml_backend_dev_supports_op": (ctypes.c_bool, [p, p]),
        "ggml_backend_buft_name": (ctypes.c_char_p, [p]),
        "ggml_backend_alloc_ctx_tensors_from_buft": (p, [p, p]),
        "ggml_backend_alloc_ctx_tensors": (p, [p, p]),
        "ggml_backend_buffer_set_usage": (None, [p, ctypes.c_int]),
        "ggml_backend_tensor_set": (None, [p, p, size, size]),
        "ggml_backend_tensor_get": (None, [p, p, size, size]),
        "ggml_backend_graph_compute": (ctypes.c_int, [p, p]),
        "ggml_init": (p, [_InitParams]),
        "ggml_free": (None, [p]),
        "ggml_tensor_overhead": (size, []),
        "ggml_graph_overhead": (size, []),
        "ggml_new_tensor_2d": (p, [p, ctypes.c_int, i64, i64]),
        "ggml_mul_mat": (p, [p, p, p]),
        "ggml_new_graph": (p, [p]),
        "ggml_build_forward_expand": (None, [p, p]),
        "ggml_row_size": (size, [ctypes.c_int, i64]),
        "ggml_quantize_chunk": (size, [ctypes.c_int, p, p, i64, i64, i64, p]),
    }
    for fn, (restype, argtypes) in signatures.items():
        getattr(g, fn).restype = restype
        getattr(g, fn).argtypes = argtypes
    return g


def _child_scores(lib_dir: Path, modules: list[str]) -> dict[str, int]:
    _ggml(lib_dir)
    scores = {}
    for module in modules:
        try:
            lib = ctypes.CDLL(module)
        except OSError as exc:
            print(f"cannot load {module}: {exc}", file=sys.stderr)
            scores[module] = 0
            continue
        fn = getattr(lib, "ggml_backend_score", None)
        if fn is None:
            scores[module] = 1
            continue
        fn.restype = ctypes.c_int
        scores[module] = int(fn())
    return scores


def _matmul(g: ctypes.CDLL, backend: int, dev: int, buft: int, kind: int, rows: int) -> list[float]:
    """W (N x K, type `kind`, in `buft`) times X (K x rows); [] when `buft` does not take it."""
    rng = random.Random(kind * 1000 + rows)
    weights = array("f", (rng.uniform(-1, 1) for _ in range(K * N)))
    acts = array("f", (rng.uniform(-1, 1) for _ in range(K * rows)))
    overhead = g.ggml_tensor_overhead() * 8 + g.ggml_graph_overhead()
    ctx_w = g.ggml_init(_InitParams(overhead, None, True))
    ctx_c = g.ggml_init(_InitParams(overhead, None, True))
    try:
        w = g.ggml_new_tensor_2d(ctx_w, kind, K, N)
        if not g.ggml_backend_alloc_ctx_tensors_from_buft(ctx_w, buft):
            return []
        x = g.ggml_new_tensor_2d(ctx_c, 0, K, rows)
        y = g.ggml_mul_mat(ctx_c, w, x)
        if not g.ggml_backend_dev_supports_op(dev, y):
            return []
        graph = g.ggml_new_graph(ctx_c)
        g.ggml_build_forward_expand(graph, y)
        g.ggml_backend_alloc_ctx_tensors(ctx_c, backend)
        size = g.ggml_row_size(kind, K) * N
        data = ctypes.create_string_buffer(size)
        source = (ctypes.c_float * len(weights)).from_buffer(weights)
        g.ggml_quantize_chunk(kind, source, data, 0, N, K, None)
        g.ggml_backend_tensor_set(w, data, 0, size)
        g.ggml_backend_tensor_set(
            x, (ctypes.c_float * len(acts)).from_buffer(acts), 0, 4 * len(acts)
        )
        if g.ggml_backend_graph_compute(backend, graph) != 0:
            raise RuntimeError("ggml_backend_graph_compute failed")
        out = (ctypes.c_float * (N * rows))()
        g.ggml_backend_tensor_get(y, out, 0, 4 * N * rows)
        return list(out)
    finally:
        g.ggml_free(ctx_c)
        g.ggml_free(ctx_w)


def _child_run(lib_dir: Path, module: str, name: str) -> dict[str, object]:
    g = _ggml(lib_dir)
    reg = g.ggml_backend_load(module.encode())
    if not reg:
        return {"error": "ggml could not load it (see its log)"}
    if name in refused_by_env().split(","):
        os.kill(os.getpid(), signal.SIGILL)
    dev = g.ggml_backend_reg_dev_get(reg, 0)
    backend = g.ggml_backend_dev_init(dev, None)
    bufts = [g.ggml_backend_dev_buffer_type(dev)]
    extras = g.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if extras:
        array_of = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(extras)(dev)
        index = 0
        while array_of and array_of[index]:
            bufts.append(array_of[index])
            index += 1
    layouts: set[str] = set()
    for type_name, kind in TYPES.items():
        for rows in ROWS:
            plain: list[float] = []
            for buft in bufts:
                out = _matmul(g, backend, dev, buft, kind, rows)
                if not out:
                    continue
                layout = (g.ggml_backend_buft_name(buft) or b"?").decode()
                bad = _disagreement(out, plain)
                if bad:
                    return {"error": f"{layout} {type_name} x{rows}: {bad}"}
                plain = plain or out
                layouts.add(layout)
    return {"layouts": sorted(layouts)}


def _disagreement(out: list[float], plain: list[float]) -> str:
    if any(v != v or abs(v) == float("inf") for v in out):
        return "a result is not finite"
    if not plain:
        return "" if any(out) else "every result is zero"
    scale = max(abs(v) for v in plain) or 1.0
    worst = max(abs(a - b) for a, b in zip(out, plain, strict=True)) / scale
    return f"differs from the plain layout by {worst:.1%}" if worst > TOLERANCE else ""


def main(argv: list[str]) -> int:
    lib_dir, mode, *rest = argv
    if mode == "scores":
        print(json.dumps(_child_scores(Path(lib_dir), rest)))
    else:
        print(json.dumps(_child_run(Path(lib_dir), rest[0], rest[1])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
