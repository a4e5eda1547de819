"""ctypes access to the ggml backend registry bundled with llama-cpp-python.

llama-cpp-python 0.3.36 has no working `rpc_servers` argument and ships no rpc-server binary,
so both the worker and the coordinator reach ggml's RPC backend through its proc addresses.
Importing this module loads llama.cpp; only worker and coordinator processes should.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from pathlib import Path

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
def lib() -> ctypes.CDLL:
    """libggml as loaded by llama_cpp, with the signatures used here declared."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise QuorumError(
            "llama-cpp-python is not installed in this Python: install it built with RPC "
            "(`make` does, into .venv)"
        )
    # Not `import llama_cpp`: its Python side (numpy, jinja2) costs a worker ~0.3 CPU-s at
    # start. libllama.so is the file llama_cpp itself loads, so a later import shares it.
    libdir = Path(spec.origin).parent / "lib"
    ctypes.CDLL(str(libdir / "libllama.so"), mode=ctypes.RTLD_GLOBAL).llama_backend_init()
    # Wheels hold copies, not symlinks: libllama links the soname, so that copy is the live one.
    path = next(p for p in (libdir / "libggml.so.0", libdir / "libggml.so") if p.exists())
    ggml = ctypes.CDLL(str(path))
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
    return ggml


def rpc_reg() -> int:
    """The RPC backend registry, or a QuorumError when the build has no RPC."""
    reg = lib().ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise QuorumError(
            "this llama-cpp-python was built without RPC: reinstall it with "
            "CMAKE_ARGS=-DGGML_RPC=on (make install does this)"
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
