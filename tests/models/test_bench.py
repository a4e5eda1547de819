"""`quorum bench download` runs end to end (its numbers are for people, not assertions)."""

from __future__ import annotations

import argparse
import json

import pytest

from quorum_tui.bench.download import cmd_bench_download
from quorum_tui.errors import QuorumError


def test_bench_download_reports_both_copies(capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_bench_download(argparse.Namespace(json=True, size=4, rounds=2)) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bytes"] == 4 << 20 and result["rounds"] == 2
    for name in ("plain", "quorum"):
        assert len(result[name]["rates"]) == 2 and result[name]["best"] > 0
    assert result["ratio_best"] == result["quorum"]["best"] / result["plain"]["best"]
    plain, ours = result["plain"]["rates"], result["quorum"]["rates"]
    assert result["ratio"] == pytest.approx((ours[0] / plain[0] + ours[1] / plain[1]) / 2)
    assert cmd_bench_download(argparse.Namespace(json=False, size=1, rounds=1)) == 0
    assert "ratio quorum/plain, median of the paired rounds" in capsys.readouterr().out


def test_bench_download_rejects_bad_sizes() -> None:
    with pytest.raises(QuorumError, match="at least 1"):
        cmd_bench_download(argparse.Namespace(json=True, size=0, rounds=1))
