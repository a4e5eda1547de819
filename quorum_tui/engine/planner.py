"""The auto-planner: a cost model of one token through the stages, and its exact minimiser.

For one sequence the stages run one after another, so the time per token is the coordinator's
fixed cost, plus every stage's compute (its layers times its time per layer, and the output
layer on the last stage), plus for every worker used one round trip and the transfer of the
activation in and the activation (or, on the last stage, the logits) back. Every stage must
fit its memory (engine.memory: weights + KV cache at the context + compute allowance).

This module is pure: profiles come from engine.measure (or from tests) and nothing here does
I/O. The solver is a dynamic programme over workers and layer counts; see `solve`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.engine.memory import StageMemory, compute_bytes, whole_model_memory
from quorum_tui.engine.plan import MAX_WORKERS, LayerPlan, WorkerRef
from quorum_tui.engine.settings import DEFAULT_SLOTS
from quorum_tui.engine.speculation import DRAFT_MAX
from quorum_tui.errors import QuorumError
from quorum_tui.units import human_bytes

FLOAT_BYTES = 4
"""Activations and logits cross the network as f32."""
SPECULATION_HELPS = 1.25
"""A predicted speed-up from speculation at least this large makes it worth saying so."""
BATCH_TOKEN_COST = 0.15
"""Each extra token of a verification batch costs this fraction of one token's compute (a
CPU stage reads its weights once per batch)."""
ASSUMED_ACCEPTANCE = 0.6
"""The draft acceptance the prediction assumes; `quorum bench spec` measures real ones."""
INF = math.inf


@dataclass(frozen=True)
class StageProfile:
    """What the planner knows about one stage: speed, link and memory.

    `layer_s` is seconds per token for one of this model's layers on this stage. `fixed_s` is
    the cost per token of using the stage at all: for the coordinator its own per-token work
    (always paid), for a worker the round trip and RPC overhead. `bandwidth` is bytes per
    second on the link (unused for the coordinator). `free` caps the stage's memory; None is
    unknown, which the planner treats as unlimited.

    `cached` says how much of each layer a load need not send (the worker's tensor cache).

    `curve`, when measured, holds (layer count, compute seconds per token) points: a stage
    holding few layers can keep them in the CPU's caches and run them faster per layer than
    many. Compute is interpolated between the points (from (0, 0)) and continues at `layer_s`
    per layer beyond the last one; without a curve it is `layer_s` per layer throughout.
    """

    name: str
    endpoint: str | None
    layer_s: float
    fixed_s: float = 0.0
    bandwidth: float = INF
    free: int | None = None
    curve: tuple[tuple[int, float], ...] = ()
    cached: tuple[int, ...] = ()
    """Bytes of each layer (then of the output layer) already in this worker's tensor cache:
    a load sends only the rest over its link. Empty: nothing is cached."""

    def compute(self, layers: float) -> float:
        """Compute seconds per token for `layers` (fractional for the output layer's share)."""
        x0, y0 = 0, 0.0
        for x1, y1 in self.curve:
            if layers <= x1:
                return y0 + (y1 - y0) * (layers - x0) / (x1 - x0)
            x0, y0 = x1, y1
        return y0 + self.layer_s * (layers - x0)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "endpoint": self.endpoint,
            "layer_s": self.layer_s,
            "fixed_s": self.fixed_s,
            "bandwidth": None if math.isinf(self.bandwidth) else self.bandwidth,
            "free": self.free,
            "curve": [list(point) for point in self.curve],
            "cached": list(self.cached),
        }


@dataclass(frozen=True)
class ClusterProfile:
    """The coordinator and the workers the planner may use, in the user's order."""

    coordinator: StageProfile
    workers: tuple[StageProfile, ...] = ()

    def __post_init__(self) -> None:
        if len(self.workers) > MAX_WORKERS:
            raise QuorumError(
                f"{len(self.workers)} workers given but llama.cpp accepts at most "
                f"{MAX_WORKERS}: drop some workers"
            )
        for p in (self.coordinator, *self.workers):
            counts = [x for x, _ in p.curve]
            times = [y for _, y in p.curve]
            if (
                not p.layer_s >= 0
                or not p.fixed_s >= 0
                or not p.bandwidth > 0
                or not all(y >= 0 for y in times)
                or any(b <= a for a, b in itertools.pairwise([0, *counts]))
            ):
                raise QuorumError(
                    f"the profile of {p.name} has a negative or missing speed: measure it again"
                )

    @property
    def stages(self) -> tuple[StageProfile, ...]:
        return (self.coordinator, *self.workers)

    def to_json(self) -> dict[str, Any]:
        return {
            "coordinator": self.coordinator.to_json(),
            "workers": [w.to_json() for w in self.workers],
        }


@dataclass(frozen=True)
class CostModel:
    """The model-dependent half of the cost: sizes of what moves and what is computed."""

    info: ModelInfo
    ctx: int
    slots: int = DEFAULT_SLOTS

    @property
    def output_factor(self) -> float:
        """The output layer's compute in units of an average layer (decode is memory-bound)."""
        mean = sum(self.info.layer_bytes) / max(len(self.info.layer_bytes), 1)
        return self.info.output_bytes / mean if mean else 0.0

    def compute_s(self, p: StageProfile, count: int, output: bool) -> float:
        return p.compute(count + (self.output_factor if output else 0.0))

    def link_s(self, p: StageProfile, output: bool) -> float:
        back = self.info.n_vocab if output else self.info.n_embd
        return p.fixed_s + (self.info.n_embd + back) * FLOAT_BYTES / p.bandwidth

    def load_bytes(self, p: StageProfile, first: int, count: int, output: bool) -> int:
        """Bytes a load sends to worker `p` for these layers: what its cache lacks."""
        info = self.info
        sizes = [*info.layer_bytes[first : first + count]]
        cached = [p.cached[i] if i < len(p.cached) else 0 for i in range(first, first + count)]
        if output:
            sizes.append(info.output_bytes)
            cached.append(p.cached[info.n_layers] if len(p.cached) > info.n_layers else 0)
        return sum(max(size - have, 0) for size, have in zip(sizes, cached, strict=True))

    def worker_s(self, p: StageProfile, count: int, output: bool) -> float:
        """Per-token time of a worker stage; an unused worker costs nothing."""
        if count == 0:
            return 0.0
        return self.compute_s(p, count, output) + self.link_s(p, output)

    @functools.cached_property
    def prefix(self) -> list[int]:
        return [0, *itertools.accumulate(self.info.layer_bytes)]

    def memory(self, first: int, count: int, coordinator: bool, output: bool) -> StageMemory:
        """engine.memory.stage_memory for one stage, without building a plan."""
        info = self.info
        weights = self.prefix[first + count] - self.prefix[first]
        if output:
            weights += info.output_bytes
        if coordinator:
            weights += info.embedding_bytes
        kv = count * self.ctx * self.slots * info.kv_bytes_per_token_per_layer
        busy = count > 0 or output
        return StageMemory(weights, kv, compute_bytes(info, output, self.ctx) if busy else 0)

    def fits(
        self, p: StageProfile, first: int, count: int, coordinator: bool, output: bool
    ) -> bool:
        if p.free is None:
            return True
        return self.memory(first, count, coordinator, output).total <= p.free

    def window(self, count: int, heaviest: bool) -> int:
        """First layer of the heaviest (or lightest) run of `count` layers."""
        n = self.info.n_layers
        starts = range(n - count + 1)
        pick = max if heaviest else min
        return pick(starts, key=lambda f: (self.prefix[f + count] - self.prefix[f], -f))

    def worst_fits(self, p: StageProfile, count: int, output: bool) -> bool:
        """Whether `count` layers fit on a worker wherever they sit."""
        if output:
            return self.fits(p, self.info.n_layers - count, count, False, True)
        return self.fits(p, self.window(count, True), count, False, False)

    def position_matters(self, profile: ClusterProfile) -> bool:
        """Whether some worker fits some count at one position but not at another."""
        if len(set(self.info.layer_bytes)) <= 1:
            return False
        for p in profile.workers:
            for c in range(1, self.info.n_layers):
                heavy = self.fits(p, self.window(c, True), c, False, False)
                if heavy != self.fits(p, self.window(c, False), c, False, False):
                    return True
        return False


@dataclass(frozen=True)
class StageEstimate:
    """One stage of an explained plan."""

    name: str
    endpoint: str | None
    layers: tuple[int, int] | None
    output: bool
    compute_s: float
    link_s: float
    memory: StageMemory
    free: int | None
    load_bytes: int = 0
    """Weights a load sends over this stage's link (what its tensor cache lacks)."""
    load_s: float = 0.0

    @property
    def time_s(self) -> float:
        return self.compute_s + self.link_s

    @property
    def fits(self) -> bool:
        return self.free is None or self.memory.total <= self.free

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "endpoint": self.endpoint,
            "layers": list(self.layers) if self.layers else None,
            "output": self.output,
            "compute_s": self.compute_s,
            "link_s": self.link_s,
            "time_s": self.time_s,
            "memory": self.memory.to_json(),
            "free": self.free,
            "fits": self.fits,
            "load_bytes": self.load_bytes,
            "load_s": self.load_s,
        }


@dataclass(frozen=True)
class Explanation:
    """A plan with its predicted speed, per-stage time and memory, and a verdict in words."""

    plan: LayerPlan | None
    verdict: str
    """"local" (run on the coordinator alone), "sharded", or "too-big"."""
    per_token_s: float
    stages: tuple[StageEstimate, ...]
    base_s: float
    messages: tuple[str, ...] = ()
    local_tps: float | None = None
    shortfall: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted_tps(self) -> float:
        return 1.0 / self.per_token_s if self.per_token_s > 0 and self.plan else 0.0

    @property
    def load_s(self) -> float:
        """Seconds a load spends sending weights over the links (llama.cpp sends them one
        tensor after another)."""
        return sum(s.load_s for s in self.stages)

    @property
    def load_bytes(self) -> int:
        return sum(s.load_bytes for s in self.stages)

    @property
    def bottleneck(self) -> str | None:
        used = [s for s in self.stages if s.layers or s.output]
        if not used:
            return None
        worst = max(used, key=lambda s: s.time_s)
        return worst.name

    @property
    def link_share(self) -> float:
        """The share of each token's time spent on round trips and transfers."""
        links = sum(s.link_s for s in self.stages)
        return links / self.per_token_s if self.per_token_s > 0 else 0.0

    def speculative_tps(self, acceptance: float, drafted: int, draft_s: float = 0.0) -> float:
        """Tokens/s when each pass verifies `drafted` tokens, each accepted with probability
        `acceptance` until the first miss: a pass pays every stage's round trips once, the
        compute of a small batch, and the draft's own compute on the coordinator."""
        if not self.plan or self.per_token_s <= 0:
            return 0.0
        compute = sum(s.compute_s for s in self.stages)
        links = sum(s.link_s for s in self.stages)
        per_pass = (
            self.base_s + links + compute * (1 + BATCH_TOKEN_COST * drafted) + drafted * draft_s
        )
        a = min(max(acceptance, 0.0), 0.999)
        tokens = (1 - a ** (drafted + 1)) / (1 - a)
        return tokens / per_pass

    @property
    def speculation_gain(self) -> float:
        """Predicted speed-up of speculation at the assumed acceptance, DRAFT_MAX per pass."""
        plain = self.predicted_tps
        return self.speculative_tps(ASSUMED_ACCEPTANCE, DRAFT_MAX) / plain if plain else 0.0

    def speculation_line(self) -> str:
        share, gain = self.link_share, self.speculation_gain
        if gain >= SPECULATION_HELPS:
            return (
                f"speculation: round-trip bound ({share:.0%} of each token is round trips and "
                f"transfers): a pass verifies several drafted tokens for about one token's round "
                f"trips, about {gain:.1f}x at {ASSUMED_ACCEPTANCE:.0%} acceptance; try "
                "--spec ngram or --draft MODEL"
            )
        return (
            f"speculation: compute-bound (round trips are {share:.0%} of each token): a pass "
            f"of several tokens costs nearly their compute, about {gain:.1f}x at "
            f"{ASSUMED_ACCEPTANCE:.0%} acceptance, so it helps little"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "counts": list(self.plan.counts) if self.plan else None,
            "workers": [w.name for w in self.plan.workers] if self.plan else None,
            "summary": self.plan.summary() if self.plan else None,
            "predicted_tps": self.predicted_tps,
            "per_token_s": self.per_token_s,
            "base_s": self.base_s,
            "bottleneck": self.bottleneck,
            "local_tps": self.local_tps,
            "shortfall": self.shortfall,
            "stages": [s.to_json() for s in self.stages],
            "messages": list(self.messages),
            "round_trip_share": self.link_share,
            "load_bytes": self.load_bytes,
            "load_s": self.load_s,
            "speculation_gain": self.speculation_gain,
            "speculation_helps": self.speculation_gain >= SPECULATION_HELPS,
            **self.extra,
        }

    def lines(self) -> list[str]:
        """The explanation as text, one line each."""
        out = list(self.messages)
        if self.plan is None:
            return out
        out.append(f"plan: {self.plan.summary()}")
        out.append(
            f"predicted {self.predicted_tps:.1f} tokens/s "
            f"({self.per_token_s * 1000:.2f} ms per token, of which "
            f"{self.base_s * 1000:.2f} ms fixed on the coordinator)"
        )
        for s in self.stages:
            if not s.layers and not s.output:
                continue
            span = "-" if s.layers is None else f"{s.layers[0]}-{s.layers[1]}"
            have = "" if s.free is None else f" of {human_bytes(s.free)} free"
            out.append(
                f"  {s.name:<12} layers {span:<7}{' +output' if s.output else '':<8} "
                f"compute {s.compute_s * 1000:7.2f} ms  link {s.link_s * 1000:6.2f} ms  "
                f"memory {human_bytes(s.memory.total)}{have}"
            )
        if any(s.load_s for s in self.stages):
            out.append(
                f"loading sends {human_bytes(self.load_bytes)} of weights over the links "
                f"(about {self.load_s:.1f}s at their measured bandwidth; the rest is in the "
                "workers' tensor caches)"
            )
        if self.bottleneck:
            out.append(f"bottleneck: {self.bottleneck}")
        if self.verdict == "sharded":
            out.append(self.speculation_line())
        draft = self.extra.get("draft")
        if draft:
            out.append(
                f"with the draft {draft['name']} ({draft['draft_s'] * 1000:.2f} ms per drafted "
                f"token on the coordinator, {draft['drafted']} drafted per pass, acceptance "
                f"{draft['acceptance']:.0%} assumed): {draft['tps']:.1f} tokens/s"
            )
        return out


def explain(
    info: ModelInfo,
    ctx: int,
    profile: ClusterProfile,
    plan: LayerPlan,
    slots: int = DEFAULT_SLOTS,
) -> Explanation:
    """Predict the time per token and memory of any plan over (some of) the profiled stages."""
    cost = CostModel(info, ctx, slots)
    by_endpoint = {w.endpoint: w for w in profile.workers}
    stages = []
    total = profile.coordinator.fixed_s
    for index, stage in enumerate(plan.stages):
        if index == 0:
            p = profile.coordinator
        else:
            found = by_endpoint.get(stage.endpoint)
            if found is None:
                raise QuorumError(f"worker {stage.name} ({stage.endpoint}) was not measured")
            p = found
        output = index == plan.output_stage
        compute = cost.compute_s(p, stage.count, output)
        link = cost.link_s(p, output) if index and stage.count else 0.0
        total += compute + link
        layers = (stage.first, stage.first + stage.count - 1) if stage.count else None
        memory = cost.memory(stage.first, stage.count, index == 0, output)
        sent = cost.load_bytes(p, stage.first, stage.count, output) if index else 0
        load = sent / p.bandwidth if sent and p.bandwidth < INF else 0.0
        estimate = StageEstimate(
            stage.name, stage.endpoint, layers, output, compute, link, memory, p.free
        )
        stages.append(dataclasses.replace(estimate, load_bytes=sent, load_s=load))
    verdict = "local" if plan.output_stage == 0 else "sharded"
    return Explanation(plan, verdict, total, tuple(stages), profile.coordinator.fixed_s)


def with_draft(
    explanation: Explanation, profile: ClusterProfile, info: ModelInfo, draft: ModelInfo
) -> Explanation:
    """The explanation with the draft model's own compute in its prediction: the draft runs
    on the coordinator, at the coordinator's measured speed per byte of weights."""
    mean_layer = sum(info.layer_bytes) / max(len(info.layer_bytes), 1)
    draft_s = profile.coordinator.layer_s * draft.weight_bytes / mean_layer if mean_layer else 0.0
    tps = explanation.speculative_tps(ASSUMED_ACCEPTANCE, DRAFT_MAX, draft_s)
    entry = {
        "name": draft.name,
        "draft_s": draft_s,
        "drafted": DRAFT_MAX,
        "acceptance": ASSUMED_ACCEPTANCE,
        "tps": tps,
    }
    return dataclasses.replace(explanation, extra={**explanation.extra, "draft": entry})


def solve(
    info: ModelInfo,
    ctx: int,
    profile: ClusterProfile,
    slots: int = DEFAULT_SLOTS,
    keep: Sequence[LayerPlan] = (),
) -> Explanation:
    """The plan with the least predicted time per token that fits everywhere.

    The coordinator holds the first layers and may use any subset of the workers in any
    order; a worker given no layers is left out of the plan. With the coordinator's count
    fixed, the cost of a worker stage depends only on its count and on whether it holds the
    output layer, so for each choice of output stage a knapsack over the workers (count per
    worker, unused allowed) is exact, and the order of the other workers does not change the
    time. When whether a count fits a worker does not depend on where its layers sit (always
    so when all layers are the same size), that is the exact optimum over every subset, order
    and split. Otherwise, with at most SUBSET_LIMIT workers, `solve_exact` searches orders
    and positions exactly; beyond that the knapsack requires each count to fit at every
    position (safe), and the explanation says `exact: false`.
    """
    matters = CostModel(info, ctx, slots).position_matters(profile)
    if matters and len(profile.workers) <= SUBSET_LIMIT:
        best = solve_exact(info, ctx, profile, slots)
    else:
        best = solve_knapsack(info, ctx, profile, slots)
    exact = not matters or len(profile.workers) <= SUBSET_LIMIT
    fastest = _finish(info, ctx, profile, best, exact, slots)
    return prefer_cached(info, ctx, profile, fastest, keep, slots)


REPLAN_TOLERANCE = 0.1
"""A plan whose layers the workers already cache is kept over the fastest one when it is
predicted at most this much slower per token and loads faster."""


def prefer_cached(
    info: ModelInfo,
    ctx: int,
    profile: ClusterProfile,
    best: Explanation,
    keep: Sequence[LayerPlan],
    slots: int = DEFAULT_SLOTS,
) -> Explanation:
    """`best`, or the plan of `keep` (plans served before) that loads fastest, when it fits,
    loads faster and is within REPLAN_TOLERANCE of `best`'s time per token."""
    if best.plan is None:
        return best
    measured = {w.endpoint for w in profile.workers}
    chosen = best
    for plan in keep:
        if plan == best.plan or any(w.endpoint not in measured for w in plan.workers):
            continue
        other = explain(info, ctx, profile, plan, slots)
        slower = other.per_token_s / best.per_token_s - 1 if best.per_token_s > 0 else INF
        if (
            all(s.fits for s in other.stages)
            and slower <= REPLAN_TOLERANCE
            and other.load_s < chosen.load_s - 1e-9
        ):
            chosen = dataclasses.replace(
                other,
                messages=(
                    *best.messages,
                    f"kept {plan.summary()}, whose layers the workers already cache: it loads "
                    f"in about {other.load_s:.1f}s instead of {best.load_s:.1f}s for "
                    f"{best.plan.summary()}, and is predicted {max(slower, 0):.0%} slower per "
                    "token",
                ),
                local_tps=best.local_tps,
                extra=best.extra,
            )
    return chosen


SUBSET_LIMIT = 6
"""Up to this many workers, unequal layer sizes are planned by the exact subset search."""


Choice = tuple[float, list[int], list[int]]
"""(per-token seconds, counts coordinator first, indices of the workers used in order)."""


def _local_choice(cost: CostModel, coord: StageProfile, n: int) -> Choice | None:
    """The whole model on the coordinator, when it fits there."""
    if not cost.fits(coord, 0, n, True, True):
        return None
    return (coord.fixed_s + cost.compute_s(coord, n, True), [n], [])


def solve_knapsack(
    info: ModelInfo, ctx: int, profile: ClusterProfile, slots: int = DEFAULT_SLOTS
) -> Choice | None:
    cost = CostModel(info, ctx, slots)
    n = info.n_layers
    coord = profile.coordinator
    workers = profile.workers
    best = _local_choice(cost, coord, n)
    coord_s = [
        coord.fixed_s + cost.compute_s(coord, c0, False) if cost.fits(coord, 0, c0, True, False)
        else INF
        for c0 in range(n)
    ]  # fmt: skip
    stage_s = [_stage_costs(cost, p, n) for p in workers]
    for o, out_worker in enumerate(workers):
        others = [i for i in range(len(workers)) if i != o]
        table, choices = _knapsack([stage_s[i] for i in others], n)
        for co in range(1, n + 1):
            if not cost.worst_fits(out_worker, co, True):
                continue
            last_s = cost.worker_s(out_worker, co, True)
            for c0 in range(0, n - co + 1):
                rest = n - c0 - co
                total = coord_s[c0] + last_s + table[rest]
                if total < INF and (best is None or total < best[0] - 1e-12):
                    counts = _unwind(choices, rest)
                    used = [others[j] for j, c in enumerate(counts) if c]
                    best = (total, [c0, *(c for c in counts if c), co], [*used, o])
    return best


def _stage_costs(cost: CostModel, p: StageProfile, n: int) -> np.ndarray:
    """A non-output worker's time per token for each count 0..n (inf where it does not fit)."""
    out = [0.0]
    for c in range(1, n + 1):
        if not cost.worst_fits(p, c, False):
            out += [INF] * (n + 1 - c)
            break
        out.append(cost.worker_s(p, c, False))
    return np.asarray(out)


def _knapsack(costs: Sequence[np.ndarray], n: int) -> tuple[list[float], list[list[int]]]:
    """min over counts (>= 0, unused allowed) of the workers' summed time, for each total r."""
    table = np.asarray([0.0] + [INF] * n)
    choices: list[list[int]] = []
    r = np.arange(n + 1)[:, None]
    c = np.arange(n + 1)[None, :]
    below = c <= r
    rows = np.arange(n + 1)
    for stage_s in costs:
        values = np.where(below, table[np.clip(r - c, 0, n)] + stage_s[c], INF)
        pick = values.argmin(axis=1)
        table = values[rows, pick]
        choices.append([int(x) for x in pick])
    return [float(x) for x in table], choices


def _unwind(choices: list[list[int]], total: int) -> list[int]:
    counts = [0] * len(choices)
    for j in range(len(choices) - 1, -1, -1):
        counts[j] = choices[j][total]
        total -= counts[j]
    return counts


def solve_exact(
    info: ModelInfo, ctx: int, profile: ClusterProfile, slots: int = DEFAULT_SLOTS
) -> Choice | None:
    """Exact search over ordered worker subsets and layer ranges (DP over (subset, layer))."""
    cost = CostModel(info, ctx, slots)
    n = info.n_layers
    coord = profile.coordinator
    workers = profile.workers
    best = _local_choice(cost, coord, n)
    # state: (frozen set of used workers as a bitmask, next layer) -> (time, counts, order)
    frontier: dict[tuple[int, int], tuple[float, list[int], list[int]]] = {}
    for c0 in range(n):
        if cost.fits(coord, 0, c0, True, False):
            frontier[(0, c0)] = (coord.fixed_s + cost.compute_s(coord, c0, False), [c0], [])
    while frontier:
        nxt: dict[tuple[int, int], tuple[float, list[int], list[int]]] = {}
        for (mask, start), (time, counts, order) in frontier.items():
            for w, p in enumerate(workers):
                if mask >> w & 1:
                    continue
                last = n - start
                if cost.fits(p, start, last, False, True):
                    value = time + cost.worker_s(p, last, True)
                    if best is None or value < best[0] - 1e-12:
                        best = (value, [*counts, last], [*order, w])
                for c in range(1, last):
                    if not cost.fits(p, start, c, False, False):
                        break
                    value = time + cost.worker_s(p, c, False)
                    key = (mask | 1 << w, start + c)
                    if key not in nxt or value < nxt[key][0] - 1e-15:
                        nxt[key] = (value, [*counts, c], [*order, w])
        frontier = nxt
    return best


def brute_force(
    info: ModelInfo, ctx: int, profile: ClusterProfile, slots: int = DEFAULT_SLOTS
) -> Choice | None:
    """Every order of every subset of workers and every split: for tests of small cases."""
    cost = CostModel(info, ctx, slots)
    n = info.n_layers
    best: Choice | None = None
    indices = range(len(profile.workers))
    for k in range(len(profile.workers) + 1):
        for order in itertools.permutations(indices, k):
            for counts in compositions(n, k):
                refs = [WorkerRef(profile.workers[i].name, f"127.0.0.1:{i + 1}") for i in order]
                plan = LayerPlan.from_counts(n, counts, refs)
                if not _plan_fits(cost, profile, plan, list(order)):
                    continue
                value = _plan_time(cost, profile, plan, list(order))
                if best is None or value < best[0] - 1e-12:
                    best = (value, list(counts), list(order))
    return best


def compositions(n: int, k: int) -> list[list[int]]:
    """Coordinator count >= 0 and k worker counts >= 1 adding up to n."""
    out = []
    for c0 in range(n - k + 1) if k else [n]:
        if k == 0:
            out.append([n])
            continue
        for cuts in itertools.combinations(range(1, n - c0), k - 1):
            bounds = [0, *cuts, n - c0]
            out.append([c0, *(b - a for a, b in itertools.pairwise(bounds))])
    return out


def _plan_fits(cost: CostModel, profile: ClusterProfile, plan: LayerPlan, order: list[int]) -> bool:
    profiles = [profile.coordinator, *(profile.workers[i] for i in order)]
    return all(
        cost.fits(p, s.first, s.count, i == 0, i == plan.output_stage)
        for i, (p, s) in enumerate(zip(profiles, plan.stages, strict=True))
    )


def _plan_time(
    cost: CostModel, profile: ClusterProfile, plan: LayerPlan, order: list[int]
) -> float:
    total = profile.coordinator.fixed_s
    total += cost.compute_s(profile.coordinator, plan.stages[0].count, plan.output_stage == 0)
    for i, s in enumerate(plan.stages[1:], start=1):
        total += cost.worker_s(profile.workers[order[i - 1]], s.count, i == plan.output_stage)
    return total


def _finish(
    info: ModelInfo,
    ctx: int,
    profile: ClusterProfile,
    best: Choice | None,
    exact: bool,
    slots: int,
) -> Explanation:
    cost = CostModel(info, ctx, slots)
    coord = profile.coordinator
    local_ok = cost.fits(coord, 0, info.n_layers, True, True)
    local_s = coord.fixed_s + cost.compute_s(coord, info.n_layers, True)
    local_tps = 1.0 / local_s if local_ok and local_s > 0 else None
    if best is None:
        need = whole_model_memory(info, ctx, slots).total
        have = sum(p.free or 0 for p in profile.stages)
        short = max(need - have, 0)
        if short:
            why = (
                f"the model needs {human_bytes(need)} at context {ctx} x {slots} slots (weights, "
                f"KV cache and "
                f"compute) but the coordinator and the workers have {human_bytes(have)} free in "
                f"all: {human_bytes(short)} short. Add workers or memory, or lower --ctx or --slots"
            )
        else:
            why = (
                f"no split fits: in all there is {human_bytes(have)} free for "
                f"{human_bytes(need)}, but each stage also needs its own compute buffer and "
                "whole layers; add a worker or memory, or lower --ctx or --slots"
            )
        return Explanation(
            None, "too-big", INF, (), coord.fixed_s, (why,), None, max(short, 0), {"exact": exact}
        )
    value, counts, order = best
    refs = [WorkerRef(profile.workers[i].name, profile.workers[i].endpoint or "") for i in order]
    plan = LayerPlan.from_counts(info.n_layers, counts, refs)
    result = explain(info, ctx, profile, plan, slots)
    messages = []
    if not order:
        messages.append(
            "the model fits on the coordinator alone: run it locally; sharding it would be "
            "slower (every worker adds a network round trip per token)"
        )
    elif local_tps is not None:
        messages.append(
            f"the model fits on the coordinator alone ({local_tps:.1f} tokens/s predicted), "
            f"but this plan is predicted faster ({result.predicted_tps:.1f} tokens/s) from the "
            "measured speeds: its stages compute their shares faster than the coordinator "
            "computes the whole"
        )
    unused = [w.name for i, w in enumerate(profile.workers) if i not in order]
    if order and unused:
        messages.append(
            f"left out: {', '.join(unused)} (too slow to be worth a round trip, or not needed)"
        )
    return Explanation(
        plan,
        result.verdict,
        result.per_token_s,
        result.stages,
        result.base_s,
        tuple(messages),
        local_tps,
        0,
        {"exact": exact, "solver_s": value},
    )
