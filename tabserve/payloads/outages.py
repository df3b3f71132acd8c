"""A sink's failures in the log: once when it starts failing and once when it works again, not
once per record (a receiver that is down would otherwise write a line per prediction)."""

from __future__ import annotations

import logging

logger = logging.getLogger("tabserve.payloads")


class Outage:
    def __init__(self, sink: str) -> None:
        self._sink = sink
        self._failing = False

    def failed(self, problem: str) -> None:
        if not self._failing:
            logger.warning("payload log: the %s sink fails: %s", self._sink, problem)
            self._failing = True

    def recovered(self) -> None:
        if self._failing:
            logger.warning("payload log: the %s sink works again", self._sink)
            self._failing = False
