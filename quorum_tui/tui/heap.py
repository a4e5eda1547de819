"""Keep the garbage collector's full passes short while the app runs."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Move what start-up made (modules, styles, the screens) out of the collector's way.

    A full collection walks every tracked object. Once the app is up, most of them live until
    it exits, so after one collection they are frozen: later full passes walk only what was
    made since, and a streaming reply no longer stalls the screen for a whole-heap pass.
    """
    gc.collect()
    gc.freeze()


def thaw_heap() -> None:
    """Give what was frozen back to the collector once the app is done: a process that runs
    another app afterwards (the tests do) would otherwise keep the first one's cycles."""
    gc.unfreeze()
