"""Describe a model before pulling it: GGUF headers read over HTTP range requests."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from quorum_tui.cli import main
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.localcluster import LocalCluster, free_port
from quorum_tui.engine.memory import stage_memory
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.errors import QuorumError
from quorum_tui.models import preview as preview_mod
from quorum_tui.models.preview import preview
from quorum_tui.models.pull import pull
from quorum_tui.models.spec import parse_spec
from tests.models.conftest import REPO, SPLIT_REPO
from tests.models.hubserver import FakeHub


def see(text: str) -> preview_mod.Preview:
    return preview(text, parse_spec(text))


def test_remote_header_grows_until_it_has_the_header(
    hub: FakeHub, hub_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preview_mod, "FIRST_CHUNK", 2048)
    source = hub_files["tiny"] / "tiny-Q8_0.gguf"
    found = see(f"{REPO}:Q8_0")
    local = inspect_model(source)
    assert found.info == replace(local, path=f"{REPO}/tiny-Q8_0.gguf")
    assert (found.size, found.cached, found.files) == (
        source.stat().st_size,
        False,
        ("tiny-Q8_0.gguf",),
    )
    ranges = [r for m, p, r in hub.requests if p.startswith("/cdn/")]
    assert ranges[0] == "bytes=0-2047"
    assert len(ranges) > 1 and all(r and r.startswith("bytes=") for r in ranges)
    assert 0 < hub.sent["tiny-Q8_0.gguf"] < source.stat().st_size // 4


def test_split_model_preview_counts_every_part(hub: FakeHub, hub_files: dict[str, Path]) -> None:
    found = see(f"{SPLIT_REPO}:F32")
    whole = inspect_model(hub_files["split_source"])
    assert found.info.n_layers == 4
    assert found.info.layer_bytes == whole.layer_bytes
    assert found.info.output_bytes == whole.output_bytes
    assert found.size == sum(p.stat().st_size for p in hub_files["split"].iterdir())
    assert len(found.files) == 2


def test_preview_of_a_cached_model_reads_no_network(hub: FakeHub) -> None:
    pull(f"{REPO}:F16", parse_spec(f"{REPO}:F16"))
    before = len(hub.requests)
    found = see(f"{REPO}:f16")
    assert found.cached and found.info.quant == "F16"
    assert len(hub.requests) == before


def test_preview_errors(hub: FakeHub, hub_files: dict[str, Path]) -> None:
    hub.add_dir("quorum-test/gated", hub_files["tiny"], gated=True)
    with pytest.raises(QuorumError, match=r"gated repository.*HF_TOKEN"):
        see("quorum-test/gated:F16")
    with pytest.raises(QuorumError, match=r"no repository"):
        see("quorum-test/none:F16")
    hub.plain["notes.gguf"] = b"hello, this is not a model" * 10
    with pytest.raises(QuorumError, match=r"not a GGUF file"):
        see(f"{hub.url}/plain/notes.gguf")
    hub.plain["whole.gguf"] = (hub_files["tiny"] / "tiny-F16.gguf").read_bytes()
    hub.no_ranges.add("whole.gguf")
    with pytest.raises(QuorumError, match=r"does not answer range requests"):
        see(f"{hub.url}/plain/whole.gguf")
    hub.plain["cut.gguf"] = (hub_files["tiny"] / "tiny-F16.gguf").read_bytes()[:5000]
    with pytest.raises(QuorumError, match=r"ends inside its GGUF header"):
        see(f"{hub.url}/plain/cut.gguf")
    assert hub.sent["whole.gguf"] > 0


def test_url_preview(hub: FakeHub, hub_files: dict[str, Path]) -> None:
    hub.plain["m.gguf"] = (hub_files["tiny"] / "tiny-F32.gguf").read_bytes()
    found = see(f"{hub.url}/plain/m.gguf")
    assert (found.info.n_layers, found.info.quant) == (3, "F32")


def test_preview_command_with_an_unreachable_worker(
    hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    assert main(["preview", f"{REPO}:Q8_0", "--worker", endpoint, "--ctx", "512", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["n_layers"] == 3 and data["cached"] is False
    [coordinator, worker] = data["stages"]
    assert coordinator["layers"] is None and worker["layers"] == [0, 2]
    assert worker["status"] == "unreachable" and worker["fits"] is None
    assert worker["output"] is True and coordinator["output"] is False
    assert "no worker is listening" in worker["reason"]
    assert main(["pull", f"{REPO}:Q8_0", "--preview", "--worker", endpoint]) == 0
    out = capsys.readouterr().out
    assert "architecture    llama" in out and "layers          3" in out
    assert f"w1           {endpoint}" in out and "+output" in out
    assert "no worker is listening there" in out


def test_preview_plan_on_a_real_worker(
    hub: FakeHub,
    hub_files: dict[str, Path],
    local_cluster: LocalCluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    local_cluster.start(1)
    [ref] = local_cluster.refs
    endpoint = ref.endpoint
    assert main(["preview", f"{REPO}:F32", "--worker", endpoint, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    info = inspect_model(hub_files["tiny"] / "tiny-F32.gguf")
    plan = LayerPlan.even(3, [WorkerRef("w1", endpoint)])
    expected = [m.to_json() for m in stage_memory(info, plan, 2048)]
    assert [s["memory"] for s in data["stages"]] == expected
    assert data["stages"][1]["status"] == "ok" and data["stages"][1]["fits"] is True


def test_preview_command_errors(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", f"{REPO}:Q3_K", "--json"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("quorum: ") and "has no Q3_K model" in err and err[-1] == "\n"
    assert main(["preview", f"{REPO}:Q8_0", "--worker", "nonsense"]) == 1
    assert main(["preview", f"{REPO}:Q8_0", "--ctx", "0"]) == 1
