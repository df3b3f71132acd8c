"""The soak test of `make soak`, short: 80 s of open-loop mixed traffic (V1, V2 REST, gRPC,
TabPy; invalid, malformed, oversized requests and unknown paths) against a fresh `bentoml serve`,
checked against the same bounds (loadtests/soak/bounds.py, one `check` for both); and that
check failing on made-up series that break each bound.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from loadtests.soak.__main__ import parse_args
from loadtests.soak.bounds import MIB, Bounds, check
from loadtests.soak.report import write_reports
from loadtests.soak.run import Options, soak
from loadtests.soak.samples import Sample
from loadtests.soak.traffic import (
    GROUPS,
    LATE,
    MAX_LAG_S,
    NOT_SENT,
    HttpCall,
    Kind,
    Outcome,
    open_loop,
)
from loadtests.soak.windows import KindStats, SoakRun, Window
from loadtests.thresholds import Check
from tests.server import ServerProcess

# ~20 s of warm-up and 60 s measured: 12 windows after the warm-up, so "first" and "last" are 4
# windows each. A fresh server of its own: the growth and the pids are the soak's alone.
SHORT = Options(duration_s=80, rate=20, warmup_s=20, window_s=5)


@pytest.fixture(scope="module")
def short_soak(
    trained_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SoakRun, list[Check], str, Path]:
    out = tmp_path_factory.mktemp("soak")
    with ServerProcess.start(out / "server.log") as server:
        run = soak(server, SHORT)
    checks = check(run, Bounds())
    return run, checks, write_reports(run, Bounds(), checks, out), out


@pytest.mark.slow
def test_a_short_soak_keeps_every_bound(short_soak) -> None:
    run, checks, text, _ = short_soak
    print("\n" + text)
    assert [c.what for c in checks if not c.ok] == [], text
    # Every group of the mix was sent, and the refused ones were refused as expected (an
    # unexpected answer would be an error).
    assert all(sum(w.by_group[group] for w in run.windows) > 0 for group in GROUPS)
    assert sum(kind.sent for kind in run.kinds.values()) == SHORT.rate * SHORT.duration_s


@pytest.mark.slow
def test_the_soak_writes_a_row_per_window_and_a_plot(short_soak) -> None:
    run, _, _, out = short_soak
    with (out / "windows.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(run.windows) == SHORT.duration_s / SHORT.window_s
    assert {"p99_ms", "rss_mib", "fds", "metrics_used_kib", "errors"} <= set(rows[0])
    assert (out / "soak.png").stat().st_size > 20_000
    assert "bounds:" in (out / "summary.txt").read_text()


# --- the open loop, with a stand-in client ------------------------------------------------------
class StandIn:
    """Answers "200" to everything, once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.calls = 0

    async def answer(self, call: object) -> str:
        self.calls += 1
        await self.release.wait()
        return "200"


ONE_KIND = [Kind("v1 predict", "valid", 1, frozenset({"200"}), lambda rng: HttpCall("GET", "/"))]


def _open_loop(client: StandIn, behind_s: float, rate: float, duration_s: float, limit: int):
    outcomes: list[Outcome] = []
    schedule = (time.monotonic() - behind_s, rate, duration_s)
    run = open_loop(client, ONE_KIND, schedule, limit, random.Random(0), outcomes)
    return run, outcomes


def test_a_client_behind_its_schedule_does_not_fire_the_backlog() -> None:
    """A client that wakes 10 s late (a paused machine) skips what is over 2 s overdue."""
    client = StandIn()
    run, outcomes = _open_loop(client, behind_s=10, rate=20, duration_s=10.5, limit=128)
    asyncio.run(run)
    late = [o for o in outcomes if o.answer == LATE]
    assert len(outcomes) == 210
    assert 155 <= len(late) <= 165  # due in the first ~8 s
    assert client.calls == len(outcomes) - len(late)
    assert all(o.ok and o.lag_s <= MAX_LAG_S for o in outcomes if o.sent)


def test_requests_in_flight_are_bounded() -> None:
    client = StandIn()
    client.release.clear()

    async def stalled_server() -> None:
        run, outcomes = _open_loop(client, behind_s=0, rate=100, duration_s=0.1, limit=3)
        asyncio.get_running_loop().call_later(0.5, client.release.set)
        await run
        assert [o.answer for o in outcomes].count(NOT_SENT) == 7
        assert sum(o.ok for o in outcomes) == 3

    asyncio.run(stalled_server())
    assert client.calls == 3


# --- the bounds, on made-up series --------------------------------------------------------------
WINDOWS = 20
WARMUP_S = 20.0


def _sample(t_s: float, **changes: float) -> Sample:
    flat = Sample(
        t_s=t_s,
        rss_bytes=600 * MIB,
        pss_bytes=500 * MIB,
        fds=80,
        client_connections=10,
        cpu_s=t_s * 0.3,
        cpu_stall_us=t_s * 1e5,
        pids=frozenset({1, 2, 3}),
        metrics_files=9,
        metrics_file_bytes=832 * 1024,
        metrics_used_bytes=300 * 1024,
    )
    return dataclasses.replace(flat, **changes)


def _run(
    grow: dict[str, float] | None = None, p99_s: float = 0.02, last_p99_s: float | None = None
) -> SoakRun:
    """20 windows of 5 s, 20 s of warm-up; `grow` adds to sample fields linearly from the end
    of the warm-up (so the last window has grown by the whole amount); the valid requests take
    `p99_s`, in the last third `last_p99_s`."""
    grow = grow or {}
    windows = []
    for k in range(1, WINDOWS + 1):
        t = 5.0 * k
        share = max(0.0, (t - WARMUP_S) / (5.0 * WINDOWS - WARMUP_S))
        flat = _sample(t)
        changes = {name: int(getattr(flat, name) + amount * share) for name, amount in grow.items()}
        slow = last_p99_s is not None and k > 2 * WINDOWS / 3
        latency = last_p99_s if slow else p99_s
        windows.append(
            Window(
                end_s=t,
                sample=_sample(t, **changes),
                by_group=dict.fromkeys(GROUPS, 20),
                errors=0,
                late=0,
                lag_max_ms=1.0,
                valid_latencies_s=(0.005,) * 99 + (latency,) * 2,
            )
        )
    return SoakRun(
        rate_offered=20.0,
        rate_achieved=20.0,
        duration_s=5.0 * WINDOWS,
        warmup_s=WARMUP_S,
        start=_sample(0.0),
        windows=windows,
        client_cpu_percent=5.0,
        kinds={"v1 predict": KindStats(2000, 5.0, 20.0)},
        errors_by_answer=Counter(),
        late=0,
    )


def _restarted(run: SoakRun) -> SoakRun:
    """The run with a worker replaced by a new process in its last window."""
    last = run.windows[-1]
    sample = dataclasses.replace(last.sample, pids=frozenset({1, 2, 4}))
    return dataclasses.replace(
        run, windows=[*run.windows[:-1], dataclasses.replace(last, sample=sample)]
    )


def _failed(run: SoakRun, bounds: Bounds | None = None) -> list[str]:
    return [c.what for c in check(run, bounds or Bounds()) if not c.ok]


def test_a_flat_series_keeps_every_bound() -> None:
    assert _failed(_run()) == []


@pytest.mark.parametrize(
    ("run", "broken"),
    [
        (_run({"rss_bytes": 100 * MIB}), "RSS growth after warm-up (tree)"),
        (_run({"fds": 40}), "open fds growth after warm-up (not clients')"),
        (_run({"metrics_used_bytes": 200 * 1024}), "metrics dir growth after warm-up (used)"),
        (_run(last_p99_s=0.5), "p99 last vs first windows after warm-up"),
        (
            dataclasses.replace(_run(), errors_by_answer=Counter({("v1 predict", "500"): 1})),
            "errors (5xx, transport, timeout, other)",
        ),
        (
            dataclasses.replace(_run(), kinds={"v1 predict": KindStats(0, 0.0, 0.0)}),
            "request kinds never sent",
        ),
        (dataclasses.replace(_run(), rate_achieved=15.0), "rate achieved / offered"),
        (dataclasses.replace(_run(), late=1), "requests not sent: client over 2 s late"),
        (_restarted(_run()), "server processes (none restarted)"),
    ],
)
def test_a_series_breaking_a_bound_fails_that_bound_only(run: SoakRun, broken: str) -> None:
    assert _failed(run) == [broken]


def test_fds_of_client_connections_do_not_count_as_growth() -> None:
    """The clients' pools open and close connections; only the other fds are bounded."""
    assert _failed(_run({"fds": 40, "client_connections": 40})) == []


def test_p99_drift_has_a_ratio_and_an_absolute_slack() -> None:
    # 20 -> 100 ms: over 3x the first windows, within 3x plus the slack (100 ms).
    assert _failed(_run(last_p99_s=0.1)) == []
    assert _failed(_run(last_p99_s=0.1), Bounds(p99_slack_ms=10)) == [
        "p99 last vs first windows after warm-up"
    ]


def test_a_run_that_ends_in_its_warm_up_fails() -> None:
    run = dataclasses.replace(_run(), warmup_s=5.0 * WINDOWS)
    assert "windows after the warm-up" in _failed(run)


def test_options_that_cannot_make_a_soak_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--duration", "62", "--window", "5", "--warmup", "20"])
    with pytest.raises(SystemExit):
        parse_args(["--duration", "60", "--warmup", "55"])
    options, bounds, _ = parse_args(
        ["--duration", "60", "--warmup", "20", "--max-rss-growth-mib", "8"]
    )
    assert options.duration_s == 60 and bounds.max_rss_growth_mib == 8
