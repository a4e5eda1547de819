"""Model specs, quant-tag selection and the GGUF header parser: pure functions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum_tui.engine.gguf_info import inspect_model, split_part, split_part_name, split_parts
from quorum_tui.engine.ggufheader import NeedMore, parse_header
from quorum_tui.errors import QuorumError
from quorum_tui.models.hub import RemoteFile, RepoListing, model_groups, quant_tag, select
from quorum_tui.models.spec import HubSpec, LocalSpec, UrlSpec, parse_spec
from tests.models.conftest import header_info


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("owner/repo:Q4_K_M", HubSpec("owner/repo", tag="Q4_K_M")),
        ("owner/repo", HubSpec("owner/repo")),
        ("owner/repo@v2:q8_0", HubSpec("owner/repo", tag="q8_0", revision="v2")),
        ("owner/repo/sub/dir/m-Q8_0.gguf", HubSpec("owner/repo", filename="sub/dir/m-Q8_0.gguf")),
        ("hf://owner/repo:F16", HubSpec("owner/repo", tag="F16")),
        (
            "https://huggingface.co/o/r/resolve/main/x/m.gguf?download=true",
            HubSpec("o/r", filename="x/m.gguf"),
        ),
        (
            "https://hf.co/o/r/blob/abc123/m.gguf",
            HubSpec("o/r", filename="m.gguf", revision="abc123"),
        ),
        ("https://example.com/models/m.gguf", UrlSpec("https://example.com/models/m.gguf")),
        ("./m.gguf", LocalSpec(Path("m.gguf"))),
        ("/abs/m.gguf", LocalSpec(Path("/abs/m.gguf"))),
        ("m.gguf", LocalSpec(Path("m.gguf"))),
    ],
)
def test_parse_spec(text: str, expected: object) -> None:
    assert parse_spec(text) == expected


def test_existing_local_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "repo").write_text("x")
    assert parse_spec("owner/repo") == LocalSpec(Path("owner/repo"))


def test_bad_specs() -> None:
    with pytest.raises(QuorumError, match="no model given"):
        parse_spec("  ")
    with pytest.raises(QuorumError, match="no host"):
        parse_spec("https:///m.gguf")
    assert UrlSpec("https://h/a/b%20c.gguf?x=1").filename == "b c.gguf"


def files(*names: str) -> RepoListing:
    return RepoListing("o/r", "c" * 40, tuple(RemoteFile(n, 10) for n in names))


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("Llama-3.2-1B-Instruct-Q4_K_M", "Q4_K_M"),
        ("model.Q8_0", "Q8_0"),
        ("m-UD-Q4_K_XL", "UD-Q4_K_XL"),
        ("m-IQ2_XXS", "IQ2_XXS"),
        ("m-bf16", "bf16"),
        ("sub/m-f16", "f16"),
        ("plain", None),
    ],
)
def test_quant_tag(key: str, tag: str | None) -> None:
    assert quant_tag(key) == tag


def test_select_by_tag() -> None:
    listing = files(
        "README.md",
        "m-Q4_K_M.gguf",
        "m-Q4_K_S.gguf",
        "m-Q4_K.gguf",
        "mmproj-m-F16.gguf",
        "big/m-Q8_0-00001-of-00002.gguf",
        "big/m-Q8_0-00002-of-00002.gguf",
    )
    assert [f.name for f in select(HubSpec("o/r", tag="q4_k"), listing).files] == ["m-Q4_K.gguf"]
    assert select(HubSpec("o/r", tag="Q4_K_M"), listing).files[0].name == "m-Q4_K_M.gguf"
    assert select(HubSpec("o/r"), listing).files[0].name == "m-Q4_K_M.gguf"
    split = select(HubSpec("o/r", tag="Q8_0"), listing)
    assert [f.name for f in split.files] == [
        "big/m-Q8_0-00001-of-00002.gguf",
        "big/m-Q8_0-00002-of-00002.gguf",
    ]
    assert split.size == 20
    named = select(HubSpec("o/r", filename="big/m-Q8_0-00002-of-00002.gguf"), listing)
    assert len(named.files) == 2
    with pytest.raises(
        QuorumError, match=r"no F16 model; it has .*Q8_0 \(big/m-Q8_0 \(2 parts\)\)"
    ):
        select(HubSpec("o/r", tag="F16"), listing)
    assert [g.key for g in model_groups(list(listing.files))] == [
        "big/m-Q8_0",
        "m-Q4_K",
        "m-Q4_K_M",
        "m-Q4_K_S",
    ]


def test_select_without_ggufs() -> None:
    with pytest.raises(QuorumError, match="has no GGUF model files"):
        select(HubSpec("o/r", tag="Q8_0"), files("README.md", "model.safetensors"))
    with pytest.raises(QuorumError, match="several models: add a quant tag"):
        select(HubSpec("o/r"), files("a-Q8_0.gguf", "a-F16.gguf"))


def test_split_part_names() -> None:
    assert split_part("big/M-Q8_0-00002-OF-00003.GGUF") == ("big/M-Q8_0", 2, 3)
    assert split_part("m-Q8_0.gguf") is None
    assert split_part_name("m", 2, 3) == "m-00002-of-00003.gguf"
    first, second = Path("d/m-00001-of-00002.gguf"), Path("d/m-00002-of-00002.gguf")
    assert split_parts(first) == [first, second]
    assert split_parts(second) == [second]


def test_header_parser_matches_gguf_reader(make_model: Callable[..., Path]) -> None:
    for dtype in ("f32", "f16", "q8_0"):
        path = make_model(n_layers=2, dtype=dtype)
        header = parse_header(path.read_bytes())
        assert header_info([path]) == inspect_model(path)
        assert header.version == 3 and len(header.tensors) == 2 * 9 + 3


def test_header_parser_on_truncated_and_bad_bytes(tiny_model: Path) -> None:
    data = tiny_model.read_bytes()
    full = parse_header(data)
    with pytest.raises(NeedMore) as more:
        parse_header(data[:100])
    assert 100 < more.value.size <= full.data_start
    with pytest.raises(QuorumError, match="not a GGUF file"):
        parse_header(b"PK\x03\x04" + data[4:])
    with pytest.raises(QuorumError, match="version 9 is not supported"):
        parse_header(b"GGUF\x09\x00\x00\x00" + data[8:])
    cut = tiny_model.parent / "cut.gguf"
    cut.write_bytes(data[:2000])
    with pytest.raises(QuorumError, match="corrupt or truncated GGUF file"):
        inspect_model(cut)
    cut.write_bytes(data[: full.data_start + 10])
    with pytest.raises(QuorumError, match="truncated"):
        header_info([cut])


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0, max_value=20_000), flip=st.integers(0, 255))
def test_header_parser_never_crashes(tiny_model: Path, cut: int, flip: int) -> None:
    data = bytearray(tiny_model.read_bytes()[:cut])
    if len(data) > 40:
        data[cut // 2] ^= flip
    with contextlib.suppress(NeedMore, QuorumError):
        parse_header(bytes(data))
