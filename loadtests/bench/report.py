"""Turn the benchmark's runs into a markdown report, a JSON file and a latency/throughput plot."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt

# The targets (single-row churn, this 2-core machine).
TARGET_RATIO = 2.0
TARGET_P99_32_MS = 50.0
TARGET_P50_1_MS = 2.0
TARGET_P99_1_MS = 5.0
TARGET_BATCH_SHARE = 0.5
TARGET_READY_S = 10.0
TARGET_RSS_MB = 500.0


@dataclass(frozen=True)
class Summary:
    """Medians over the repeats of one server at one user count (failures summed, RSS max)."""

    peer: str
    users: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_s_per_1k: float
    failures: int
    peak_rss_mb: float
    peak_pss_mb: float
    ready_s: float
    rps_runs: tuple[float, ...]


def summarize(runs: list[dict[str, Any]]) -> list[Summary]:
    keys = list(dict.fromkeys((run["peer"], run["users"]) for run in runs))
    summaries = []
    for peer, users in keys:
        group = [run for run in runs if run["peer"] == peer and run["users"] == users]

        def median(field: str, group: list[dict[str, Any]] = group) -> float:
            return statistics.median(run[field] for run in group)

        summaries.append(
            Summary(
                peer=peer,
                users=users,
                rps=median("rps"),
                p50_ms=median("p50_ms"),
                p95_ms=median("p95_ms"),
                p99_ms=median("p99_ms"),
                cpu_s_per_1k=median("cpu_s_per_1k"),
                failures=sum(run["failures"] for run in group),
                peak_rss_mb=max(run["peak_rss_mb"] for run in group),
                peak_pss_mb=max(run["peak_pss_mb"] for run in group),
                ready_s=median("ready_s"),
                rps_runs=tuple(run["rps"] for run in group),
            )
        )
    return summaries


def _find(summaries: Iterable[Summary], peer: str, users: int) -> Summary | None:
    return next((s for s in summaries if s.peer == peer and s.users == users), None)


def _table(summaries: list[Summary], ours: str) -> list[str]:
    best_peer_rps = {
        users: max((s.rps for s in summaries if s.users == users and s.peer != ours), default=0)
        for users in {s.users for s in summaries}
    }
    lines = [
        "| server | users | req/s (median; runs) | p50 ms | p95 ms | p99 ms | CPU s / 1k req "
        "| failures | peak RSS / PSS MB | ready s | vs best peer |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted(summaries, key=lambda s: (s.users, s.peer != ours, -s.rps)):
        runs = ", ".join(f"{rps:.0f}" for rps in s.rps_runs)
        best = best_peer_rps[s.users]
        ratio = f"{s.rps / best:.2f}x" if best else "-"
        lines.append(
            f"| {s.peer} | {s.users} | {s.rps:.0f} ({runs}) | {s.p50_ms:.0f} | {s.p95_ms:.0f} "
            f"| {s.p99_ms:.0f} | {s.cpu_s_per_1k:.2f} | {s.failures} "
            f"| {s.peak_rss_mb:.0f} / {s.peak_pss_mb:.0f} | {s.ready_s:.1f} | {ratio} |"
        )
    return lines


def _verdict(ok: bool) -> str:
    return "holds" if ok else "**does not hold**"


def targets(summaries: list[Summary], ours: str, extras: dict[str, Any]) -> list[str]:
    """One line per target of the issue, with the numbers that decide it."""
    lines = []
    at_32, at_1 = _find(summaries, ours, 32), _find(summaries, ours, 1)
    peers_32 = [s for s in summaries if s.users == 32 and s.peer != ours]
    if at_32 and peers_32:
        best = max(peers_32, key=lambda s: s.rps)
        ratio = at_32.rps / best.rps
        ok = ratio >= TARGET_RATIO and at_32.p99_ms <= TARGET_P99_32_MS and at_32.failures == 0
        lines.append(
            f"- 32 users: {at_32.rps:.0f} req/s = {ratio:.2f}x the best peer ({best.peer}, "
            f"{best.rps:.0f} req/s; target >= {TARGET_RATIO}x), p99 {at_32.p99_ms:.0f} ms "
            f"(<= {TARGET_P99_32_MS:.0f}), {at_32.failures} failures: {_verdict(ok)}"
        )
    if at_1:
        ok = at_1.p50_ms <= TARGET_P50_1_MS and at_1.p99_ms <= TARGET_P99_1_MS
        lines.append(
            f"- 1 user, batching on: p50 {at_1.p50_ms:.1f} ms (<= {TARGET_P50_1_MS:.0f}), "
            f"p99 {at_1.p99_ms:.1f} ms (<= {TARGET_P99_1_MS:.0f}): {_verdict(ok)} "
            "(locust rounds sub-10 ms percentiles to whole ms)"
        )
    if "batch_rows_per_s" in extras:
        ceiling = extras["ceilings"][0]
        share = extras["batch_rows_per_s"] / ceiling["batch_rows_per_s"]
        lines.append(
            f"- 1000-row request: {extras['batch_rows_per_s']:.0f} rows/s over HTTP = "
            f"{share:.0%} of in-process {ceiling['name']} ({ceiling['batch_rows_per_s']:.0f} "
            f"rows/s; target >= {TARGET_BATCH_SHARE:.0%}): {_verdict(share >= TARGET_BATCH_SHARE)}"
        )
    ours_all = [s for s in summaries if s.peer == ours]
    if ours_all:
        ready = max(s.ready_s for s in ours_all)
        rss = max(s.peak_rss_mb for s in ours_all)
        pss = max(s.peak_pss_mb for s in ours_all)
        lines.append(
            f"- ready {ready:.1f} s after start (<= {TARGET_READY_S:.0f}): "
            f"{_verdict(ready <= TARGET_READY_S)}; peak RSS {rss:.0f} MB with all 5 models "
            f"(<= {TARGET_RSS_MB:.0f}): {_verdict(rss <= TARGET_RSS_MB)} (summed PSS, each "
            f"shared page counted once: {pss:.0f} MB)"
        )
    return lines


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(9, 5.5))
    peers = list(dict.fromkeys(run["peer"] for run in runs))
    for index, peer in enumerate(peers):
        color = f"C{index}"
        mine = [run for run in runs if run["peer"] == peer]
        axes.scatter([r["rps"] for r in mine], [r["p50_ms"] for r in mine], color=color,
                     marker="o", label=f"{peer} p50")  # fmt: skip
        axes.scatter([r["rps"] for r in mine], [r["p99_ms"] for r in mine], color=color,
                     marker="^", alpha=0.6, label=f"{peer} p99")  # fmt: skip
    axes.set_xlabel("throughput, requests/s (points at 1 and 32 users, every repeat)")
    axes.set_ylabel("latency, ms (log scale)")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title("Single-row churn: latency vs throughput, same machine, same model file")
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown(
    runs: list[dict[str, Any]], ours: str, extras: dict[str, Any], context: dict[str, Any]
) -> str:
    summaries = summarize(runs)
    lines = [
        "# make bench: tabserve and its peers",
        "",
        f"Started {context['started']}; machine load (uptime) before: {context['load_before']}; "
        f"after: {context['load_after']}. {context['cores']} cores, locust on the same machine.",
        f"Scenario: single-row churn requests, no think time; each server at 1 user for "
        f"{context['seconds'][1]} s and 32 users for {context['seconds'][32]} s, servers taking "
        f"turns, {context['repeats']} repeats. Medians over the repeats; failures summed; "
        "RSS and PSS are peaks of the sums over the whole process tree (PSS counts a shared "
        "page once).",
        "",
        *_table(summaries, ours),
        "",
        "Servers:",
        *(f"- {name}: {description}" for name, description in context["peers"].items()),
        "",
        "In-process ceiling (no server, one thread):",
        *(
            f"- {c['name']}: {c['single_row_per_s']:.0f} single-row calls/s, "
            f"{c['batch_rows_per_s']:.0f} rows/s in 1000-row batches"
            for c in extras["ceilings"]
        ),
        "",
        "Targets:",
        *targets(summaries, ours, extras),
        "",
        "![latency vs throughput](bench.png)",
        "",
    ]
    return "\n".join(lines)
