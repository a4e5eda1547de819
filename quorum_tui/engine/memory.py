"""Memory a stage needs: weights + KV cache for every slot's context + a compute allowance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.plan import LayerPlan
from quorum_tui.engine.settings import DEFAULT_SLOTS
from quorum_tui.units import human_bytes

UBATCH = 512
"""llama.cpp's default micro-batch: the compute buffers are sized for it."""
ACTIVATION_COPIES = 8
"""Activations of width n_embd (and n_ff) alive at once in a layer's graph, roughly."""


@dataclass(frozen=True)
class StageMemory:
    weights: int
    kv_cache: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def compute_bytes(info: ModelInfo, holds_output: bool, ctx: int) -> int:
    """An allowance for llama.cpp's compute buffer on one device."""
    width = max(info.n_embd, info.n_ff)
    activations = UBATCH * width * 4 * ACTIVATION_COPIES
    attention = UBATCH * min(ctx, 4096) * 4 * max(info.n_head, 1) // 8
    logits = UBATCH * info.n_vocab * 4 if holds_output else 0
    return activations + attention + logits


def stage_memory(
    info: ModelInfo,
    plan: LayerPlan,
    ctx: int,
    slots: int = DEFAULT_SLOTS,
    draft: ModelInfo | None = None,
) -> list[StageMemory]:
    """The estimate for every stage of `plan`, coordinator first, with `ctx` tokens per slot;
    a draft model for speculation lives whole on the coordinator."""
    out = []
    for index, stage in enumerate(plan.stages):
        weights = sum(info.layer_bytes[i] for i in stage.layers)
        holds_output = index == plan.output_stage
        if holds_output:
            weights += info.output_bytes
        if index == 0:
            weights += info.embedding_bytes
        kv = stage.count * ctx * slots * info.kv_bytes_per_token_per_layer
        busy = stage.count > 0 or holds_output
        compute = compute_bytes(info, holds_output, ctx) if busy else 0
        if index == 0 and draft is not None:
            extra = whole_model_memory(draft, ctx, slots)
            weights, kv, compute = (
                weights + extra.weights,
                kv + extra.kv_cache,
                compute + extra.compute,
            )
        out.append(StageMemory(weights, kv, compute))
    return out


def whole_model_memory(info: ModelInfo, ctx: int, slots: int = DEFAULT_SLOTS) -> StageMemory:
    """What running the whole model in one process needs."""
    return StageMemory(
        info.weight_bytes,
        info.n_layers * ctx * slots * info.kv_bytes_per_token_per_layer,
        compute_bytes(info, True, ctx),
    )


def misfits(
    info: ModelInfo,
    plan: LayerPlan,
    free: Sequence[int | None],
    ctx: int,
    slots: int = DEFAULT_SLOTS,
    draft: ModelInfo | None = None,
) -> list[str]:
    """Each stage of `plan` that needs more than its `free` bytes (coordinator first; None:
    unknown), said with what it needs and what it has."""
    out = []
    needs = stage_memory(info, plan, ctx, slots, draft)
    for stage, need, have in zip(plan.stages, needs, free, strict=True):
        if have is None or need.total <= have:
            continue
        where = f" ({stage.endpoint})" if stage.endpoint else ""
        out.append(
            f"{stage.name}{where} needs {human_bytes(need.total)} for {stage.describe()} "
            f"(weights {human_bytes(need.weights)}, KV cache {human_bytes(need.kv_cache)} for "
            f"{ctx} tokens x {slots} slots, compute {human_bytes(need.compute)}) and has "
            f"{human_bytes(have)} free"
        )
    return out
