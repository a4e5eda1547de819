"""`quorum` alone opens the app; `quorum tui` and `quorum demo` check their arguments first."""

from __future__ import annotations

import pytest

from quorum_tui.cli import build_parser, main, open_app


def test_no_subcommand_opens_the_app() -> None:
    assert build_parser().parse_args([]).func is open_app


@pytest.mark.parametrize(
    ("argv", "words"),
    [(["tui", "--worker", "no-port-here"], "no-port-here"),
     (["tui", "--worker", "10.0.0.1:99999"], "99999"),
     (["demo", "--workers", "7"], "1 to 3"),
     (["demo", "--workers", "0"], "1 to 3")],
)  # fmt: skip
def test_bad_arguments_are_one_line_errors(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("quorum: ") and words in err
    assert len(err.strip().splitlines()) == 1
