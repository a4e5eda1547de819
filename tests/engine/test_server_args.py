"""llama-server's own options: passed through, owned ones refused, memory ones counted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum_tui.cli import main, parse_args
from quorum_tui.cluster.inventory import parse_inventory
from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.llama_server import ServerOptions, server_argv
from quorum_tui.engine.memory import stage_memory
from quorum_tui.engine.plan import LayerPlan, WorkerRef
from quorum_tui.engine.server_args import KV_TYPES, OWNED, ServerArgs, as_loaded
from quorum_tui.engine.settings import EngineSettings
from quorum_tui.errors import QuorumError


def write_adapter(
    path: Path, layers: list[int], n_embd: int = 64, rank: int = 4, arch: str = "llama"
) -> Path:
    """A LoRA adapter GGUF adapting attn_q of `layers` (f32, rank `rank`)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for index in layers:
        a = np.zeros((rank, n_embd), dtype=np.float32)
        b = np.zeros((n_embd, rank), dtype=np.float32)
        writer.add_tensor(f"blk.{index}.attn_q.weight.lora_a", a)
        writer.add_tensor(f"blk.{index}.attn_q.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("option", sorted(OWNED))
def test_every_owned_option_is_refused_with_what_to_use_instead(option: str) -> None:
    with pytest.raises(QuorumError) as caught:
        ServerArgs.parse(["--temp", "0.5", option, "x"])
    message = str(caught.value)
    assert option in message and OWNED[option] in message


def test_other_options_pass_through_in_order_and_win_over_quorums() -> None:
    args = ["--temp", "0.5", "--no-jinja", "--chat-template", "chatml", "--no-webui"]
    server = ServerArgs.parse([*args, "--alias", "mine", "--metrics"])
    assert server.argv == tuple(args)
    assert server.alias == "mine" and server.metrics
    plan = LayerPlan.from_counts(5, [1, 4], [WorkerRef("w1", "127.0.0.1:1")])
    options = ServerOptions.from_settings(
        EngineSettings(server_args=tuple(args)), 1, Path("/m/model.gguf")
    )
    argv = server_argv("/m/model.gguf", plan, options, binary=Path("/bin/llama-server"))
    assert argv[-len(args) :] == args
    assert argv.index("--jinja") < argv.index("--no-jinja")
    assert argv[argv.index("--alias") + 1] == "model.gguf"


def test_the_alias_names_the_model_and_the_last_one_wins() -> None:
    settings = EngineSettings(server_args=("-a", "first", "--alias", "second"))
    options = ServerOptions.from_settings(settings, 1, Path("/m/model.gguf"))
    assert options.alias == "second"
    assert "first" not in options.extra and "second" not in options.extra


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--alias"], "--alias needs a value"),
        (["-ctk", "q3_k"], "KV cache types are"),
        (["--lora", "/nowhere/adapter.gguf"], "is not a file"),
        (["--lora-scaled", "/nowhere/a.gguf"], "FILE:SCALE"),
    ],
)
def test_malformed_options_name_what_is_wrong(args: list[str], needle: str) -> None:
    with pytest.raises(QuorumError, match=needle):
        ServerArgs.parse(args)


@given(
    st.lists(
        st.sampled_from(
            [["--temp", "0.7"], ["--alias", "a b"], ["-ctk", "q8_0"], ["-ctv", "f32"],
             ["--metrics"], ["--no-slots"], ["--seed", "42"], ["--jinja"],
             ["--chat-template-file", "t.jinja"], ["--control-vector-scaled", "v:0.5"]]
        ),
        max_size=6,
    )
)  # fmt: skip
def test_reading_options_again_changes_nothing(groups: list[list[str]]) -> None:
    server = ServerArgs.parse([a for g in groups for a in g])
    again = ServerArgs.parse(server.argv)
    assert again.argv == server.argv
    assert (again.cache_k, again.cache_v) == (server.cache_k, server.cache_v)


@pytest.mark.parametrize("k", sorted(KV_TYPES))
@pytest.mark.parametrize("v", sorted(KV_TYPES))
def test_kv_cache_types_change_what_a_stage_needs(
    k: str, v: str, make_model: Callable[..., Path]
) -> None:
    info = inspect_model(make_model(n_layers=4, n_embd=128, n_head=2))
    loaded = as_loaded(info, ServerArgs.parse(["-ctk", k, "-ctv", v]))
    width = 128 // 2 * 2
    expected = sum(width // KV_TYPES[t][0] * KV_TYPES[t][1] for t in (k, v))
    assert loaded.kv_bytes_per_token_per_layer == expected
    plan = LayerPlan.from_counts(4, [1, 3], [WorkerRef("w1", "127.0.0.1:1")])
    f16 = stage_memory(info, plan, 512, 2)
    now = stage_memory(loaded, plan, 512, 2)
    for before, after, layers in zip(f16, now, (1, 3), strict=True):
        assert after.kv_cache == layers * 512 * 2 * expected
        assert after.weights == before.weights
        assert (after.kv_cache < before.kv_cache) == (expected < info.kv_bytes_per_token_per_layer)


def test_a_quantized_cache_the_heads_cannot_hold_is_refused(
    make_model: Callable[..., Path],
) -> None:
    info = inspect_model(make_model(n_layers=2, n_embd=64, n_head=8))
    with pytest.raises(QuorumError, match=r"-ctk q8_0: .*head size \(8\)"):
        as_loaded(info, ServerArgs.parse(["-ctk", "q8_0"]))


def test_lora_adapters_add_to_the_layers_they_adapt(
    make_model: Callable[..., Path], tmp_path: Path
) -> None:
    info = inspect_model(make_model(n_layers=5))
    adapter = write_adapter(tmp_path / "lora.gguf", [0, 3])
    loaded = as_loaded(info, ServerArgs.parse(["--lora-scaled", f"{adapter}:0.5"]))
    each = 2 * 4 * 64 * 4
    assert [b - a for a, b in zip(info.layer_bytes, loaded.layer_bytes, strict=True)] == [
        each, 0, 0, each, 0,
    ]  # fmt: skip
    assert loaded.kv_bytes_per_token_per_layer == info.kv_bytes_per_token_per_layer
    too_deep = write_adapter(tmp_path / "deep.gguf", [7])
    with pytest.raises(QuorumError, match="adapts layer 7, but the model has 5 layers"):
        as_loaded(info, ServerArgs.parse(["--lora", str(too_deep)]))
    other = write_adapter(tmp_path / "other.gguf", [0], arch="qwen2")
    with pytest.raises(QuorumError, match="is for qwen2, but the model is llama"):
        as_loaded(info, ServerArgs.parse(["--lora", str(other)]))
    with pytest.raises(QuorumError, match="is not a LoRA adapter"):
        as_loaded(info, ServerArgs.parse(["--lora", info.path]))


def test_the_cluster_file_carries_options_and_the_command_line_wins(tmp_path: Path) -> None:
    file = tmp_path / "cluster.toml"
    inventory = parse_inventory('server_args = "--alias team -ctk f32"\n', file)
    settings = EngineSettings(server_args=("--alias", "mine")).with_server_args(
        inventory.server_args
    )
    assert settings.server.alias == "mine" and settings.server.cache_k == "f32"
    listed = parse_inventory('server_args = ["--temp", "0.1"]\n', file)
    assert listed.server_args == ("--temp", "0.1")
    with pytest.raises(QuorumError, match=rf"{file}:2: server_args: .*--rpc is Quorum's"):
        parse_inventory('tunnel_client = "openssh"\nserver_args = "--rpc 1.2.3.4:5"\n', file)
    with pytest.raises(QuorumError, match="server_args: must be a string"):
        parse_inventory("server_args = 3\n", file)


def test_options_after_the_double_dash_reach_the_settings() -> None:
    args = parse_args(["serve", "m.gguf", "--port", "1", "--", "--temp", "0.2", "--", "x"])
    assert args.server_args == ["--temp", "0.2", "--", "x"] and args.port == 1
    assert not hasattr(parse_args(["serve", "m.gguf"]), "server_args")


def test_an_owned_option_stops_the_command_with_what_to_use(
    capsys: pytest.CaptureFixture[str], tiny_model: Path
) -> None:
    code = main(["plan", str(tiny_model), "--", "-ngl", "99"])
    err = capsys.readouterr().err
    assert code == 1
    assert "-ngl is Quorum's" in err and "--split" in err


def test_relative_paths_are_made_absolute_from_where_quorum_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    server = ServerArgs.parse(
        ["--chat-template-file", "t/a.jinja", "--control-vector-scaled", "v1.gguf:0.5,/abs/v2:1",
         "--media-path", "/already/absolute", "--temp", "0.5"]
    )  # fmt: skip
    assert server.argv == (
        "--chat-template-file", f"{tmp_path}/t/a.jinja",
        "--control-vector-scaled", f"{tmp_path}/v1.gguf:0.5,/abs/v2:1",
        "--media-path", "/already/absolute", "--temp", "0.5",
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, said",
    [
        (["--chat-template-file", "nope.jinja"], "failed to open file '{cwd}/nope.jinja'"),
        (["--no-such-option"], "invalid argument: --no-such-option"),
    ],
)
def test_an_option_llama_server_refuses_is_named_in_the_error(
    args: list[str],
    said: str,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(tiny_model), "-p", "hi", "-n", "2", "--", *args]) == 1
    err = capsys.readouterr().err
    assert said.format(cwd=tmp_path) in err.splitlines()[-1]
