"""Telemetry parsing and the coordinator's own sample (remote sampling runs in test_bringup)."""

from __future__ import annotations

import pytest

from quorum_tui.cluster.telemetry import COORDINATOR, parse_sample, sample_local

PROC = """\
cpu  100 0 100 800 0 0 0 0 0 0
cpu  150 0 150 900 0 0 0 0 0 0
MemTotal:       16000 kB
MemAvailable:    4000 kB
0.50 0.25 0.10 1/100 12345
"""


def test_parse_sample() -> None:
    sample = parse_sample("h", PROC)
    assert sample.cpu_percent == pytest.approx(50.0)
    assert sample.mem_total == 16000 * 1024 and sample.mem_available == 4000 * 1024
    assert sample.mem_used == 12000 * 1024
    assert sample.load == (0.5, 0.25, 0.1)
    assert sample.to_json()["mem_used"] == 12000 * 1024


def test_parse_sample_rejects_garbage() -> None:
    with pytest.raises((ValueError, IndexError, KeyError)):
        parse_sample("h", "cpu 1 2\n")


async def test_sample_local() -> None:
    sample = await sample_local(0.1)
    assert sample.host == COORDINATOR and sample.error is None
    assert 0 <= sample.cpu_percent <= 100 and 0 < sample.mem_available <= sample.mem_total
