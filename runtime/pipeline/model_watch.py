"""`run --model-watch DIR`: a new exported model folder appearing in DIR is swapped in while the line runs.

A bundle is a sub-folder of DIR holding manifest.json (export writes the manifest last, atomically).
It is tried once it is complete and settled: manifest.json present and no file of the folder changed
between two scans (a copy still in progress changes sizes and times). Folders whose name starts with
"." or ends in .tmp/.part are being written and are skipped, so `cp -r new DIR/.new && mv DIR/.new
DIR/new` is atomic. Folders present at start are the past: only what appears (or changes) later is
tried, once per content; a refused bundle is tried again only after its files change. The swap
itself, with its checks and `_status` events, is model_slot.ModelSlot.swap_model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_somad.contracts.layout import MANIFEST_NAME
from edge_somad.errors import ConfigError

log = logging.getLogger(__name__)

WRITING_SUFFIXES = (".tmp", ".part", ".partial")
Signature = tuple[tuple[str, int, int], ...]


def folder_signature(folder: Path) -> Signature | None:
    """(name, size, mtime_ns) of every file in `folder` (not recursive); None while it has no manifest."""
    try:
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    except OSError:  # removed or renamed while we looked
        return None
    return tuple(files) if any(name == MANIFEST_NAME for name, _, _ in files) else None


class ModelWatch:
    """Scans `folder` every `interval_s` on its own thread and hands settled new bundles to `swap`."""

    def __init__(self, folder: Path, swap: Callable[[Path], Any], interval_s: float = 1.0) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"--model-watch {self.folder}: not a folder; expected an existing folder into which "
                              "new exported model folders are copied (docs/model-updates.md)")
        self._swap, self.interval_s = swap, interval_s
        self._tried: dict[Path, Signature] = {}  # the content each bundle was last tried (or found at start) with
        self._seen: dict[Path, Signature] = {}  # the content at the previous scan: settled when unchanged
        for sub, sig in self._bundles():
            self._tried[sub] = self._seen[sub] = sig
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-watch", daemon=True)

    def start(self) -> ModelWatch:
        self._thread.start()
        log.info("watching %s for new model folders (%d there at start, not loaded)", self.folder, len(self._tried))
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)  # a swap in progress (load, warm-up, self-check) finishes first

    def scan(self) -> list[Path]:
        """One pass: the bundles tried in it (settled, new or changed), oldest manifest first."""
        due: list[Path] = []
        current = dict(self._bundles())
        for sub, sig in current.items():
            settled = self._seen.get(sub) == sig
            if settled and self._tried.get(sub) != sig:
                due.append(sub)
        self._seen = current
        due.sort(key=lambda sub: max(t for name, _, t in current[sub] if name == MANIFEST_NAME))
        for sub in due:
            self._tried[sub] = current[sub]
            log.info("model folder %s is complete: swapping it in", sub)
            self._swap(sub)
        return due

    def _bundles(self) -> list[tuple[Path, Signature]]:
        try:
            subs = [p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                    and not p.name.endswith(WRITING_SUFFIXES)]
        except OSError as exc:
            log.warning("--model-watch %s cannot be read: %s", self.folder, exc)
            return []
        return [(sub, sig) for sub in subs if (sig := folder_signature(sub)) is not None]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.scan()
            except Exception:  # the watcher must never take the line down; the swap reports its own failures
                log.exception("--model-watch %s: scan failed", self.folder)
