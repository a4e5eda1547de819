"""Parse a GGUF header (key-values and tensor infos) from its first bytes alone.

The tensor data is never read, so a header fetched with an HTTP range request, or the first
megabytes of a 40 GB file, is enough to describe the model. A local file is read the same way
(gguf's GGUFReader builds a numpy view per array element: seconds for a 50,000-token
tokenizer, where this takes a tenth of one).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quorum_tui.errors import QuorumError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_ARRAY_ITEMS_KEPT = 64
"""Numeric arrays longer than this (token scores, ...) are cut: planning never needs them."""

_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING = 8
_ARRAY = 9


class NeedMore(Exception):
    """The buffer ends inside the header; `size` bytes would get further."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the header needs at least {size} bytes")
        self.size = size


@dataclass(frozen=True)
class TensorRow:
    name: str
    n_bytes: int
    offset: int
    """Absolute offset of the tensor's data in the file."""
    type_name: str


@dataclass(frozen=True)
class Header:
    version: int
    fields: dict[str, Any]
    tensors: list[TensorRow]
    data_start: int

    def tensor_rows(self) -> list[tuple[str, int, int, str]]:
        """The rows engine.gguf_info.describe() takes."""
        return [(t.name, t.n_bytes, t.offset, t.type_name) for t in self.tensors]


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise NeedMore(end)
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        end = self.pos + size
        if end > len(self.buf):
            raise NeedMore(end)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos = end
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 30:
            raise QuorumError(f"a GGUF string claims {n} bytes: the file is corrupt")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.unpack("<I")
            count = self.unpack("<Q")
            if item_type in _SCALARS:
                fmt = _SCALARS[item_type]
                size = struct.calcsize(fmt)
                kept = min(count, MAX_ARRAY_ITEMS_KEPT)
                start = self.pos
                self.take(size * count)
                return [struct.unpack_from(fmt, self.buf, start + i * size)[0] for i in range(kept)]
            return [self.value(item_type) for _ in range(count)]
        raise QuorumError(f"unknown GGUF value type {vtype}: the file is corrupt or too new")


def parse_header(buf: bytes) -> Header:
    """Parse the header in `buf`; raise NeedMore when `buf` stops inside it."""
    r = _Reader(buf)
    if len(buf) >= 4 and buf[:4] != MAGIC:
        raise QuorumError("not a GGUF file (it does not start with 'GGUF')")
    r.take(4)
    version = r.unpack("<I")
    if version < 2 or version > 3:
        raise QuorumError(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors = r.unpack("<Q")
    n_kv = r.unpack("<Q")
    fields: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        fields[key] = r.value(r.unpack("<I"))
    raw = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.unpack("<I")
        if n_dims > 8:
            raise QuorumError(f"tensor {name} has {n_dims} dimensions: the file is corrupt")
        dims = [r.unpack("<Q") for _ in range(n_dims)]
        raw.append((name, dims, r.unpack("<I"), r.unpack("<Q")))
    alignment = int(fields.get("general.alignment", DEFAULT_ALIGNMENT) or DEFAULT_ALIGNMENT)
    data_start = (r.pos + alignment - 1) // alignment * alignment
    tensors = [
        TensorRow(name, _tensor_bytes(name, dims, ttype), data_start + offset, _type_name(ttype))
        for name, dims, ttype, offset in raw
    ]
    return Header(version, fields, tensors, data_start)


def _type_name(ttype: int) -> str:
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ttype).name
    except ValueError:
        return f"type{ttype}"


def _tensor_bytes(name: str, dims: list[int], ttype: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
    except (ValueError, KeyError):
        raise QuorumError(f"tensor {name} has unknown type {ttype}") from None
    elements = 1
    for d in dims:
        elements *= d
    return elements // block * size


def read_header(path: Path) -> Header:
    """The header of the GGUF file at `path`, read through a memory map (only the header's
    pages are touched); QuorumError when it is not a whole GGUF header."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            return parse_header(data)  # type: ignore[arg-type]
        except NeedMore:
            raise QuorumError("the file ends inside its GGUF header") from None
