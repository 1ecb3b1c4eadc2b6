"""The reviews table: people's decisions on labels, written append-only in small atomic files.

    OUT/reviews/model=<model_version>/<session_id>-<n>.parquet

Each review session writes its own files, so two people reviewing one output at once lose nothing; the
`reviewed` view (query.REVIEWED) takes the latest decision per (uri, model version). A session flushes at
most every `every` decisions or `seconds`, and when it closes: a SIGKILL loses at most those, and a file
is whole or absent (atomic_write_bytes).
"""
import getpass
import io
import threading
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import atomic_write_bytes
from schemas.tables import TABLES

ACTIONS = ("confirm", "correct", "unusable")
def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment (e.g. a container without passwd)
        return "unknown"


def review_row(label: dict, action: str, reviewed_label: str | None, reviewer: str, session_id: str) -> dict:
    """A reviews row for a decision on one labels row (`label`: its uri, content_sha256, model_version, label)."""
    return {"uri": label["uri"], "content_sha256": label["content_sha256"], "model_version": label["model_version"],
            "predicted_label": label["label"], "reviewed_label": reviewed_label, "action": action,
            "reviewer": reviewer, "reviewed_at": datetime.now(UTC), "session_id": session_id}


class ReviewLog:
    """One session's decisions, buffered and flushed to the reviews table; `undo` withdraws the last one."""

    def __init__(self, output: str, session_id: str, every: int = 20, seconds: float = 5.0):
        self.output, self.session_id, self.every = output.rstrip("/"), session_id, every
        self.pending: list[dict] = []   # not yet written
        self.decided: list[dict] = []   # this session's decisions, written or not, for undo
        self.files, self.error = 0, None
        self._lock, self._flushing = threading.Lock(), threading.Lock()
        self._closed, self._due = threading.Event(), threading.Event()
        self._writer = threading.Thread(target=self._flush_every, args=(seconds,), daemon=True)
        self._writer.start()

    def add(self, row: dict) -> None:
        """Record a decision; the write happens on the writer thread, never in the caller's way."""
        with self._lock:
            self.pending.append(row)
            self.decided.append(row)
            if len(self.pending) >= self.every:
                self._due.set()

    def undo(self) -> dict | None:
        """Withdraw this session's last decision: dropped if still pending, else an undo row is written."""
        with self._lock:
            if not self.decided:
                return None
            last = self.decided.pop()
            if self.pending and self.pending[-1] is last:
                self.pending.pop()
            else:
                self.pending.append({**last, "reviewed_label": None, "action": "undo",
                                     "reviewed_at": datetime.now(UTC)})
            return last

    def close(self) -> None:
        """Stop the writer and write what is pending; raises if that last write fails."""
        self._closed.set()
        self._due.set()
        self._writer.join()
        self.flush()

    def _flush_every(self, seconds: float) -> None:
        while not self._closed.is_set():
            self._due.wait(seconds)
            self._due.clear()
            if self._closed.is_set():
                return
            try:
                self.flush()
            except Exception as e:  # any storage failure (gcsfs's are not all OSErrors): the rows stay pending,
                self.error = e      # are tried again, and the app shows why

    def flush(self) -> None:
        """The pending rows, one file per model version among them (a queue holds one version: one file).
        One flush at a time (the writer thread, close, a caller), so no two pick the same file name."""
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            rows, self.pending = self.pending, []
        try:
            for version in dict.fromkeys(row["model_version"] for row in rows):
                part = [row for row in rows if row["model_version"] == version]
                buf = io.BytesIO()
                pq.write_table(pa.Table.from_pylist(part, schema=TABLES["reviews"]), buf, compression="zstd")
                name = f"{self.session_id}-{self.files:05d}.parquet"
                atomic_write_bytes(f"{self.output}/reviews/model={version}/{name}", buf.getvalue())
                self.files += 1
                rows = [row for row in rows if row["model_version"] != version]
        finally:
            with self._lock:  # what was not written goes back in front of what came since
                self.pending = rows + self.pending
        self.error = None
