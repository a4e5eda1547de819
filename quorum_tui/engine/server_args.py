"""llama-server's own options, passed through to the coordinator.

Everything after `--` on `quorum serve`/`run`/`plan`/`tui` (or `server_args` in the cluster
file) reaches llama-server, after Quorum's own options, so it overrides their defaults
(relative paths made absolute: llama-server runs in its own folder). The options Quorum
decides itself are refused with what to use instead, and the ones that change a stage's
memory (the KV cache's types, LoRA adapters) are read here so the planner, the Layers screen
and failover count them.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.ggufheader import read_header
from quorum_tui.errors import QuorumError

_WORKERS = "Quorum connects the workers: add them with --worker or the cluster file"
_LAYERS = "Quorum places the layers: use --split, --auto or the Layers screen"
_MODEL = "give the model as Quorum's MODEL argument (a path, a Hub name or a URL)"
_ROUTER = "Quorum serves one model per deployment; start one deployment per model"
_OWNED: tuple[tuple[str, str], ...] = (
    ("--rpc -dev --device --list-devices", _WORKERS),
    ("-ngl --gpu-layers --n-gpu-layers -ts --tensor-split -sm --split-mode -mg --main-gpu "
     "-ot --override-tensor -cmoe --cpu-moe -ncmoe --n-cpu-moe", _LAYERS),
    ("-fit --fit -fitt --fit-target -fitc --fit-ctx -fitp --fit-print",
     "Quorum fits the plan to each stage's measured free memory: use --auto, or --split"),
    ("-m --model -mu --model-url -hf -hfr --hf-repo -hff --hf-file -hft --hf-token "
     "-dr --docker-repo", _MODEL),
    ("--models-dir --models-max --models-preset --no-models-autoload", _ROUTER),
    ("--host", "use Quorum's --host (clients reach the gateway; llama-server listens privately)"),
    ("--port", "use Quorum's --port (clients reach the gateway; llama-server listens privately)"),
    ("--reuse-port", "Quorum's gateway owns the public port"),
    ("--api-prefix", "Quorum's gateway serves llama-server's paths at the root"),
    ("--path", "Quorum's gateway serves llama-server's paths; serve static files elsewhere"),
    ("--ssl-key-file --ssl-cert-file",
     "the gateway speaks plain HTTP: put a TLS proxy in front of Quorum's --port"),
    ("--api-key --api-key-file", "use Quorum's --api-key"),
    ("-c --ctx-size",
     "use Quorum's --ctx (tokens per slot: llama-server's --ctx-size is --ctx x --slots)"),
    ("-np --parallel", "use Quorum's --slots"),
    ("-t --threads -tb --threads-batch", "use Quorum's --threads"),
    ("-md --model-draft --spec-draft-model --spec-type", "use Quorum's --spec and --draft"),
    ("--no-repack", "use Quorum's --no-repack"),
    ("-lv --verbosity --log-verbosity --log-file --log-disable --log-colors",
     "Quorum reads llama-server's log and keeps it in its log directory"),
)  # fmt: skip
OWNED: dict[str, str] = {name: why for names, why in _OWNED for name in names.split()}
"""Options Quorum decides itself, with what to use instead."""

KV_TYPES: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "iq4_nl": (32, 18),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
}
"""The KV cache types llama.cpp accepts: (elements per block, bytes per block)."""
_CACHE_K = ("-ctk", "--cache-type-k")
_CACHE_V = ("-ctv", "--cache-type-v")
_ALIAS = ("-a", "--alias")
_LORA = ("--lora",)
_LORA_SCALED = ("--lora-scaled",)
_PATHS = frozenset(
    "-lcs --lookup-cache-static -lcd --lookup-cache-dynamic -f --file -sysf "
    "--system-prompt-file -bf --binary-file --prompt-cache --grammar-file -jf "
    "--json-schema-file -mm --mmproj --video-ffmpeg-dir --control-vector --context-file "
    "--ui-config-file --webui-config-file --mcp-servers-config --slot-save-path --media-path "
    "--log-prompts-dir --chat-template-file".split()
)
"""Options whose value is a file or a folder: llama-server runs in its own folder, so a
relative one is made absolute here, from the directory Quorum was started in."""
_SCALED_PATHS = frozenset(("--control-vector-scaled",))
_LISTS = frozenset(("--control-vector", "--control-vector-scaled"))
_VALUED = (*_CACHE_K, *_CACHE_V, *_ALIAS, *_LORA, *_LORA_SCALED, *_PATHS, *_SCALED_PATHS)
_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ServerArgs:
    """The pass-through options, checked, with what Quorum reads from them."""

    argv: tuple[str, ...] = ()
    """What llama-server gets, after Quorum's own options (less --alias and --metrics, which
    Quorum passes itself)."""
    alias: str | None = None
    """The model's name in /v1/models and in the chat (default: the file name)."""
    cache_k: str = "f16"
    cache_v: str = "f16"
    adapters: tuple[Path, ...] = ()
    """LoRA adapters: their tensors sit beside the layers they adapt, on the same stage."""
    metrics: bool = False
    """Whether clients may read /metrics (Quorum's watchdog reads it either way)."""

    @classmethod
    def parse(cls, args: Sequence[str]) -> ServerArgs:
        """Check `args`; QuorumError naming the first owned or malformed option."""
        argv: list[str] = []
        found: dict[str, str] = {}
        adapters: list[Path] = []
        metrics = False
        items = list(args)
        index = 0
        while index < len(items):
            arg = items[index]
            index += 1
            name = arg.split("=", 1)[0] if arg.startswith("--") else arg
            if name in OWNED:
                raise QuorumError(f"llama-server option {name} is Quorum's: {OWNED[name]}")
            if name == "--metrics":
                metrics = True
                continue
            if name not in _VALUED:
                argv.append(arg)
                continue
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif index < len(items):
                value = items[index]
                index += 1
            else:
                raise QuorumError(f"llama-server option {name} needs a value")
            if name in _ALIAS:
                found["alias"] = value
                continue
            if name in _PATHS or name in _SCALED_PATHS:
                scaled = name in _SCALED_PATHS
                listed = value.split(",") if name in _LISTS else [value]
                argv += [name, ",".join(_absolute(v, scaled) for v in listed)]
                continue
            if name in _CACHE_K or name in _CACHE_V:
                if value not in KV_TYPES:
                    raise QuorumError(
                        f"{name} {value}: llama.cpp's KV cache types are {', '.join(KV_TYPES)}"
                    )
                found["k" if name in _CACHE_K else "v"] = value
                argv += [name, value]
                continue
            items_ = [_adapter(item, name in _LORA_SCALED) for item in value.split(",")]
            adapters += [path for path, _ in items_]
            argv += [name, ",".join(text for _, text in items_)]
        return cls(
            tuple(argv),
            found.get("alias"),
            found.get("k", "f16"),
            found.get("v", "f16"),
            tuple(adapters),
            metrics,
        )

    def memory_note(self) -> str:
        """What these options change in memory, in words ('' when nothing)."""
        notes = []
        if (self.cache_k, self.cache_v) != ("f16", "f16"):
            notes.append(f"KV cache {self.cache_k}/{self.cache_v}")
        if self.adapters:
            count = len(self.adapters)
            notes.append(f"{count} LoRA adapter{'s' if count > 1 else ''}")
        return ", ".join(notes)

    def kv_bytes(self, info: ModelInfo) -> int:
        """Bytes of KV cache per token per layer at these cache types."""
        k, v = info.kv_widths
        if not k and not v:
            k = v = info.kv_bytes_per_token_per_layer // 4
        total = 0
        for kind, width in ((self.cache_k, k), (self.cache_v, v)):
            block, size = KV_TYPES[kind]
            total += -(-width // block) * size
        return total


def as_loaded(info: ModelInfo, server: ServerArgs) -> ModelInfo:
    """`info` as llama-server will hold it with `server`'s options: the KV cache at its types,
    and each LoRA adapter's tensors added to the layers (or embeddings, or output) they adapt,
    which is where llama.cpp puts them. Reads the adapters' headers (blocking)."""
    if (server.cache_k, server.cache_v) == ("f16", "f16") and not server.adapters:
        return info
    for kind, width, option in ((server.cache_k, info.kv_widths[0], "-ctk"),
                                (server.cache_v, info.kv_widths[1], "-ctv")):  # fmt: skip
        head = width // max(info.n_head_kv, 1)
        block = KV_TYPES[kind][0]
        if head and head % block:
            raise QuorumError(
                f"{option} {kind}: its blocks of {block} do not divide this model's attention "
                f"head size ({head}), so llama.cpp cannot use it: use f16, bf16 or f32"
            )
    layers = list(info.layer_bytes)
    embedding, output = info.embedding_bytes, info.output_bytes
    for path in server.adapters:
        try:
            changed = path.stat().st_mtime_ns
        except OSError as exc:
            raise QuorumError(f"LoRA adapter {path}: {exc.strerror}") from None
        adapter = _adapter_bytes(path, changed, info.architecture)
        for index, size in adapter.layers.items():
            if index >= len(layers):
                raise QuorumError(
                    f"LoRA adapter {path} adapts layer {index}, but the model has "
                    f"{len(layers)} layers: it was made for another model"
                )
            layers[index] += size
        embedding += adapter.embedding
        output += adapter.output
    return replace(
        info,
        layer_bytes=tuple(layers),
        embedding_bytes=embedding,
        output_bytes=output,
        kv_bytes_per_token_per_layer=server.kv_bytes(info),
    )


@dataclass(frozen=True)
class _AdapterBytes:
    layers: dict[int, int]
    embedding: int
    output: int


@functools.lru_cache(maxsize=32)
def _adapter_bytes(path: Path, mtime_ns: int, architecture: str) -> _AdapterBytes:
    """An adapter's bytes by layer (cached while its file is unchanged)."""
    try:
        header = read_header(path)
        fields = header.fields
        tensors = [(t.name, t.n_bytes) for t in header.tensors]
    except Exception as exc:
        raise QuorumError(f"LoRA adapter {path} is not a readable GGUF file ({exc})") from None
    if fields.get("general.type") != "adapter" or fields.get("adapter.type") != "lora":
        raise QuorumError(f"{path} is not a LoRA adapter (general.type is not 'adapter')")
    arch = fields.get("general.architecture")
    if arch != architecture:
        raise QuorumError(
            f"LoRA adapter {path} is for {arch}, but the model is {architecture}: "
            "give an adapter made for this model"
        )
    layers: dict[int, int] = {}
    embedding = output = 0
    for name, size in tensors:
        block = _BLOCK.match(name)
        if block:
            layers[int(block[1])] = layers.get(int(block[1]), 0) + size
        elif name.startswith("token_embd"):
            embedding += size
        elif name.startswith("output"):
            output += size
    return _AdapterBytes(layers, embedding, output)


def _absolute(item: str, scaled: bool) -> str:
    """`item` (a path, or PATH:SCALE) with its path made absolute."""
    name, colon, scale = item.rpartition(":") if scaled else (item, "", "")
    return os.path.abspath(os.path.expanduser(name)) + colon + scale


def _adapter(item: str, scaled: bool) -> tuple[Path, str]:
    """An adapter's absolute path, and the option's value for it with that path."""
    name, _, scale = item.rpartition(":") if scaled else (item, "", "")
    if scaled:
        try:
            float(scale)
        except ValueError:
            raise QuorumError(f"--lora-scaled {item}: give FILE:SCALE (a number)") from None
    path = Path(name).expanduser()
    if not path.is_file():
        raise QuorumError(f"LoRA adapter {path} is not a file: check the path")
    path = path.resolve()
    return path, f"{path}:{scale}" if scaled else str(path)
