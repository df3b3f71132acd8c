"""The soak's bounds, in one place, and the one function that checks a run against them: used by
`python -m loadtests.soak` (`make soak`) and by tests/test_soak.py alike.

Growth is measured after the warm-up: the first minute fills caches, pools and allocator
arenas, and opens the connections every later request reuses; what grows after that, at a
steady rate of the same traffic, is what would grow without end in production. Each measure is
compared as the median over the first windows after the warm-up against the median over the
last windows: one sample taken during a garbage collection or a burst does not decide.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from loadtests.soak.samples import Sample
from loadtests.soak.traffic import MAX_LAG_S
from loadtests.soak.windows import SoakRun, Window
from loadtests.thresholds import Check

MIB = 2**20


@dataclass(frozen=True)
class Bounds:
    # Every request has an expected answer; a 5xx, a transport error, a timeout, another status
    # or a request the client could not send (too many in flight: the server stalled) is a bug.
    max_errors: int = 0
    # The server tree's summed RSS (~575 MiB: arbiter, API worker, runner with the ML
    # libraries). Measured in 10-minute soaks: it settles within the warm-up, then moves in a
    # band of +-12 MiB around its level with no trend (allocator arenas, garbage collections),
    # which the medians flatten to a few MiB. A leak of 1 KiB per request grows 22 MiB in
    # nine minutes at 40 req/s, and any faster one crosses this bound within minutes.
    max_rss_growth_mib: float = 24.0
    # File descriptors of the tree (files, pipes, sockets) other than the connections clients
    # opened to the API, which come and go with the clients' pools. The rest are the
    # processes' own: files, pipes, the API's pool of connections to the runner (one call in
    # flight per model); a leak per request or per connection adds hundreds.
    max_fd_growth: int = 16
    # Bytes used in the Prometheus multiprocess files. A series is written once, at its first
    # sample, and label values come from closed sets (models, classes, routes, codes); unknown
    # paths are all `<unmatched>`. Every kind of request is sent in the first second
    # (traffic.open_loop), so after the warm-up only series of rare values can appear (a class
    # a model seldom predicts): a few KiB each, as a histogram writes a sample per bucket in
    # several files (the first V1 413 writes 10.4 KiB). A series per request (a raw path or a
    # request id as a label) would add hundreds of KiB within a minute.
    max_metrics_growth_kib: float = 64.0
    # p99 of the valid requests (the median of the per-window p99s, first and last windows):
    # at most this ratio plus an absolute slack. On this 2-core machine shared with other work
    # (Linux PSI showing a task waiting for a CPU 20-95% of the time) a window's p99 moves
    # between ~30 ms and ~1.5 s with nothing changed in the server, and medians of 4-6 windows
    # by up to ~3x. A server that slows down as it runs (timers or lists that grow per request,
    # ever longer GC pauses) keeps growing until it crosses this; a drift smaller than the
    # machine's noise cannot be told from it.
    max_p99_ratio: float = 3.0
    p99_slack_ms: float = 100.0
    # How many windows make "first" and "last" (30 s of 5-second windows); a third of the
    # windows after the warm-up when the run is shorter.
    compared_windows: int = 6
    # The client must send what was scheduled; behind that, the server was not offered the rate.
    min_rate_ratio: float = 0.95


def first_last(run: SoakRun, bounds: Bounds) -> tuple[list[Window], list[Window]]:
    """The first and the last windows after the warm-up that the growth bounds compare."""
    after = run.after_warmup
    count = max(1, min(bounds.compared_windows, len(after) // 3))
    return after[:count], after[-count:]


def _median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def medians_first_last(
    run: SoakRun, bounds: Bounds, value: Callable[[Sample], float]
) -> tuple[float, float]:
    """The median of a measure of the samples over the first and over the last windows."""
    first, last = first_last(run, bounds)
    return _median([value(w.sample) for w in first]), _median([value(w.sample) for w in last])


def p99_first_last(run: SoakRun, bounds: Bounds) -> tuple[float, float]:
    """The median p99 (ms) of the valid requests over the first and over the last windows."""
    first, last = first_last(run, bounds)
    return _median([w.p99_ms for w in first]), _median([w.p99_ms for w in last])


def rss_mib(sample: Sample) -> float:
    return sample.rss_bytes / MIB


def fds_not_clients(sample: Sample) -> float:
    return sample.fds - sample.client_connections


def metrics_used_kib(sample: Sample) -> float:
    return sample.metrics_used_bytes / 1024


def check(run: SoakRun, bounds: Bounds) -> list[Check]:
    """Every bound, each a Check (what, limit, measured, ok)."""
    unsent = sorted(name for name, kind in run.kinds.items() if kind.sent == 0)
    errors = ", ".join(
        f"{kind}: {answer} x{n}" for (kind, answer), n in run.errors_by_answer.items()
    )
    checks = [
        Check(
            "errors (5xx, transport, timeout, other)",
            f"<= {bounds.max_errors}",
            str(run.errors) + (f" ({errors})"[:200] if errors else ""),
            run.errors <= bounds.max_errors,
        ),
        Check("request kinds never sent", "none", ", ".join(unsent) or "none", not unsent),
        # Not the server's fault, but the run did not offer the load it claims: it fails.
        Check(
            f"requests not sent: client over {MAX_LAG_S:.0f} s late",
            "0",
            str(run.late),
            run.late == 0,
        ),
        Check(
            "rate achieved / offered",
            f">= {bounds.min_rate_ratio}",
            f"{run.rate_achieved:.1f}/{run.rate_offered:.1f}",
            run.rate_achieved >= bounds.min_rate_ratio * run.rate_offered,
        ),
        Check(
            "server processes (none restarted)",
            "same pids",
            "same" if run.end.pids == run.start.pids else f"{run.start.pids} -> {run.end.pids}",
            run.end.pids == run.start.pids,
        ),
    ]
    if len(run.after_warmup) < 2:
        return [
            *checks,
            Check("windows after the warm-up", ">= 2", str(len(run.after_warmup)), False),
        ]
    return checks + _growth_checks(run, bounds)


def _growth_checks(run: SoakRun, bounds: Bounds) -> list[Check]:

    def growth(value: Callable[[Sample], float]) -> float:
        first, last = medians_first_last(run, bounds, value)
        return last - first

    rss, fds, metrics_kib = map(growth, (rss_mib, fds_not_clients, metrics_used_kib))
    first_p99, last_p99 = p99_first_last(run, bounds)
    p99_limit = first_p99 * bounds.max_p99_ratio + bounds.p99_slack_ms
    return [
        Check(
            "RSS growth after warm-up (tree)",
            f"<= {bounds.max_rss_growth_mib} MiB",
            f"{rss:+.1f} MiB",
            rss <= bounds.max_rss_growth_mib,
        ),
        Check(
            "open fds growth after warm-up (not clients')",
            f"<= {bounds.max_fd_growth}",
            f"{fds:+.0f}",
            fds <= bounds.max_fd_growth,
        ),
        Check(
            "metrics dir growth after warm-up (used)",
            f"<= {bounds.max_metrics_growth_kib} KiB",
            f"{metrics_kib:+.1f} KiB",
            metrics_kib <= bounds.max_metrics_growth_kib,
        ),
        Check(
            "p99 last vs first windows after warm-up",
            f"<= {p99_limit:.1f} ms",
            f"{first_p99:.1f} -> {last_p99:.1f} ms",
            last_p99 <= p99_limit,
        ),
    ]
