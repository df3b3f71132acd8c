"""The issue's targets as a table: each with its measured value, the peer's and the ratio where
the target is a ratio, and PASS/FAIL, all from one `make bench` run. A target the run did not
measure is listed as "not measured", never left out."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from loadtests.bench.openloop import SLO_P99_MS

# Single-row churn on this 2-core machine unless said.
LONE_RATES = (10.0, 50.0)  # req/s: "lone requests" are measured at these open-loop rates
LONE_CPU_MS = 1.5
LONE_CPU_SHARE_OF_FLASK = 0.5
FLASK_DEV = "flask-dev"
LONE_P50_MS = 2.0
LONE_P99_MS = 5.0
RATIO = 2.0  # x the best peer: 32-user req/s and the highest open-loop rate
BATCH_SHARE = 0.5  # of in-process rows/s, 1000-row requests
BIG_BATCH_SHARE = 0.7  # 10,000-row requests over OIP binary
PSS_MB = 500.0
READY_S = 5.0
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Row:
    target: str
    measured: str
    versus: str  # the peer's value and our ratio to it, where the target is a ratio
    verdict: str


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def _unmeasured(target: str) -> Row:
    return Row(target, "-", "-", NOT_MEASURED)


def _lone_cpu(open_loop: list[dict[str, Any]], ours: str) -> list[Row]:
    def cpu(peer: str) -> dict[float, float]:
        return {
            r["offered_rps"]: r["server_cpu_ms_per_request"]
            for r in open_loop
            if r["peer"] == peer and r["phase"] == "sweep" and r["offered_rps"] in LONE_RATES
        }

    mine, flask = cpu(ours), cpu(FLASK_DEV)
    first = f"server CPU per request at 10-50 req/s <= {LONE_CPU_MS} ms, all processes"
    second = f"... and <= {LONE_CPU_SHARE_OF_FLASK}x {FLASK_DEV}'s"
    if not mine:
        return [_unmeasured(first), _unmeasured(second)]
    measured = ", ".join(f"{cpu:.2f} ms at {rate:.0f}/s" for rate, cpu in sorted(mine.items()))
    rows = [Row(first, measured, "-", _verdict(max(mine.values()) <= LONE_CPU_MS))]
    both = sorted(set(mine) & set(flask))
    if not both:
        return [*rows, _unmeasured(second)]
    ratios = {rate: mine[rate] / flask[rate] for rate in both}
    versus = ", ".join(
        f"{flask[rate]:.2f} ms ({ratios[rate]:.2f}x) at {rate:.0f}/s" for rate in both
    )
    ok = max(ratios.values()) <= LONE_CPU_SHARE_OF_FLASK
    return [*rows, Row(second, measured, versus, _verdict(ok))]


def _lone_latency(lone: list[dict[str, Any]], ours: str) -> list[Row]:
    rows = []
    for when in ("fresh", "after 32 users"):
        target = f"1 user, {when}: p50 <= {LONE_P50_MS:.0f} ms, p99 <= {LONE_P99_MS:.0f} ms"
        run = next((r for r in lone if r["peer"] == ours and r["when"] == when), None)
        if run is None:
            rows.append(_unmeasured(target))
            continue
        ok = run["p50_ms"] <= LONE_P50_MS and run["p99_ms"] <= LONE_P99_MS and not run["errors"]
        measured = f"p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms"
        rows.append(Row(target, measured, "-", _verdict(ok)))
    return rows


def _versus_best(
    target: str, ours: str, values: dict[str, float], describe: Callable[[float], str]
) -> Row:
    """A 'RATIO x the best peer' target, from each server's value (higher is better)."""
    peers = {peer: value for peer, value in values.items() if peer != ours}
    if ours not in values or not peers:
        return _unmeasured(target)
    best = max(peers, key=peers.__getitem__)
    ratio = values[ours] / peers[best] if peers[best] else float("inf")
    versus = f"{best}: {describe(peers[best])} ({ratio:.2f}x)"
    return Row(target, describe(values[ours]), versus, _verdict(ratio >= RATIO))


def _closed_32(summaries: Iterable[Any], ours: str) -> list[Row]:
    at_32 = {s.peer: s for s in summaries if s.users == 32}
    rows = [
        _versus_best(
            f"32 users: >= {RATIO:.0f}x the best peer's req/s",
            ours,
            {peer: s.rps for peer, s in at_32.items()},
            lambda rps: f"{rps:.0f} req/s",
        )
    ]
    target = f"32 users: p99 <= {SLO_P99_MS:.0f} ms, no failures"
    if ours not in at_32:
        return [*rows, _unmeasured(target)]
    mine = at_32[ours]
    ok = mine.p99_ms <= SLO_P99_MS and mine.failures == 0
    measured = f"p99 {mine.p99_ms:.0f} ms, {mine.failures} failures"
    return [*rows, Row(target, measured, "-", _verdict(ok))]


def _highest_rate(searches: list[dict[str, Any]], ours: str) -> Row:
    target = (
        f"highest open-loop rate with p99 <= {SLO_P99_MS:.0f} ms: >= {RATIO:.0f}x the best peer's"
    )
    row = _versus_best(
        target,
        ours,
        {s["peer"]: s["highest_holding"] for s in searches},
        lambda rate: f"{rate:.0f} req/s",
    )
    mine = next((s for s in searches if s["peer"] == ours), None)
    if mine and mine["undecided_at"] is not None and row.verdict != "PASS":
        # Our server may hold more than the client could offer: the ratio is a lower bound.
        limit = f"{row.measured} ({mine['undecided_at']:.0f} req/s undecided)"
        return Row(target, limit, row.versus, "undecided: the client was late or busy")
    return row


def _batches(extras: dict[str, Any], ours: str) -> list[Row]:
    """run.py's sequential large requests to our server against the in-process rate."""
    ceiling = extras["ceilings"][0]  # XGBoost's inplace_predict on a ready array
    measured_rates = extras.get("batches", {}).get(ours, {})
    rows = []
    for key, requests, share in (
        ("batch_rows_per_s", "1000-row requests over V1", BATCH_SHARE),
        ("batch_rows_per_s_grpc", "1000-row requests over OIP gRPC", BATCH_SHARE),
        ("big_batch_rows_per_s_oip", "10,000-row requests over OIP binary", BIG_BATCH_SHARE),
    ):
        target = f"{requests}: >= {share:.0%} of in-process rows/s"
        if key not in measured_rates:
            rows.append(_unmeasured(target))
            continue
        ratio = measured_rates[key] / ceiling["batch_rows_per_s"]
        versus = f"in-process {ceiling['name']}: {ceiling['batch_rows_per_s']:.0f} rows/s"
        measured = f"{measured_rates[key]:.0f} rows/s ({ratio:.0%})"
        rows.append(Row(target, measured, versus, _verdict(ratio >= share)))
    return rows


def _memory_and_ready(summaries: Iterable[Any], ours: str) -> list[Row]:
    mine = [s for s in summaries if s.peer == ours]
    memory = f"memory: summed PSS <= {PSS_MB:.0f} MB with all models"
    ready = f"ready <= {READY_S:.0f} s after start"
    if not mine:
        return [_unmeasured(memory), _unmeasured(ready)]
    pss = max(s.peak_pss_mb for s in mine)
    seconds = max(s.ready_s for s in mine)
    return [
        Row(memory, f"{pss:.0f} MB (peak)", "-", _verdict(pss <= PSS_MB)),
        Row(ready, f"{seconds:.1f} s (slowest start)", "-", _verdict(seconds <= READY_S)),
    ]


def target_rows(
    summaries: list[Any], ours: str, extras: dict[str, Any], others: Collection[str] = ()
) -> list[Row]:
    """Every target of the issue for our server `ours`, in the issue's order. `summaries`:
    report.Summary per (peer, users); `others`: our other variants in the run (split and inline
    modes), which are not the peers a ratio is taken against."""
    summaries = [s for s in summaries if s.peer not in others]
    searches = [s for s in extras.get("searches", []) if s["peer"] not in others]
    return [
        *_lone_cpu(extras.get("open_loop", []), ours),
        *_lone_latency(extras.get("lone", []), ours),
        *_closed_32(summaries, ours),
        _highest_rate(searches, ours),
        *_batches(extras, ours),
        *_memory_and_ready(summaries, ours),
    ]


def table(rows: list[Row], ours: str) -> list[str]:
    lines = [f"| target | {ours} | compared with (ratio) | verdict |", "|---|---|---|---|"]
    lines += [f"| {r.target} | {r.measured} | {r.versus} | {r.verdict} |" for r in rows]
    return lines
