"""Turn the benchmark's runs into a markdown report, a JSON file and a latency/throughput plot."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from loadtests.bench.openloop import SLO_P99_MS
from loadtests.bench.targets import table, target_rows


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


def _table(summaries: list[Summary], ours: Sequence[str]) -> list[str]:
    best_peer_rps = {
        users: max((s.rps for s in summaries if s.users == users and s.peer not in ours), default=0)
        for users in {s.users for s in summaries}
    }
    lines = [
        "| server | users | req/s (median; runs) | p50 ms | p95 ms | p99 ms | CPU s / 1k req "
        "| failures | peak RSS / PSS MB | ready s | vs best peer |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted(summaries, key=lambda s: (s.users, s.peer not in ours, -s.rps)):
        runs = ", ".join(f"{rps:.0f}" for rps in s.rps_runs)
        best = best_peer_rps[s.users]
        ratio = f"{s.rps / best:.2f}x" if best else "-"
        lines.append(
            f"| {s.peer} | {s.users} | {s.rps:.0f} ({runs}) | {s.p50_ms:.0f} | {s.p95_ms:.0f} "
            f"| {s.p99_ms:.0f} | {s.cpu_s_per_1k:.2f} | {s.failures} "
            f"| {s.peak_rss_mb:.0f} / {s.peak_pss_mb:.0f} | {s.ready_s:.1f} | {ratio} |"
        )
    return lines


def _open_loop_table(open_loop: list[dict[str, Any]], searches: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| server | offered req/s | achieved | p50 ms | p99 ms | max ms | errors "
        "| server CPU ms / req | client CPU ms / req (busy) | client lag p99 ms | p99 <= 50 ms |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    order = list(dict.fromkeys(r["peer"] for r in open_loop))  # the servers' turns
    for r in sorted(open_loop, key=lambda r: (order.index(r["peer"]), r["offered_rps"])):
        errors = ", ".join(f"{n} {answer}" for answer, n in r["errors"].items()) or "0"
        verdict = "yes" if r["holds"] else "undecided" if r["undecided"] else "no"
        if r["client_limited"]:
            verdict += " (client late or busy)"
        lines.append(
            f"| {r['peer']} | {r['offered_rps']:.0f} | {r['achieved_rps']:.0f} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.0f} | {errors} "
            f"| {r['server_cpu_ms_per_request']:.2f} | {r['client_cpu_ms_per_request']:.2f} "
            f"({r['client_cpu_share']:.0%}) | {r['lag_p99_ms']:.1f} | {verdict} |"
        )
    lines.append("")
    for s in searches:
        failing = s["lowest_failing"]
        above = f"; {failing:.0f} req/s did not" if failing is not None else ""
        limited = s["undecided_at"]
        client = f"; {limited:.0f} req/s undecided (client late or busy)" if limited else ""
        lines.append(
            f"- {s['peer']}: highest rate with p99 <= 50 ms {s['highest_holding']:.0f} req/s"
            f"{above}{client} (search runs: {s['runs']})"
        )
    return lines


def _lone_table(lone: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| server | when | requests | req/s | p50 ms | p99 ms | max ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['peer']} | {r['when']} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.2f} "
        f"| {r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['errors']} |"
        for r in lone
    ]
    return lines


def _save(figure: Figure, axes: Axes, title: str, path: Path) -> None:
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title(title)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


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
    _save(
        figure, axes, "Single-row churn: latency vs throughput, same machine, same model file", path
    )


def plot_open_loop(open_loop: list[dict[str, Any]], path: Path) -> None:
    """p50 and p99 against the offered rate, every run of the sweep and the search; a run where
    the client was late or busy is crossed out (its latency is partly the client's)."""
    figure, axes = plt.subplots(figsize=(9, 5.5))
    peers = list(dict.fromkeys(run["peer"] for run in open_loop))
    for index, peer in enumerate(peers):
        color = f"C{index}"
        mine = sorted((r for r in open_loop if r["peer"] == peer), key=lambda r: r["offered_rps"])
        rates = [r["offered_rps"] for r in mine]
        axes.plot(rates, [r["p50_ms"] for r in mine], color=color, marker="o", linestyle="--",
                  linewidth=1, label=f"{peer} p50")  # fmt: skip
        axes.plot(rates, [r["p99_ms"] for r in mine], color=color, marker="^",
                  label=f"{peer} p99")  # fmt: skip
        limited = [r for r in mine if r["client_limited"]]
        axes.scatter([r["offered_rps"] for r in limited], [r["p99_ms"] for r in limited],
                     color="black", marker="x", s=80, zorder=3)  # fmt: skip
    axes.axhline(SLO_P99_MS, color="red", linewidth=1, linestyle=":", label="p99 target 50 ms")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("offered rate, requests/s (open loop, uniform arrivals; log scale)")
    axes.set_ylabel("latency from the scheduled send, ms (log scale)")
    _save(
        figure,
        axes,
        "Single-row churn, open loop: latency vs offered rate (x: client late or busy)",
        path,
    )


def _targets(summaries: list[Summary], ours: Sequence[str], extras: dict[str, Any]) -> list[str]:
    """A targets table for each of our variants; the others are not its peers."""
    lines = []
    for name in ours:
        others = [other for other in ours if other != name]
        lines += [
            f"Targets of the issue for {name}, all from this run:",
            "",
            *table(target_rows(summaries, name, extras, others), name),
            "",
        ]
    return lines


def markdown(
    runs: list[dict[str, Any]],
    ours: Sequence[str],
    extras: dict[str, Any],
    context: dict[str, Any],
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
        f"One closed-loop user, fresh and right after the 32 users ({context['lone_seconds']} s "
        "each, timed to the microsecond):",
        "",
        *_lone_table(extras["lone"]),
        "",
        f"Open loop: constant arrival rate, uniform arrivals, {context['open_seconds']} s per "
        "rate, latency from each request's scheduled send; then a search for the highest rate "
        "that holds (every request 200, achieved >= 95% of offered, p99 <= 50 ms, the client "
        "on schedule). CPU per request: the server's whole process tree (psutil: "
        "/proc/<pid>/stat), over the requests sent. Client late or busy: the client used > 80% "
        "of a core or sent late (lag p99 > 5 ms); a rate that fails so is undecided, not the "
        "server's failure.",
        "",
        *_open_loop_table(extras["open_loop"], extras["searches"]),
        "",
        *_targets(summaries, ours, extras),
        "![latency vs throughput](bench.png)",
        "",
        "![open loop: latency vs offered rate](openloop.png)",
        "",
    ]
    return "\n".join(lines)
