"""Deterministic synthetic llama models: random weights, a small SentencePiece-style vocabulary.

The same arguments always give the same bytes, so tests, benchmarks and the offline demo can
make the models they need without downloading anything. The weights are random: the text
such a model writes is meaningless, and everything that shows it says so.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quorum_tui.errors import QuorumError

DTYPES = ("f32", "f16", "q8_0")
_SPECIALS = ("<unk>", "<s>", "</s>")

_WORDS = (
    "the of and to in is was he for it with as his on be at by had are but from or have "
    "an they which one you were her all she there would their we him been has when who "
    "will more no if out so said what up its about into than them can only other new some "
    "could time these two may then do first any my now such like our over man me even "
    "most made after also did many before must through back years where much your way "
    "well down should because each just those people how too little state good very make "
    "world still own see men work long get here between both life being under never day "
    "same another know while last might us great old year off come since against go came "
    "right used take three small large quorum layer worker model token shard stage "
    "cluster memory network "
).split()


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a synthetic model."""

    n_layers: int = 5
    n_embd: int = 64
    n_ff: int = 0
    n_head: int = 4
    n_head_kv: int = 0
    n_vocab: int = 512
    n_ctx: int = 2048
    dtype: str = "f32"
    seed: int = 0

    def resolved(self) -> SyntheticSpec:
        n_ff = self.n_ff or (self.n_embd * 8 // 3 + 31) // 32 * 32
        n_head_kv = self.n_head_kv or self.n_head
        return SyntheticSpec(
            self.n_layers,
            self.n_embd,
            n_ff,
            self.n_head,
            n_head_kv,
            self.n_vocab,
            self.n_ctx,
            self.dtype,
            self.seed,
        )

    def slug(self) -> str:
        s = self.resolved()
        return (
            f"synthetic-l{s.n_layers}-e{s.n_embd}-f{s.n_ff}-h{s.n_head}x{s.n_head_kv}"
            f"-v{s.n_vocab}-{s.dtype}-s{s.seed}"
        )


def vocabulary(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types: control tokens, 256 byte tokens, then word pieces."""
    from gguf import TokenType

    specials = list(_SPECIALS)
    if n_vocab < len(specials) + 256 + 1:
        raise QuorumError(f"a vocabulary needs at least 260 tokens, not {n_vocab}")
    tokens = list(specials)
    types = [int(TokenType.UNKNOWN), int(TokenType.CONTROL), int(TokenType.CONTROL)]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(TokenType.BYTE)] * 256
    pieces: list[str] = ["▁"]
    pieces += [f"▁{w}" for w in _WORDS]
    pieces += list("etaoinshrdlcumwfgypbvkjxqz")
    pieces += [w for w in _WORDS if len(w) > 2]
    seen = set(tokens)
    room = n_vocab - len(tokens)
    chosen = []
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            chosen.append(piece)
        if len(chosen) == room:
            break
    for piece in _pseudo_words():
        if len(chosen) == room:
            break
        if piece not in seen:
            seen.add(piece)
            chosen.append(piece)
    tokens += chosen
    types += [int(TokenType.NORMAL)] * len(chosen)
    scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(chosen))]
    return tokens, scores, types


def _pseudo_words() -> Iterator[str]:
    """Pronounceable filler pieces (`▁ka`, `▁kal`, ...) for vocabularies beyond the word list."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    for c, v in itertools.product(consonants, vowels):
        yield f"▁{c}{v}"
    for c, v, e in itertools.product(consonants, vowels, consonants):
        yield f"▁{c}{v}{e}"
    for index in itertools.count():
        yield f"▁w{index}"


def write_synthetic(path: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the model described by `spec` to `path` (atomically) and return the path."""
    import gguf

    s = spec.resolved()
    if s.dtype not in DTYPES:
        raise QuorumError(f"dtype {s.dtype!r} is not one of {', '.join(DTYPES)}")
    if s.n_layers < 1 or s.n_embd % s.n_head or s.n_head % s.n_head_kv:
        raise QuorumError(
            "a synthetic model needs >= 1 layer, a width divisible by the head count, "
            "and a head count divisible by the KV head count"
        )
    if s.dtype == "q8_0" and (s.n_embd % 32 or s.n_ff % 32):
        raise QuorumError("q8_0 needs the width and feed-forward size to be multiples of 32")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    rng = np.random.default_rng(s.seed)
    head_dim = s.n_embd // s.n_head
    kv_width = head_dim * s.n_head_kv

    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_name(f"Quorum synthetic {s.n_layers}-layer (random weights)")
    writer.add_context_length(s.n_ctx)
    writer.add_embedding_length(s.n_embd)
    writer.add_block_count(s.n_layers)
    writer.add_feed_forward_length(s.n_ff)
    writer.add_head_count(s.n_head)
    writer.add_head_count_kv(s.n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(
        {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}.get(
            s.dtype, gguf.LlamaFileType.MOSTLY_Q8_0
        )
    )
    tokens, scores, types = vocabulary(s.n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(cols)).astype(
            np.float32
        )

    def add(name: str, data: np.ndarray, quantize: bool = True) -> None:
        if data.ndim == 1 or not quantize or s.dtype == "f32":
            writer.add_tensor(name, data.astype(np.float32))
        elif s.dtype == "f16":
            writer.add_tensor(name, data.astype(np.float16))
        else:
            qtype = gguf.GGMLQuantizationType.Q8_0
            packed = gguf.quants.quantize(data, qtype)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)

    ones = np.ones(s.n_embd, dtype=np.float32)
    add("token_embd.weight", rng.standard_normal((s.n_vocab, s.n_embd), dtype=np.float32))
    for il in range(s.n_layers):
        add(f"blk.{il}.attn_norm.weight", ones)
        add(f"blk.{il}.attn_q.weight", matrix(s.n_embd, s.n_embd))
        add(f"blk.{il}.attn_k.weight", matrix(kv_width, s.n_embd))
        add(f"blk.{il}.attn_v.weight", matrix(kv_width, s.n_embd))
        add(f"blk.{il}.attn_output.weight", matrix(s.n_embd, s.n_embd))
        add(f"blk.{il}.ffn_norm.weight", ones)
        add(f"blk.{il}.ffn_gate.weight", matrix(s.n_ff, s.n_embd))
        add(f"blk.{il}.ffn_up.weight", matrix(s.n_ff, s.n_embd))
        add(f"blk.{il}.ffn_down.weight", matrix(s.n_embd, s.n_ff))
    add("output_norm.weight", ones)
    # Word pieces only: control and byte tokens get zero logits, so the text stays valid UTF-8
    # and streams token by token (stray bytes make servers hold text back).
    output = matrix(s.n_vocab, s.n_embd) * 4
    output[: len(_SPECIALS) + 256] = 0
    add("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return out


def synthetic_model(spec: SyntheticSpec, directory: str | Path) -> Path:
    """The model for `spec` inside `directory`, written on first use."""
    path = Path(directory) / f"{spec.slug()}.gguf"
    if not path.exists():
        write_synthetic(path, spec)
    return path
