"""Hosts reached over SSH as RPC workers (textual-free; the CLI and the TUI both use it).

- inventory: `load_inventory(path) -> Inventory(hosts: list[HostConfig])`, `add_host`,
  `remove_host`, `update_host`, `save_inventory` (comments kept), errors with file:line: key.
- bringup: `await bring_up(inv, BringUpOptions(prompt=..., on_event=...)) -> Cluster`
  (`.results`, `.workers` for plans, `.telemetry()`, `await .close()`), `check`, `down`.
- events: `HostEvent(host, state, reason, line)` for each state change or progress line;
  `HostKeyQuestion` for the async `prompt` that decides about unknown host keys.
- telemetry: `sample_all`, `watch(sessions)` -> rounds of `HostSample`.
"""
