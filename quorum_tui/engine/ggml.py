"""ctypes access to ggml's backend registry, with the backends this machine proved it runs.

The build loads its backends at run time (engine.llamabuild); here they are loaded by path:
RPC, any GPU backend, and the CPU variant the CPU check proved (engine.cpucheck), never the
one ggml would pick by CPUID alone. Both the worker and the planner's measurement child use
this; importing it loads ggml, which only those processes should.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

from quorum_tui.engine.cpucheck import CpuVerdict, cpu_verdict
from quorum_tui.engine.llamabuild import LlamaBuild
from quorum_tui.errors import QuorumError

DEVICE_CPU = 0
DEVICE_GPU = 1
DEVICE_IGPU = 2

StartServer = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_void_p),
)  # fmt: skip
AddServer = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)


@functools.cache
def loaded() -> tuple[ctypes.CDLL, CpuVerdict]:
    """libggml with its backends loaded, and the CPU verdict it was loaded by."""
    build = LlamaBuild.installed()
    verdict = cpu_verdict(build)
    # The same files llama-cpp-python's bindings load (a second copy would be a second ggml).
    ctypes.CDLL(str(build.libggml_base), mode=ctypes.RTLD_GLOBAL)
    ggml = ctypes.CDLL(str(build.libggml), mode=ctypes.RTLD_GLOBAL)
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    for module in [*build.other_backends(), verdict.path]:
        if not ggml.ggml_backend_load(str(module).encode()):
            raise QuorumError(f"ggml could not load the backend {module}")
    ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ggml.ggml_backend_register.restype = None
    ggml.ggml_backend_register.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_dev_type.restype = ctypes.c_int
    ggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_name.restype = ctypes.c_char_p
    ggml.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_description.restype = ctypes.c_char_p
    ggml.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_memory.restype = None
    ggml.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    return ggml, verdict


def lib() -> ctypes.CDLL:
    return loaded()[0]


def rpc_reg() -> int:
    """The RPC backend registry, or a QuorumError when the build has no RPC."""
    reg = lib().ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise QuorumError(
            "this llama.cpp build has no RPC backend (libggml-rpc.so): run `make` again, "
            "which builds it with RPC"
        )
    return int(reg)


def rpc_proc(name: str) -> int:
    address = lib().ggml_backend_reg_get_proc_address(rpc_reg(), name.encode())
    if not address:
        raise QuorumError(f"the RPC backend of this llama.cpp build has no {name}")
    return int(address)


def server_devices() -> list[int]:
    """The devices a worker serves: every GPU or iGPU, else the CPU."""
    ggml = lib()
    devices = []
    for index in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(index)
        if ggml.ggml_backend_dev_type(dev) in (DEVICE_GPU, DEVICE_IGPU):
            devices.append(int(dev))
    if not devices:
        cpu = ggml.ggml_backend_dev_by_type(DEVICE_CPU)
        if not cpu:
            raise QuorumError("llama.cpp found no CPU device")
        devices.append(int(cpu))
    return devices


GetMemory = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
)
GET_MEMORY_SLOT = 2
"""get_memory's place in ggml_backend_device_i, the table that begins a device
(ggml-backend-impl.h: get_name, get_description, get_memory, ...)."""
_KEPT: list[object] = []


def report_room(dev: int) -> None:
    """Make CPU device `dev` report this process's room (engine.room: the host's available
    memory and the cgroup's, less a headroom) instead of all of the machine's RAM.

    The RPC server answers a coordinator's memory question from its devices, so this is what
    every plan made over this worker sees. The device's own function still runs first, and
    stands when the room cannot be read."""
    from quorum_tui.engine.room import room

    slot = ctypes.c_void_p.from_address(dev + GET_MEMORY_SLOT * ctypes.sizeof(ctypes.c_void_p))
    if not slot.value:
        raise QuorumError("the CPU device of this llama.cpp build has no get_memory")
    original = GetMemory(slot.value)

    def get_memory(device: int, free: Any, total: Any) -> None:
        original(device, free, total)
        try:
            here = room()
        except (OSError, ValueError):
            return
        free[0], total[0] = here.free, here.total

    callback = GetMemory(get_memory)
    _KEPT.extend([original, callback])
    slot.value = ctypes.cast(callback, ctypes.c_void_p).value


def device_memory(dev: int) -> tuple[int, int]:
    """(free, total) bytes as the device reports them."""
    ggml = lib()
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    ggml.ggml_backend_dev_memory(ctypes.c_void_p(dev), ctypes.byref(free), ctypes.byref(total))
    return free.value, total.value


def is_cpu(dev: int) -> bool:
    return bool(lib().ggml_backend_dev_type(dev) == DEVICE_CPU)


def device_label(dev: int) -> str:
    ggml = lib()
    name = (ggml.ggml_backend_dev_name(dev) or b"?").decode(errors="replace")
    desc = (ggml.ggml_backend_dev_description(dev) or b"").decode(errors="replace")
    return f"{name} ({desc})" if desc else name


def start_server(endpoint: str, cache_dir: str | None, threads: int, devices: list[int]) -> None:
    """Serve RPC on `endpoint`; blocks for as long as the server runs."""
    fn = StartServer(rpc_proc("ggml_backend_rpc_start_server"))
    array = (ctypes.c_void_p * len(devices))(*devices)
    fn(endpoint.encode(), cache_dir.encode() if cache_dir else None, threads, len(devices), array)


def add_rpc_server(endpoint: str) -> None:
    """Register one RPC server's devices; registration order is llama.cpp's device order."""
    fn = AddServer(rpc_proc("ggml_backend_rpc_add_server"))
    reg = fn(endpoint.encode())
    if not reg:
        raise QuorumError(f"llama.cpp refused the RPC server {endpoint}")
    lib().ggml_backend_register(reg)
