"""Read what planning needs from a GGUF file: shape, bytes per layer, KV-cache cost."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quorum_tui.engine.ggufheader import Header, read_header
from quorum_tui.errors import QuorumError

GGUF_MAGIC = b"GGUF"
KV_BYTES_PER_ELEMENT = 2
"""llama.cpp's default KV cache type is f16."""

_BLOCK = re.compile(r"^blk\.(\d+)\.")
_SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
"""llama.cpp's name for one part of a split model: `stem-00002-of-00003.gguf`."""


@dataclass(frozen=True)
class ModelInfo:
    """The facts about a model that plans and memory estimates are made of."""

    path: str
    name: str
    architecture: str
    n_layers: int
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    n_head: int
    n_head_kv: int
    n_ff: int
    file_bytes: int
    quant: str
    layer_bytes: tuple[int, ...]
    embedding_bytes: int
    output_bytes: int
    kv_bytes_per_token_per_layer: int
    """At llama.cpp's default KV cache type, f16."""
    tied_output: bool = False
    vocab_digest: str = ""
    """sha256 of the tokenizer model and its token list: equal digests, equal vocabularies."""
    extra: dict[str, Any] = field(default_factory=dict)
    kv_widths: tuple[int, int] = (0, 0)
    """Elements of K and of V per token per layer (0, 0: equal halves of the f16 figure)."""

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.embedding_bytes + self.output_bytes

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["layer_bytes"] = list(self.layer_bytes)
        data["weight_bytes"] = self.weight_bytes
        return data


def split_part(name: str) -> tuple[str, int, int] | None:
    """`x-00002-of-00003.gguf` -> ('x', 2, 3); None for a file that is not a split part."""
    m = _SPLIT_NAME.match(name)
    return (m["stem"], int(m["part"]), int(m["count"])) if m else None


def split_part_name(stem: str, index: int, count: int) -> str:
    """('x', 2, 3) -> `x-00002-of-00003.gguf`."""
    return f"{stem}-{index:05d}-of-{count:05d}.gguf"


def split_parts(path: Path) -> list[Path]:
    """Every part beside `path` when it is part 1 of a split model, else just `path`."""
    split = split_part(path.name)
    if split is None or split[1] != 1:
        return [path]
    stem, _, count = split
    return [path.with_name(split_part_name(stem, i, count)) for i in range(1, count + 1)]


def inspect_model(path: str | Path) -> ModelInfo:
    """Read a local GGUF file; any problem becomes a one-line QuorumError."""
    p = Path(path).expanduser()
    if not p.exists():
        raise QuorumError(f"model file {p} does not exist: check the path, or pull it first")
    if p.is_dir():
        raise QuorumError(f"{p} is a directory, not a GGUF model file")
    size = p.stat().st_size
    with p.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise QuorumError(f"{p} is not a GGUF file (it does not start with 'GGUF')")
    header = _header(p)
    fields, tensors = header.fields, header.tensor_rows()
    later, size = _later_parts(p, fields, size)
    return describe(str(p), size, fields, tensors + later)


def _header(path: Path) -> Header:
    try:
        return read_header(path)
    except (QuorumError, OSError, ValueError) as exc:
        raise QuorumError(f"{path} is a corrupt or truncated GGUF file ({_reason(exc)})") from None


def describe(
    path: str,
    file_bytes: int,
    fields: dict[str, Any],
    tensors: list[tuple[str, int, int, str]],
) -> ModelInfo:
    """Build ModelInfo from header fields and (name, bytes, offset, type) tensor rows."""
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise QuorumError(f"{path} has no general.architecture key: not a model GGUF file")

    def key(name: str, default: int | None = None) -> int:
        value = fields.get(f"{arch}.{name}", default)
        if isinstance(value, list):
            value = max(value) if value else default
        if value is None:
            raise QuorumError(f"{path} lacks the {arch}.{name} key that planning needs")
        return int(value)

    n_layers = key("block_count")
    n_embd = key("embedding_length")
    n_head = key("attention.head_count", 1) or 1
    n_head_kv = key("attention.head_count_kv", n_head) or n_head
    head_k = key("attention.key_length", n_embd // n_head)
    head_v = key("attention.value_length", n_embd // n_head)
    tokens = fields.get("tokenizer.ggml.tokens")
    n_vocab = len(tokens) if isinstance(tokens, list) else key("vocab_size", 0)

    for name, nbytes, offset, _ in tensors:
        if offset + nbytes > file_bytes:
            raise QuorumError(
                f"{path} is truncated: tensor {name} ends at byte {offset + nbytes} "
                f"but the file has {file_bytes}; download it again"
            )

    layer_bytes = [0] * n_layers
    embedding = output = 0
    names = set()
    types: Counter[str] = Counter()
    for name, nbytes, _, ttype in tensors:
        names.add(name)
        match = _BLOCK.match(name)
        if match:
            index = int(match.group(1))
            if index < n_layers:
                layer_bytes[index] += nbytes
                types[ttype] += nbytes
            continue
        if name.startswith("token_embd"):
            embedding += nbytes
        elif name.startswith("output"):
            output += nbytes
    tied = "output.weight" not in names
    if tied:
        output += next((b for n, b, _, _ in tensors if n == "token_embd.weight"), 0)
    quant = types.most_common(1)[0][0] if types else "unknown"
    kv = KV_BYTES_PER_ELEMENT * n_head_kv * (head_k + head_v)
    return ModelInfo(
        path=path,
        name=str(fields.get("general.name") or Path(path).stem),
        architecture=arch,
        n_layers=n_layers,
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_ctx_train=key("context_length", 0),
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_ff=key("feed_forward_length", 0),
        file_bytes=file_bytes,
        quant=quant,
        layer_bytes=tuple(layer_bytes),
        embedding_bytes=embedding,
        output_bytes=output,
        kv_bytes_per_token_per_layer=kv,
        tied_output=tied,
        vocab_digest=vocab_digest(fields),
        kv_widths=(n_head_kv * head_k, n_head_kv * head_v),
    )


def vocab_digest(fields: dict[str, Any]) -> str:
    """What identifies a vocabulary: the tokenizer model and every token, in order."""
    tokens = fields.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        return ""
    digest = hashlib.sha256(str(fields.get("tokenizer.ggml.model", "")).encode())
    for token in tokens:
        digest.update(b"\0" + str(token).encode())
    return digest.hexdigest()


def _later_parts(
    first: Path, fields: dict[str, Any], size: int
) -> tuple[list[tuple[str, int, int, str]], int]:
    """Tensors of parts 2..N of a split model (offset 0: each lies within its own part)."""
    count = fields.get("split.count")
    split = split_part(first.name)
    if not isinstance(count, int) or count < 2 or split is None or split[1] != 1:
        return [], size
    rows: list[tuple[str, int, int, str]] = []
    for index in range(2, count + 1):
        part = first.with_name(split_part_name(split[0], index, count))
        if not part.is_file():
            raise QuorumError(f"{first} is part 1 of {count} but {part.name} is missing beside it")
        rows += [(t.name, t.n_bytes, 0, t.type_name) for t in _header(part).tensors]
        size += part.stat().st_size
    return rows, size


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text and text[0] else type(exc).__name__
