"""Speculative decoding: several tokens per trip through the workers.

A sharded model pays at least one network round trip per worker for every token; verifying k
drafted tokens costs one pass through the pipeline, about the round trips of a single token.
Drafts come from n-grams of the text so far (no second model) or from a small draft model
with the target's vocabulary, placed whole on the coordinator so that drafting never crosses
the network. llama-server does the drafting and the verification; this module says how.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quorum_tui.engine.gguf_info import ModelInfo
from quorum_tui.errors import QuorumError

MODES = ("off", "ngram", "draft")
NGRAM_TYPE = "ngram-simple"
"""llama.cpp's n-gram speculation: it drafts what followed the last n-gram the last time."""
NGRAM_MATCH = 3
NGRAM_DRAFT = 8
"""Tokens matched and drafted: shorter than llama.cpp's defaults (12 and 48), whose long drafts
rarely held on rewrites (29% accepted); `quorum bench spec`'s rewrite accepts 98% of these."""
DRAFT_MAX = 8
"""Tokens a draft model proposes per pass."""


@dataclass(frozen=True)
class Speculation:
    """How llama-server speculates: not at all, from n-grams, or with a draft model."""

    mode: str = "off"
    draft: Path | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise QuorumError(f"--spec {self.mode}: give one of {', '.join(MODES)}")
        if (self.mode == "draft") != (self.draft is not None):
            raise QuorumError("speculation with a draft model needs --draft MODEL")

    def argv(self) -> list[str]:
        if self.mode == "ngram":
            return [
                "--spec-type", NGRAM_TYPE,
                "--spec-ngram-simple-size-n", str(NGRAM_MATCH),
                "--spec-ngram-simple-size-m", str(NGRAM_DRAFT),
            ]  # fmt: skip
        if self.mode == "draft":
            assert self.draft is not None
            return [
                "--spec-type", "draft-simple",
                "--spec-draft-model", str(self.draft.resolve()),
                "--spec-draft-device", "none",
                "--spec-draft-ngl", "0",
                "--spec-draft-n-max", str(DRAFT_MAX),
            ]  # fmt: skip
        return []


def check_draft(target: ModelInfo, draft: ModelInfo) -> None:
    """A draft must share the target's vocabulary, token for token."""
    same = target.n_vocab == draft.n_vocab and target.vocab_digest == draft.vocab_digest
    if not same or not target.vocab_digest:
        raise QuorumError(
            f"the draft {Path(draft.path).name} has another vocabulary than "
            f"{Path(target.path).name} ({draft.n_vocab} tokens against {target.n_vocab}"
            f"{', the same count but different tokens' if draft.n_vocab == target.n_vocab else ''}"
            "): a draft model must use the target's tokenizer, e.g. a smaller model of the "
            "same family"
        )
