"""pytest plugin (``-p offline_plugin``) that keeps llama.cpp's server test suite offline.

The suite's session fixture starts every server preset once so that llama-server downloads their
models from Hugging Face; here the shim serves the local fixture instead, so that warm-up is
skipped.
"""

from __future__ import annotations

import sys

import pytest


def _no_downloads() -> None:
    """The presets' models are never downloaded in this run."""


def pytest_configure(config: pytest.Config) -> None:
    """Replace ``utils.ServerPreset.load_all`` before the suite's conftest uses it."""
    suite = str(config.rootpath)
    if suite not in sys.path:
        sys.path.insert(0, suite)
    import utils  # type: ignore[import-not-found]

    utils.ServerPreset.load_all = staticmethod(_no_downloads)
