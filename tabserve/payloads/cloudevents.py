"""The HTTP sink: each sampled request POSTed as two CloudEvents, in KServe's logger format.

KServe's inference logger sends, in CloudEvents' binary mode (attributes in `ce-*` headers, the
payload as the body), one `org.kubeflow.serving.inference.request` event with the request body
and one `org.kubeflow.serving.inference.response` event with the answer, both with the request's
id as `ce-id`; the extensions `ce-inferenceservicename`, `ce-component` and `ce-endpoint` name
what answered. Tools built for it (drift detectors, message dumpers) read ours. The bodies are
the V1 shapes whatever protocol carried the request: `{"instances": [...]}` and
`{"predictions": [...], "model": "<name>:<version>"}`.

Delivery is bounded and never blocks a prediction: payloads wait in a bounded queue (full: the
payload is dropped), `concurrency` tasks POST them with a short deadline, and a failed POST is
counted as dropped, never retried (a struggling receiver gets no retry storm).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import aiohttp
import pydantic_core

from tabserve import metrics
from tabserve.payloads.outages import Outage
from tabserve.payloads.records import Payload, rfc3339

REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"
SINK = "http"


class CloudEventsSink:
    """Sampled payloads of one API worker to an HTTP receiver. Runs on the worker's event loop."""

    name = SINK

    def __init__(self, url: str, *, capacity: int, timeout_s: float, concurrency: int) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._concurrency = concurrency
        self._queue: asyncio.Queue[Payload] = asyncio.Queue(capacity)
        self._source = f"http://{socket.gethostname()}/"
        self._session: aiohttp.ClientSession | None = None
        self._senders: list[asyncio.Task[None]] = []
        self._outage = Outage(SINK)

    def offer(self, payload: Payload) -> None:
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            metrics.record_payloads_dropped(SINK, "queue_full", len(payload.rows))

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._concurrency)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        self._senders = [
            asyncio.create_task(self._send_forever(), name=f"payload-events-{index}")
            for index in range(self._concurrency)
        ]

    async def stop(self) -> None:
        """Stop at once: events still queued are not sent (a receiver may be what is down)."""
        for sender in self._senders:
            sender.cancel()
        for sender in self._senders:
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        if self._session is not None:
            await self._session.close()

    async def _send_forever(self) -> None:
        while True:
            payload = await self._queue.get()
            reason = await self._send(payload)
            if reason is None:
                metrics.record_payloads_written(SINK, len(payload.rows))
                self._outage.recovered()
            else:
                metrics.record_payloads_dropped(SINK, reason, len(payload.rows))

    async def _send(self, payload: Payload) -> str | None:
        """Both events of a payload; None once delivered, else the reason it was dropped."""
        tag = f"{payload.spec.name}:{payload.version}"
        bodies = {
            REQUEST_EVENT: {"instances": payload.inputs()},
            RESPONSE_EVENT: {"predictions": payload.outputs(), "model": tag},
        }
        assert self._session is not None
        for event_type, body in bodies.items():
            try:
                async with self._session.post(
                    self._url,
                    data=pydantic_core.to_json(body),
                    headers=self._headers(payload, event_type),
                ) as response:
                    if response.status >= 300:
                        return self._failed(f"answered HTTP {response.status}", "status")
            except TimeoutError:
                return self._failed(f"no answer within {self._timeout.total:g} s", "timeout")
            except aiohttp.ClientError as error:
                return self._failed(str(error) or type(error).__name__, "connection")
            except Exception as error:  # a sender task must outlive any one failure
                return self._failed(repr(error), "error")
        return None

    def _headers(self, payload: Payload, event_type: str) -> dict[str, Any]:
        return {
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": payload.request_id,
            "ce-type": event_type,
            "ce-source": self._source,
            "ce-time": rfc3339(payload.time),
            "ce-inferenceservicename": payload.spec.name,
            "ce-component": "predictor",
            "ce-endpoint": "default",
        }

    def _failed(self, problem: str, reason: str) -> str:
        self._outage.failed(f"{self._url} {problem}")
        return reason
