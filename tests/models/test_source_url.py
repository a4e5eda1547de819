"""A host fills its tensor cache from the model's own source (the Hub) with range requests for
only the tensors it will hold: checked against the tests' fake Hub."""

from __future__ import annotations

import io

import pytest

from quorum_tui.cluster import hostcache
from quorum_tui.cluster.caches import Source, fill_request
from quorum_tui.engine import weights
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.models.cache import source_url
from quorum_tui.models.pull import pull
from quorum_tui.models.spec import parse_spec
from tests.models.conftest import REPO, SPLIT_REPO
from tests.models.hubserver import FakeHub


@pytest.mark.parametrize("spec", [f"{REPO}:q8_0", f"{SPLIT_REPO}"])
def test_a_host_reads_only_its_layers_from_the_hub(
    hub: FakeHub, spec: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "HASH_THRESHOLD", 0)
    path = pull(spec, parse_spec(spec), None).path
    info = inspect_model(path)
    manifest = weights.manifest(path)
    found = source_url(path)
    assert found is not None
    url, headers = found
    assert "{file}" in url and url.startswith(hub.url)
    plan = LayerPlan.from_counts(info.n_layers, [0, 2, info.n_layers - 2], [
        WorkerRef("w1", "10.0.0.1:1"), WorkerRef("w2", "10.0.0.2:1")])  # fmt: skip
    mine = manifest.for_stage(plan, 1)
    assert mine and len(mine) < len(manifest.tensors)
    hub.requests.clear()
    request = fill_request(manifest, mine, Source("url", url, tuple(headers.items())))
    cache = tmp_path / "rpc-cache"  # type: ignore[operator]
    result = hostcache.fill(str(cache), request, io.BytesIO(), lambda _: None)
    assert result["written"] == len(mine)
    asked = sorted(r[2] for r in hub.requests if r[2] and r[1].startswith("/cdn/"))
    headers_read = sorted(f"bytes=0-{f.header_bytes - 1}" for f in manifest.files
                          if any(t.file == f.name for t in mine))  # fmt: skip
    tensors_read = sorted(f"bytes={t.offset}-{t.offset + t.size - 1}" for t in mine)
    assert asked == sorted(headers_read + tensors_read), "the header and its tensors, no more"
    for t in mine:
        assert (cache / t.fnv).read_bytes() == _bytes_of(path.parent / t.file, t.offset, t.size)


def _bytes_of(path: object, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:  # type: ignore[call-overload]
        f.seek(offset)
        return bytes(f.read(size))
