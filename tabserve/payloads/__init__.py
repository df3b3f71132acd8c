"""Payload logging: sampled prediction rows (inputs, outputs, model, request) to files and to an
HTTP receiver, off the request's path.

The data plane hands every answered prediction to `PayloadLog.offer`: a sampled one becomes a
`Payload` (records.py) put on each sink's bounded queue, nothing more; the file sink's thread
(files.py) and the CloudEvents sink's tasks (cloudevents.py) encode and deliver it. A full queue
or a failing sink drops records and counts them; a prediction never waits for a sink. Off unless
TABSERVE_PAYLOAD_LOG_SAMPLE_RATE > 0 (docs/observability.md, "Payload logging").
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Protocol

import numpy as np

from tabserve import metrics, request_context
from tabserve.payloads.records import Payload
from tabserve.settings import Settings

if TYPE_CHECKING:
    from tabserve.dataplane import Predictions


class Sink(Protocol):
    name: str

    def offer(self, payload: Payload) -> None:
        """Queue the payload, or drop it (counted) when the queue is full. Never blocks."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Deliver what is queued if the sink can do so promptly, then release everything."""


def enabled(settings: Settings) -> bool:
    """Sampling something, to a sink."""
    has_sink = settings.payload_log_format != "none" or bool(settings.payload_log_url)
    return settings.payload_log_sample_rate > 0 and has_sink


class PayloadLog:
    """One per API worker (service.py): samples the predictions and feeds the sinks."""

    def __init__(self, sample_rate: float, sinks: list[Sink]) -> None:
        self._sample_rate = sample_rate
        self._sinks = sinks

    @classmethod
    def from_settings(cls, settings: Settings) -> PayloadLog | None:
        """The configured payload log, or None when it is off."""
        if not enabled(settings):
            return None
        sinks: list[Sink] = []
        if settings.payload_log_format != "none":
            from tabserve.payloads.files import FileSink, worker_label

            sinks.append(
                FileSink(
                    settings.payload_log_dir,
                    settings.payload_log_format,
                    worker_label(),
                    capacity=settings.payload_log_queue,
                    max_bytes=settings.payload_log_max_bytes,
                    max_age_s=settings.payload_log_max_age_s,
                    max_files=settings.payload_log_max_files,
                )
            )
        if settings.payload_log_url:
            from tabserve.payloads.cloudevents import CloudEventsSink

            sinks.append(
                CloudEventsSink(
                    settings.payload_log_url,
                    capacity=settings.payload_log_queue,
                    timeout_s=settings.payload_log_timeout_s,
                    concurrency=settings.payload_log_concurrency,
                )
            )
        return cls(settings.payload_log_sample_rate, sinks)

    def offer(self, answer: Predictions, rows: np.ndarray) -> None:
        """On the hot path: a sample of the answered requests goes to every sink's queue."""
        if random.random() >= self._sample_rate:
            return
        context = request_context.current()
        payload = Payload(
            time=time.time(),
            spec=answer.spec,
            version=metrics.version_of(answer.tag),
            request_id=context.request_id,
            protocol=context.protocol,
            latency_ms=context.latency_ms(),
            rows=rows,
            labels=answer.labels,
            probabilities=answer.probabilities,
        )
        for sink in self._sinks:
            sink.offer(payload)

    async def start(self) -> None:
        """In the API worker, on its event loop (the HTTP sink's tasks run there)."""
        metrics.declare_payload_series([sink.name for sink in self._sinks])
        for sink in self._sinks:
            await sink.start()

    async def stop(self) -> None:
        for sink in self._sinks:
            await sink.stop()
