"""Speculative decoding keeps greedy text, and a draft must share the target's vocabulary."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from quorum_tui.cli import main
from quorum_tui.deploy.deployment import Deployment, Prepared, Target
from quorum_tui.engine.completion import CompletionRequest
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.engine.memory import whole_model_memory
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.errors import QuorumError
from quorum_tui.wire import parse_metrics

REWRITE = (
    "def area(width, height):\n    return width * height\n\n\n"
    "def perimeter(width, height):\n    return 2 * (width + height)\n\n\n"
    "# The same two functions again, unchanged:\n\n"
)


async def greedy(
    model: Path, settings: EngineSettings, workers: Sequence[WorkerRef], tokens: int = 96
) -> tuple[str, dict[str, float]]:
    """The greedy text of `model` over `workers`, and the drafts llama-server counted."""
    info = inspect_model(model)
    plan = LayerPlan.even(info.n_layers, list(workers))
    out = io.StringIO()
    metered = replace(settings, server_args=("--metrics",))
    async with Deployment(settings=metered) as deployment:
        base = await deployment.start(Prepared(model, info, plan))
        await deployment.run(CompletionRequest(REWRITE, tokens), out)
        async with httpx.AsyncClient(timeout=10) as http:
            metrics = parse_metrics((await http.get(f"{base}/metrics")).text)
    return out.getvalue(), metrics


async def test_ngram_speculation_keeps_the_greedy_text(
    real_model_file: Path, shared_workers: LocalCluster
) -> None:
    workers = shared_workers.refs[:2]
    plain, _ = await greedy(real_model_file, EngineSettings(slots=1), workers)
    spec, metrics = await greedy(real_model_file, EngineSettings(slots=1, spec="ngram"), workers)
    assert spec == plain
    assert metrics.values["spec_decode_num_accepted_tokens_total"] > 0, "nothing was speculated"


async def test_the_target_as_its_own_draft_keeps_the_greedy_text(
    real_model_file: Path, shared_workers: LocalCluster
) -> None:
    workers = shared_workers.refs[:2]
    settings = EngineSettings(slots=1, spec="draft", draft=str(real_model_file))
    plain, _ = await greedy(real_model_file, EngineSettings(slots=1), workers, 48)
    spec, metrics = await greedy(real_model_file, settings, workers, 48)
    assert spec == plain
    drafted = metrics.values["spec_decode_num_draft_tokens_total"]
    assert drafted > 0 and metrics.values["spec_decode_num_accepted_tokens_total"] > 0.9 * drafted


def with_other_tokens(source: Path, dest: Path) -> Path:
    """A copy of `source` whose vocabulary has as many tokens, two of them swapped."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(dest, "llama")
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = f.contents()
        if name == "tokenizer.ggml.tokens":
            value[10], value[11] = value[11], value[10]
        vtype = f.types[0]
        writer.add_key_value(
            name, value, vtype, f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        )
    for t in reader.tensors:
        writer.add_tensor(t.name, np.array(t.data), raw_shape=None, raw_dtype=None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


@pytest.mark.parametrize("other", ["another-size", "same-size-other-tokens"])
async def test_a_draft_with_another_vocabulary_is_refused_before_anything_loads(
    make_model: Callable[..., Path], quorum_dirs: dict[str, Path], tmp_path: Path, other: str
) -> None:
    target = make_model(n_layers=4)
    if other == "another-size":
        draft = make_model(n_layers=2, n_vocab=600)
    else:
        draft = with_other_tokens(make_model(n_layers=2), tmp_path / "swapped.gguf")
        assert inspect_model(draft).n_vocab == inspect_model(target).n_vocab
    assert inspect_model(draft).vocab_digest != inspect_model(target).vocab_digest
    settings = EngineSettings(spec="draft", draft=str(draft))
    async with Deployment(Target(), settings) as deployment:
        with pytest.raises(QuorumError, match="another vocabulary") as refused:
            await deployment.prepare(str(target))
        assert deployment.coordinator is None
    assert draft.name in str(refused.value) and "tokenizer" in str(refused.value)
    if other != "another-size":
        assert "the same count but different tokens" in str(refused.value)
    logs = quorum_dirs["data"] / "logs"
    assert not logs.exists() or not list(logs.glob("coordinator-*"))


def test_a_draft_of_the_same_vocabulary_is_accepted_and_planned_on_the_coordinator(
    make_model: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    target = make_model(n_layers=4)
    draft = make_model(n_layers=2)
    args = ["plan", str(target), "--worker", "127.0.0.1:1", "--split", "1,3", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*args, "--draft", str(draft)]) == 0
    drafted = json.loads(capsys.readouterr().out)
    extra = whole_model_memory(inspect_model(draft), 2048, 4).total
    coordinator = [s["memory"]["total"] for s in (plain["stages"][0], drafted["stages"][0])]
    assert coordinator[1] - coordinator[0] == extra
    assert drafted["speculation"] == "draft" and drafted["draft"]["n_layers"] == 2
    assert "--spec-draft-model" in drafted["llama_server"]
    assert drafted["stages"][1]["memory"] == plain["stages"][1]["memory"]


def test_bad_speculation_settings_say_what_to_do() -> None:
    with pytest.raises(QuorumError, match="needs --draft MODEL"):
        EngineSettings(spec="draft")
    with pytest.raises(QuorumError, match="give one of off, ngram, draft"):
        EngineSettings(spec="maybe")
