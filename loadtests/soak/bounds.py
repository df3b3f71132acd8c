"""The soak's bounds, in one place, and the one function that checks a run against them: used by
`python -m loadtests.soak` (`make soak`) and by tests/test_soak.py alike.

Growth is measured from the end of the warm-up: the first minutes fill caches, pools and
allocator arenas, and open the connections every later request reuses; what grows after that,
at a steady rate of the same traffic, is what would grow without end in production.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from loadtests.soak.windows import SoakRun, Window
from loadtests.thresholds import Check

MIB = 2**20


@dataclass(frozen=True)
class Bounds:
    # Every request has an expected answer; a 5xx, a transport error, a timeout, another status
    # or a request the client could not send (too many in flight: the server stalled) is a bug.
    max_errors: int = 0
    # The server tree's summed RSS (~600 MiB: arbiter, API worker, runner with the ML
    # libraries). Measured: it settles within the warm-up and then moves a few MiB either way
    # (allocator arenas, gen-2 garbage collections). A leak of 1 KiB per request grows 24 MiB in
    # ten minutes at 40 req/s, and any faster one crosses this bound in minutes.
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
    # p99 of the valid requests: the median of the per-window p99 over the last windows against
    # the same over the first windows after the warm-up (a median, so a window in which other
    # work took the cores does not decide alone). At most this ratio plus an absolute slack:
    # on this 2-core machine shared with other work (Linux PSI showing a task waiting for a
    # CPU 50-95% of the time) a window's p99 moves between ~90 ms and ~1 s with nothing
    # changed in the server, and medians of 4-6 windows by up to ~3x. A server that slows down
    # as it runs (timers or lists that grow per request, ever longer GC pauses) keeps growing
    # until it crosses this; a drift smaller than the machine's noise cannot be told from it.
    max_p99_ratio: float = 3.0
    p99_slack_ms: float = 100.0
    # How many windows make "first" and "last" for the p99 (30 s of 5-second windows); a third
    # of the windows after the warm-up when the run is shorter.
    drift_windows: int = 6
    # The client must send what was scheduled; behind that, the server was not offered the rate.
    min_rate_ratio: float = 0.95


def _drift_windows(after: list[Window], wanted: int) -> tuple[list[Window], list[Window]]:
    count = max(1, min(wanted, len(after) // 3))
    return after[:count], after[-count:]


def _median_p99(windows: list[Window]) -> float:
    p99s = [w.p99_ms for w in windows if w.valid_latencies_s]
    return statistics.median(p99s) if p99s else math.nan


def p99_first_last(run: SoakRun, bounds: Bounds) -> tuple[float, float]:
    """The median p99 (ms) of the valid requests over the first and the last windows after
    the warm-up."""
    first, last = _drift_windows(run.after_warmup, bounds.drift_windows)
    return _median_p99(first), _median_p99(last)


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
    base, end = run.baseline, run.end
    rss_mib = (end.rss_bytes - base.rss_bytes) / MIB
    fds = (end.fds - end.client_connections) - (base.fds - base.client_connections)
    metrics_kib = (end.metrics_used_bytes - base.metrics_used_bytes) / 1024
    first, last = p99_first_last(run, bounds)
    p99_limit = first * bounds.max_p99_ratio + bounds.p99_slack_ms
    return [
        Check(
            "RSS growth after warm-up (tree)",
            f"<= {bounds.max_rss_growth_mib} MiB",
            f"{rss_mib:+.1f} MiB",
            rss_mib <= bounds.max_rss_growth_mib,
        ),
        Check(
            "open fds growth after warm-up (not clients')",
            f"<= {bounds.max_fd_growth}",
            f"{fds:+d}",
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
            f"{first:.1f} -> {last:.1f} ms",
            last <= p99_limit,
        ),
    ]
