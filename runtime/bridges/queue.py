"""Bounded, ordered, on-disk store-and-forward queue for the MQTT bridge (SQLite, WAL).

Every verdict goes through it, broker up or down: it is written here before it is published and
deleted only when the broker acknowledged it (QoS 1 PUBACK), so a broker outage, a lost
connection or a killed bridge never loses what was stored (it may publish it twice: at least once).

When the queue is full, room is made by dropping the oldest item of the LOWEST rank at or below
the newcomer's rank (heatmap < pass < fail < error); if there is none, the newcomer is dropped.
So heatmaps go first, then passes, and an error is never dropped while a pass is queued. Every
drop is counted per kind in `meta` (persisted), never silent.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_somad.errors import ConfigError

RANK = {"heatmap": 0, "pass": 1, "fail": 2, "error": 3, "health": 3}  # health: alarm events


@dataclass(frozen=True)
class Item:
    kind: str  # a RANK key
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Stored:
    id: int
    topic: str
    payload: bytes


class DiskQueue:
    """Thread-safe: the ZeroMQ reader puts, the MQTT sender peeks and deletes."""

    def __init__(self, path: Path, max_items: int) -> None:
        if max_items < 1:
            raise ConfigError(f"--queue-max {max_items}; expected at least 1")
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = _exclusive(path)
            self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            # WAL + synchronous=NORMAL: a commit survives a killed process (not a power cut) at a
            # fraction of the cost of FULL; the bridge commits once per batch, not per verdict.
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
                            "rank INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL)")
            self.db.execute("CREATE INDEX IF NOT EXISTS q_rank ON q (rank, id)")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self.size = int(self.db.execute("SELECT COUNT(*) FROM q").fetchone()[0])
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"queue file {path} cannot be used ({type(exc).__name__}: {exc}); expected a "
                              "writable path for an SQLite database: give another --queue-file") from exc
        self.path, self.max_items = path, max_items
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def get_meta(self, key: str, default: int = 0) -> int:
        with self.lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def meta_items(self, prefix: str) -> dict[str, int]:
        with self.lock:
            rows = self.db.execute("SELECT key, value FROM meta WHERE key LIKE ?", (prefix + "%",)).fetchall()
        return {k[len(prefix):]: int(v) for k, v in rows}

    def put_many(self, items: Iterable[Item], meta: dict[str, int] | None = None) -> dict[str, int]:
        """Store items (and set meta keys) in one transaction; returns what was dropped, per kind."""
        dropped: dict[str, int] = {}
        with self.changed:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for item in items:
                    rank = RANK[item.kind]
                    if self.size >= self.max_items:
                        victim = self.db.execute("SELECT id, kind FROM q WHERE rank <= ? ORDER BY rank, id LIMIT 1",
                                                 (rank,)).fetchone()
                        kind = item.kind if victim is None else victim[1]
                        dropped[kind] = dropped.get(kind, 0) + 1
                        if victim is None:
                            continue
                        self.db.execute("DELETE FROM q WHERE id = ?", (victim[0],))
                        self.size -= 1
                    self.db.execute("INSERT INTO q (kind, rank, topic, payload) VALUES (?, ?, ?, ?)",
                                    (item.kind, rank, item.topic, item.payload))
                    self.size += 1
                updates = {**(meta or {}), **{f"overflow:{k}": n for k, n in dropped.items()}}
                for key, value in updates.items():
                    if key.startswith("overflow:"):  # counters add up; other meta keys are set
                        self.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                                        "value = value + excluded.value", (key, value))
                    else:
                        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.changed.notify_all()
        return dropped

    def set_meta(self, key: str, value: int) -> None:
        self.put_many((), {key: value})

    def peek(self, after_id: int, limit: int) -> list[Stored]:
        """The oldest stored items with id > after_id, in insertion order."""
        with self.lock:
            rows = self.db.execute("SELECT id, topic, payload FROM q WHERE id > ? ORDER BY id LIMIT ?",
                                   (after_id, limit)).fetchall()
        return [Stored(int(i), t, bytes(p)) for i, t, p in rows]

    def delete(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")  # one commit per acknowledged batch, not one per row
            cur = self.db.executemany("DELETE FROM q WHERE id = ?", [(i,) for i in ids])
            self.db.execute("COMMIT")
            self.size -= max(cur.rowcount, 0)

    def wait(self, timeout_s: float) -> None:
        """Until something is put (or timeout): the sender's idle wait."""
        with self.changed:
            self.changed.wait(timeout_s)

    def close(self) -> None:
        with self.lock:
            self.db.close()
        self._lock_file.close()


def _exclusive(path: Path):
    """Hold an exclusive lock on PATH.lock: two bridges on one queue would both deliver (and steal) its items."""
    import fcntl

    f = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 - held open until close()
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        f.close()
        raise ConfigError(f"queue file {path} is in use by another bridge; give each bridge its own "
                          "--queue-file") from exc
    return f
