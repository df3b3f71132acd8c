"""The soak's report: a table of the windows, a summary, a CSV and a plot of the series."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt

from loadtests.soak.bounds import (
    MIB,
    Bounds,
    fds_not_clients,
    medians_first_last,
    metrics_used_kib,
    p99_first_last,
    rss_mib,
)
from loadtests.soak.samples import Sample
from loadtests.soak.traffic import GROUPS, MAX_LAG_S
from loadtests.soak.windows import SoakRun, Window
from loadtests.thresholds import Check


@dataclass(frozen=True)
class Column:
    name: str
    spec: str  # format spec of the value: "d", ".1f" ...
    value: Callable[[Window, Sample], float]  # of a window, given the sample before it

    def cell(self, window: Window, previous: Sample) -> str:
        return f"{self.value(window, previous):>{len(self.name)}{self.spec}}"


def _cpu_percent(window: Window, previous: Sample) -> float:
    """CPU of the server tree over the window, in % of one core."""
    return 100 * (window.sample.cpu_s - previous.cpu_s) / (window.end_s - previous.t_s)


def _stall_percent(window: Window, previous: Sample) -> float:
    """Share of the window in which some task on the machine waited for a CPU."""
    stalled_s = (window.sample.cpu_stall_us - previous.cpu_stall_us) / 1e6
    return 100 * stalled_s / (window.end_s - previous.t_s)


def _group_column(group: str) -> Column:
    return Column(f"{group:>6}", "d", lambda w, _: w.by_group[group])


# The table's and the CSV's columns (names padded: they set the table's widths).
COLUMNS = [
    Column(" end_s", ".0f", lambda w, _: w.end_s),
    Column("  sent", "d", lambda w, _: w.sent),
    *(_group_column(group) for group in GROUPS),
    Column("errors", "d", lambda w, _: w.errors),
    Column("late", "d", lambda w, _: w.late),
    Column("lag_max_ms", ".1f", lambda w, _: w.lag_max_ms),
    Column(" p50_ms", ".1f", lambda w, _: w.p50_ms),
    Column(" p99_ms", ".1f", lambda w, _: w.p99_ms),
    Column(" rss_mib", ".1f", lambda w, _: w.sample.rss_bytes / MIB),
    Column(" pss_mib", ".1f", lambda w, _: w.sample.pss_bytes / MIB),
    Column(" fds", "d", lambda w, _: w.sample.fds),
    Column("client_conns", "d", lambda w, _: w.sample.client_connections),
    Column("procs", "d", lambda w, _: len(w.sample.pids)),
    Column("cpu_pct", ".0f", _cpu_percent),
    Column("stall_pct", ".0f", _stall_percent),
    Column("metrics_files", "d", lambda w, _: w.sample.metrics_files),
    Column("metrics_kib", ".0f", lambda w, _: w.sample.metrics_file_bytes / 1024),
    Column("metrics_used_kib", ".1f", lambda w, _: w.sample.metrics_used_bytes / 1024),
]


def header() -> str:
    return " ".join(column.name for column in COLUMNS)


def row(window: Window, previous: Sample) -> str:
    return " ".join(column.cell(window, previous) for column in COLUMNS)


def _with_previous(run: SoakRun) -> Iterator[tuple[Window, Sample]]:
    previous = run.start
    for window in run.windows:
        yield window, previous
        previous = window.sample


def table(run: SoakRun) -> str:
    return "\n".join([header(), *(row(w, p) for w, p in _with_previous(run))])


def write_csv(run: SoakRun, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(column.name.strip() for column in COLUMNS)
        for window, previous in _with_previous(run):
            writer.writerow(column.value(window, previous) for column in COLUMNS)


def _growth(
    what: str, unit: str, run: SoakRun, bounds: Bounds, value: Callable[[Sample], float]
) -> str:
    """A summary line: the measure at the start, after the warm-up and at the end, and the
    medians over the first and the last windows after the warm-up that the bounds compare."""
    start, base, end = (value(s) for s in (run.start, run.baseline, run.end))
    first, last = medians_first_last(run, bounds, value)
    return (
        f"{what:<17}start {start:.1f}{unit}, after warm-up {base:.1f}{unit}, end {end:.1f}{unit}; "
        f"medians first/last windows {first:.1f} -> {last:.1f}{unit} ({last - first:+.1f})"
    )


def summary(run: SoakRun, bounds: Bounds) -> list[str]:
    sent = sum(kind.sent for kind in run.kinds.values())
    groups = {g: sum(w.by_group[g] for w in run.windows) for g in GROUPS}
    first, last = p99_first_last(run, bounds)
    cpu = [_cpu_percent(window, previous) for window, previous in _with_previous(run)]
    stall = [_stall_percent(window, previous) for window, previous in _with_previous(run)]
    return [
        f"duration         {run.duration_s:.0f} s (warm-up {run.warmup_s:.0f} s, "
        f"{len(run.windows)} windows)",
        f"rate             offered {run.rate_offered:.1f} req/s, "
        f"achieved {run.rate_achieved:.1f} req/s",
        f"requests         {sent}: " + ", ".join(f"{g} {n}" for g, n in groups.items()),
        _growth("RSS (tree)", " MiB", run, bounds, rss_mib),
        _growth("PSS (tree)", " MiB", run, bounds, lambda sample: sample.pss_bytes / MIB),
        _growth("open fds", "", run, bounds, lambda sample: sample.fds),
        _growth("fds not clients'", "", run, bounds, fds_not_clients),
        _growth("metrics used", " KiB", run, bounds, metrics_used_kib)
        + f"; {run.start.metrics_files} -> {run.end.metrics_files} files, "
        f"{run.start.metrics_file_bytes / 1024:.0f} -> {run.end.metrics_file_bytes / 1024:.0f} "
        "KiB on disk",
        f"p99 (valid)      median of the first windows after warm-up {first:.1f} ms, "
        f"of the last windows {last:.1f} ms",
        f"CPU              server {statistics.median(cpu):.0f}% of a core (median of the windows), "
        f"this client {run.client_cpu_percent:.0f}%; the machine had a task waiting for a CPU "
        f"{statistics.median(stall):.0f}% of the time (median; Linux PSI: other work)",
        f"client           lagged at most {max(w.lag_max_ms for w in run.windows):.0f} ms "
        f"behind its schedule; {run.late} requests not sent (over {MAX_LAG_S:.0f} s late)",
        f"errors           {run.errors}"
        + "".join(
            f"\n  {kind}: {answer} x{n}" for (kind, answer), n in run.errors_by_answer.items()
        ),
    ]


def kinds_table(run: SoakRun) -> str:
    """Requests, p50 and p99 (of the expected answers) per request kind."""
    lines = [f"{'kind':<32} {'sent':>6} {'p50_ms':>7} {'p99_ms':>7}"]
    for name, kind in run.kinds.items():
        lines.append(f"{name:<32} {kind.sent:>6d} {kind.p50_ms:>7.1f} {kind.p99_ms:>7.1f}")
    return "\n".join(lines)


Series = Callable[[Window, Sample], float]
# The plot's panels: a title and its (label, value of a window given the sample before it).
PANELS: list[tuple[str, list[tuple[str, Series]]]] = [
    (
        "memory of the server tree (MiB)",
        [
            ("RSS", lambda w, _: w.sample.rss_bytes / MIB),
            ("PSS", lambda w, _: w.sample.pss_bytes / MIB),
        ],
    ),
    (
        "open fds of the tree",
        [
            ("not clients' connections", lambda w, _: w.sample.fds - w.sample.client_connections),
            ("clients' connections", lambda w, _: w.sample.client_connections),
        ],
    ),
    (
        "Prometheus multiprocess dir (KiB)",
        [
            ("used", lambda w, _: w.sample.metrics_used_bytes / 1024),
            ("on disk", lambda w, _: w.sample.metrics_file_bytes / 1024),
        ],
    ),
    ("valid requests (ms)", [("p50", lambda w, _: w.p50_ms), ("p99", lambda w, _: w.p99_ms)]),
    (
        "CPU (%)",
        [("server, of one core", _cpu_percent), ("machine: a task waiting (PSI)", _stall_percent)],
    ),
    ("requests per window", [("sent", lambda w, _: w.sent), ("errors", lambda w, _: w.errors)]),
]


def plot(run: SoakRun, path: Path) -> None:
    """The series against time, a panel each, the end of the warm-up marked."""
    pairs = list(_with_previous(run))
    t = [window.end_s for window, _ in pairs]
    figure, axes = plt.subplots(len(PANELS), 1, figsize=(10, 2.2 * len(PANELS)), sharex=True)
    for ax, (title, series) in zip(axes, PANELS, strict=True):
        for label, value in series:
            ax.plot(t, [value(window, previous) for window, previous in pairs], label=label)
        ax.axvline(run.warmup_s, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds (dashed: end of the warm-up)")
    figure.suptitle(
        f"soak: {run.rate_offered:.0f} req/s offered for {run.duration_s:.0f} s", fontsize=12
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_reports(run: SoakRun, bounds: Bounds, checks: list[Check], out: Path) -> str:
    """The table, summary and checks as text (also in summary.txt), windows.csv and soak.png."""
    text = "\n".join(
        [
            table(run),
            "",
            kinds_table(run),
            "",
            *summary(run, bounds),
            "",
            "bounds:",
            *("  " + check.line() for check in checks),
        ]
    )
    (out / "summary.txt").write_text(text + "\n")
    write_csv(run, out / "windows.csv")
    plot(run, out / "soak.png")
    return text
