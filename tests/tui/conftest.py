"""Fixtures for the app's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app never reaches for the network in tests."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
