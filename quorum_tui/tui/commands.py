"""Quorum's commands in the command palette (ctrl+p)."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("Cluster: show hosts", "The hosts table with state, CPU, memory and RTT", "tab('cluster')"),
    ("Layers: show the layer map", "Drag or key the boundaries between stages", "tab('layers')"),
    ("Models: show models", "Cached models, preview and download", "tab('models')"),
    ("Chat: open the chat", "Talk to the model the coordinator serves", "tab('chat')"),
    ("Apply the plan", "(Re)start the coordinator with the current plan", "apply"),
    ("Stop the coordinator", "Stop serving; the workers keep running", "stop_coordinator"),
    ("Auto plan", "Restore the planner's proposal", "auto_plan"),
    ("Probe the workers now", "Refresh every host's state and telemetry", "refresh"),
    ("Start the local demo cluster", "Local workers and a small model", "demo"),
    ("Add a host", "A new host in the cluster file", "add_host"),
    ("Show the log", "Errors and events so far", "toggle_log"),
    ("Keys", "Every key binding", "help"),
)
"""(title, help, app action)."""


class QuorumCommands(Provider):
    """Each Quorum command runs an app action."""

    async def discover(self) -> Hits:
        for title, text, action in COMMANDS:
            yield DiscoveryHit(title, partial(self.app.run_action, action), help=text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, text, action in COMMANDS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(
                    score, matcher.highlight(title), partial(self.app.run_action, action), help=text
                )
