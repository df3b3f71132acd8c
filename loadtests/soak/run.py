"""One soak: open-loop mixed traffic against a running ServerProcess while its process tree and
metrics directory are sampled at the end of every window."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from loadtests.soak.report import header, row
from loadtests.soak.samples import Sample, take_sample
from loadtests.soak.traffic import LATE, Client, Kind, Outcome, open_loop, request_kinds
from loadtests.soak.windows import SoakRun, kind_stats, window
from tabserve.settings import get_settings
from tests.server import ServerProcess

# Past the schedule, the run gets this long to finish (every request has its own timeout).
FINISH_GRACE_S = 60


@dataclass(frozen=True)
class Options:
    duration_s: float = 600.0
    rate: float = 40.0  # requests/s
    warmup_s: float = 60.0
    window_s: float = 5.0
    # Requests in flight at most (and connections in the HTTP pool). At 40 req/s a few are in
    # flight, a few dozen when other work holds the cores for a second; 128 means the server
    # stalled for ~3 s. It is also an API worker's own limit (TABSERVE_MAX_IN_FLIGHT), so a 503
    # from the server's shedding is never the soak's own doing.
    max_in_flight: int = 128
    seed: int = 0

    def problems(self) -> list[str]:
        """Why these options cannot make a soak, if they cannot."""
        windows = self.duration_s / self.window_s
        return [
            text
            for text, broken in [
                ("the duration must be a whole number of windows", windows != int(windows)),
                (
                    "at least two windows must follow the warm-up",
                    self.warmup_s + 2 * self.window_s > self.duration_s,
                ),
                ("the rate must be positive", self.rate <= 0),
                ("at most 1,000,000 requests", self.rate * self.duration_s > 1_000_000),
            ]
            if broken
        ]


@dataclass(frozen=True)
class Watched:
    """What is sampled: the server's process tree, its API's ports, its metrics directory."""

    root: psutil.Process
    ports: tuple[int, ...]
    metrics_dir: Path

    def sample(self, t_s: float) -> Sample:
        return take_sample(self.root, self.ports, self.metrics_dir, t_s)


Progress = Callable[[str], None]


def print_now(line: str) -> None:
    """A row as soon as it is known, also when stdout is a file (make soak > log)."""
    print(line, flush=True)


def soak(server: ServerProcess, options: Options, progress: Progress = print_now) -> SoakRun:
    """Run the traffic for options.duration_s and return the series (bounded in time)."""
    kinds = request_kinds(get_settings().max_body_bytes)
    runner = _soak(server, kinds, options, progress)
    return asyncio.run(asyncio.wait_for(runner, options.duration_s + FINISH_GRACE_S))


async def _soak(
    server: ServerProcess, kinds: list[Kind], options: Options, progress: Progress
) -> SoakRun:
    watch = Watched(
        psutil.Process(server.process.pid), (server.port, server.grpc_port), server.metrics_dir
    )
    outcomes: list[Outcome] = []
    first = await asyncio.to_thread(watch.sample, 0.0)
    cpu_started = time.process_time()
    async with Client(server.url, f"127.0.0.1:{server.grpc_port}", options.max_in_flight) as client:
        start = time.monotonic()
        sampler = asyncio.create_task(
            _sample_windows(watch, start, first, options, outcomes, progress)
        )
        schedule = (start, options.rate, options.duration_s)
        await open_loop(
            client, kinds, schedule, options.max_in_flight, random.Random(options.seed), outcomes
        )
        samples = await sampler
    return SoakRun(
        rate_offered=options.rate,
        rate_achieved=_achieved_rate(outcomes, options.rate),
        duration_s=options.duration_s,
        warmup_s=options.warmup_s,
        start=first,
        windows=[window(outcomes, sample, options.window_s) for sample in samples],
        client_cpu_percent=100 * (time.process_time() - cpu_started) / (time.monotonic() - start),
        kinds=kind_stats([kind.name for kind in kinds], outcomes),
        errors_by_answer=Counter((o.kind, o.answer) for o in outcomes if o.server_error),
        late=sum(o.answer == LATE for o in outcomes),
    )


async def _sample_windows(
    watch: Watched,
    start: float,
    first: Sample,
    options: Options,
    outcomes: list[Outcome],
    progress: Progress,
) -> list[Sample]:
    """A sample at the end of each window. Each window's row is printed one window later, when
    its requests have been answered (the whole table is printed again at the end)."""
    samples = [first]
    progress(header())
    for k in range(1, math.ceil(options.duration_s / options.window_s) + 1):
        await asyncio.sleep(max(0.0, start + k * options.window_s - time.monotonic()))
        samples.append(await asyncio.to_thread(watch.sample, k * options.window_s))
        if k >= 2:
            progress(row(window(outcomes, samples[-2], options.window_s), samples[-3]))
    return samples[1:]


def _achieved_rate(outcomes: list[Outcome], rate: float) -> float:
    """Requests sent per second, from the first due time to the last send."""
    sent = [o.due_s + o.lag_s for o in outcomes if o.sent]
    return len(sent) / (max(sent) + 1 / rate) if sent else 0.0
