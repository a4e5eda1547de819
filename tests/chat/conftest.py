"""One coordinator serving the tiny synthetic model, shared by the chat tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.served import Served, served_in_thread


@pytest.fixture(scope="package")
def server(tiny_model: Path) -> Iterator[Served]:
    with served_in_thread(tiny_model) as running:
        yield running
