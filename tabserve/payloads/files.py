"""The file sink: sampled rows to rotating JSON Lines or Parquet files, written by a thread.

The data plane only puts a `Payload` on a bounded queue (`offer`, never blocks); a thread of the
API worker encodes and writes, so a slow or full disk never holds the event loop. A full queue
or a failed write drops the records and counts them (tabserve_payload_records_dropped_total).

Each API worker writes its own files, `payloads-w<worker>-<UTC start time>.<format>`: the names
sort by age, workers never share a file, and a restarted worker finds and prunes its own. A file
ends once it holds `max_bytes` or is `max_age_s` old; at most `max_files` per worker are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from tabserve import metrics
from tabserve.payloads.outages import Outage
from tabserve.payloads.records import Payload

FileFormat = Literal["jsonl", "parquet"]
# How often the writer looks at the clock when no payload arrives (age-based rotation, stop).
_IDLE_WAKE_S = 1.0
# Most payloads written between two looks at the clock.
_WRITE_BATCH = 256
# How long a stopping worker waits for the writer to write what is queued.
_STOP_WAIT_S = 5.0


class _Writer(Protocol):
    """One open payload file."""

    def write(self, records: list[dict[str, Any]]) -> int:
        """Write (or buffer) the records; returns the bytes they count towards rotation."""

    def close(self) -> int:
        """Finish the file; returns the records that reached the disk only now."""


def _encode(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


class _JsonLinesWriter:
    """Each batch is written and flushed at once: the file is readable while it grows."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")

    def write(self, records: list[dict[str, Any]]) -> int:
        text = "".join(_encode(record) + "\n" for record in records)
        self._file.write(text)
        self._file.flush()
        return len(text.encode())

    def close(self) -> int:
        self._file.close()
        return 0


class _ParquetWriter:
    """Rows are held until the file ends, then written as one row group to a hidden name and
    renamed: a Parquet file in the directory is always complete. `inputs` and `outputs` are JSON
    text columns, as their keys differ from model to model."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._columns: dict[str, list[Any]] = {
            name: []
            for name in ("time", "model", "version", "request_id", "protocol", "latency_ms")
        }
        self._inputs: list[str] = []
        self._outputs: list[str] = []

    def write(self, records: list[dict[str, Any]]) -> int:
        size = 0
        for record in records:
            for name, column in self._columns.items():
                column.append(record[name])
            self._inputs.append(_encode(record["inputs"]))
            self._outputs.append(_encode(record["outputs"]))
            size += len(self._inputs[-1]) + len(self._outputs[-1])
        return size

    def close(self) -> int:
        if not self._inputs:
            return 0
        # Imported here: pyarrow costs an API worker ~60 MB, paid only when Parquet is chosen.
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({**self._columns, "inputs": self._inputs, "outputs": self._outputs})
        partial = self._path.with_name(f".{self._path.name}.partial")
        pq.write_table(table, partial, compression="zstd")
        partial.replace(self._path)
        return len(self._inputs)


_WRITERS = {"jsonl": _JsonLinesWriter, "parquet": _ParquetWriter}


class FileSink:
    """Sampled payloads of one API worker to its rotating files."""

    def __init__(
        self,
        directory: Path,
        format: FileFormat,
        worker: str,
        *,
        capacity: int,
        max_bytes: int,
        max_age_s: float,
        max_files: int,
    ) -> None:
        self.name = format  # the `sink` label of its metrics
        self._directory = directory
        self._prefix = f"payloads-w{worker}-"
        self._suffix = f".{format}"
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._max_files = max_files
        self._queue: queue.Queue[Payload] = queue.Queue(capacity)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="payload-files", daemon=True)
        self._writer: _Writer | None = None
        self._opened_at = 0.0
        self._size = 0
        self._pending = 0  # records buffered by the writer, on disk only when the file ends
        self._outage = Outage(format)

    # --- the request's side ------------------------------------------------------------------
    def offer(self, payload: Payload) -> None:
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            metrics.record_payloads_dropped(self.name, "queue_full", len(payload.rows))

    # --- the writer thread -------------------------------------------------------------------
    async def start(self) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    async def stop(self) -> None:
        """Write what is queued and end the current file (a Parquet file is written only now),
        waiting at most _STOP_WAIT_S: a hung disk must not hold the worker's shutdown."""
        self._stopping.set()
        await asyncio.to_thread(self._thread.join, _STOP_WAIT_S)

    def _run(self) -> None:
        while not (self._stopping.is_set() and self._queue.empty()):
            batch = self._take()
            if batch:
                self._write(batch)
            if self._writer is not None and time.monotonic() - self._opened_at >= self._max_age_s:
                self._end_file()
        self._end_file()

    def _take(self) -> list[Payload]:
        try:
            batch = [self._queue.get(timeout=_IDLE_WAKE_S)]
        except queue.Empty:
            return []
        while len(batch) < _WRITE_BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[Payload]) -> None:
        """Payload by payload, so a file ends at most one request's rows past max_bytes."""
        for payload in batch:
            records = payload.records()
            try:
                if self._writer is None:
                    self._start_file()
                assert self._writer is not None
                self._size += self._writer.write(records)
            except Exception as error:  # the writer must outlive any one failure: count, go on
                self._failed(error, len(records))
                continue
            self._outage.recovered()
            if self.name == "parquet":
                self._pending += len(records)
            else:
                metrics.record_payloads_written(self.name, len(records))
            if self._size >= self._max_bytes:
                self._end_file()

    def _start_file(self) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self._prune(keep=self._max_files - 1)  # the new file is one of the max_files
        path = self._directory / f"{self._prefix}{stamp}{self._suffix}"
        self._writer = _WRITERS[self.name](path)
        self._opened_at = time.monotonic()
        self._size = 0

    def _end_file(self) -> None:
        writer, self._writer = self._writer, None
        pending, self._pending = self._pending, 0
        if writer is None:
            return
        try:
            written = writer.close()
        except Exception as error:  # a full disk, or pyarrow refusing the rows: count, go on
            self._failed(error, pending)
            return
        if written:
            metrics.record_payloads_written(self.name, written)

    def _prune(self, keep: int) -> None:
        """Delete this worker's oldest files beyond `keep` (names sort by age)."""
        own = sorted(self._directory.glob(f"{self._prefix}*{self._suffix}"))
        for old in own[: max(len(own) - keep, 0)]:
            old.unlink(missing_ok=True)

    def _failed(self, error: Exception, records: int) -> None:
        metrics.record_payloads_dropped(self.name, "write_error", records)
        self._outage.failed(f"cannot write to {self._directory}: {error}")
        writer, self._writer = self._writer, None  # the next batch starts a new file
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()


def worker_label() -> str:
    """This API worker's index (stable across its restarts), or its process id outside BentoML."""
    from bentoml import server_context

    return str(server_context.worker_index or os.getpid())
