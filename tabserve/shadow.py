"""Shadow scoring: a sample of a model's requests also scored by a second version, compared.

The data plane hands every answered prediction to `ShadowScorer.offer` before the answer is sent:
for a shadowed model (Settings.shadow), a sampled request's rows and answer go on a bounded queue,
nothing more. One consumer task per API worker takes them one at a time, scores the rows by the
target version (an alias such as "challenger", or an exact version) within the runner timeout, and
records how the two versions compare (tabserve_shadow_* metrics, docs/observability.md). A full
queue, a failing or slow shadow, or a shutdown drops the sample and counts it: shadow scoring
never slows or fails the answer, and its work is bounded (one call at a time, queue_size waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from tabserve import metrics
from tabserve.catalog import ModelSpec
from tabserve.errors import ModelNotFound, ModelUnavailable
from tabserve.settings import ShadowTarget, get_settings

if TYPE_CHECKING:
    from tabserve.dataplane import Predictions  # which calls `offer`

__all__ = ["ShadowScore", "ShadowScorer", "ShadowTarget"]

logger = logging.getLogger("tabserve.shadow")

# score(spec, target, rows): the rows (the model's input array, tabserve/model_input.py) scored
# by the version `target` names (an alias or an exact version); raises ModelUnavailable,
# ModelNotFound or TimeoutError as any data-plane call does.
ShadowScore = Callable[[ModelSpec, str, np.ndarray], Awaitable["Predictions"]]

# The outcome of one shadow call that raised, as tabserve_shadow_dropped_total's reason.
_FAILURES: tuple[tuple[type[BaseException], str], ...] = (
    (TimeoutError, "timeout"),
    (ModelUnavailable, "unavailable"),
    (ModelNotFound, "unavailable"),  # the target is not loaded (unloaded, alias not set)
)


class ShadowScorer:
    """One per API worker, on its event loop: `offer` from the data plane, `start`/`stop` from
    the service's lifecycle."""

    def __init__(
        self,
        targets: Mapping[str, ShadowTarget],
        queue_size: int,
        score: ShadowScore,
        *,
        timeout_s: float | None = None,  # None: Settings.runner_timeout_s
        rng: random.Random | None = None,  # tests pass a seeded one
    ) -> None:
        self._targets = dict(targets)
        self._score = score
        self._timeout_s = get_settings().runner_timeout_s if timeout_s is None else timeout_s
        self._random = (rng or random.Random()).random
        self._queue: asyncio.Queue[tuple[Predictions, np.ndarray]] = asyncio.Queue(queue_size)
        self._consumer: asyncio.Task[None] | None = None
        self._current: tuple[Predictions, np.ndarray] | None = None  # being shadowed now
        self._stopped = False
        self._failing = False  # logged once when shadow calls start failing, once when back

    def offer(self, primary: Predictions, rows: np.ndarray) -> None:
        """On the hot path, before the answer is sent: O(1), never waits, never raises."""
        target = self._targets.get(primary.spec.name)
        if target is None or self._random() >= target.fraction:
            return
        if self._stopped:
            metrics.record_shadow_dropped(primary.spec.name, "stopped", len(rows))
            return
        try:
            self._queue.put_nowait((primary, rows))
        except asyncio.QueueFull:
            metrics.record_shadow_dropped(primary.spec.name, "queue_full", len(rows))

    async def start(self) -> None:
        """Starts the consumer on the running event loop (the API worker's)."""
        metrics.declare_shadow_series(self._targets)
        self._consumer = asyncio.create_task(self._consume(), name="shadow-scoring")

    async def stop(self) -> None:
        """Stops at once: the call in flight is cancelled and what is queued dropped (counted);
        the primary answers were all sent long ago, so nobody waits for them."""
        self._stopped = True
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        waiting = [self._current] if self._current is not None else []
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for primary, rows in waiting:
            metrics.record_shadow_dropped(primary.spec.name, "stopped", len(rows))
        self._current = None

    async def _consume(self) -> None:
        while True:
            self._current = await self._queue.get()
            primary, rows = self._current
            reason = await self._shadow(primary, rows)
            if reason is not None:
                metrics.record_shadow_dropped(primary.spec.name, reason, len(rows))
            self._current = None

    async def _shadow(self, primary: Predictions, rows: np.ndarray) -> str | None:
        """Scores the rows by the shadow version and records the comparison; None once recorded,
        else the reason the sample was dropped. Never raises (but for cancellation): the
        consumer must outlive any one failure."""
        target = self._targets[primary.spec.name].target
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_s):
                shadow = await self._score(primary.spec, target, rows)
            seconds = time.perf_counter() - started
            if shadow.tag != primary.tag:
                metrics.record_shadow_comparison(primary, shadow, seconds)
        except Exception as error:
            reason = next((r for kind, r in _FAILURES if isinstance(error, kind)), "error")
            self._failed(primary.spec.name, target, reason, error)
            return reason
        self._recovered()
        # The target is the version that answered (an alias moved to it): nothing to compare.
        return "same_version" if shadow.tag == primary.tag else None

    def _failed(self, model: str, target: str, reason: str, error: Exception) -> None:
        if not self._failing:
            self._failing = True
            # A bug (reason "error") gets its traceback; an outage its message.
            logger.warning(
                "shadow scoring fails (%s): model %s, target %r: %s",
                reason,
                model,
                target,
                error,
                exc_info=reason == "error",
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning("shadow scoring works again")
