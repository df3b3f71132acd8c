"""The soak's series: its outcomes and samples cut into fixed windows of time, and the run that
holds them. Pure data and arithmetic, so the bounds can be tested on made-up series."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from loadtests.soak.samples import Sample
from loadtests.soak.traffic import GROUPS, LATE, Outcome


def percentile_ms(latencies_s: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile in milliseconds; NaN for no values."""
    if not latencies_s:
        return float("nan")
    ordered = sorted(latencies_s)
    return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass(frozen=True)
class Window:
    """The requests due in [end - length, end) and the sample taken at `end`."""

    end_s: float
    sample: Sample
    by_group: dict[str, int]  # requests due in the window, per group
    errors: int  # not the expected answer (the client's own lateness apart)
    late: int  # not sent: the client was over traffic.MAX_LAG_S behind its schedule
    lag_max_ms: float
    valid_latencies_s: tuple[float, ...] = field(repr=False)

    @property
    def sent(self) -> int:
        return sum(self.by_group.values())

    @property
    def p50_ms(self) -> float:
        return percentile_ms(self.valid_latencies_s, 0.50)

    @property
    def p99_ms(self) -> float:
        return percentile_ms(self.valid_latencies_s, 0.99)


def window(outcomes: Sequence[Outcome], sample: Sample, length_s: float) -> Window:
    """The window ending at the sample, from the outcomes of the requests due in it."""
    due = [o for o in outcomes if sample.t_s - length_s <= o.due_s < sample.t_s]
    by_group = Counter(o.group for o in due)
    return Window(
        end_s=sample.t_s,
        sample=sample,
        by_group={group: by_group[group] for group in GROUPS},
        errors=sum(o.server_error for o in due),
        late=sum(o.answer == LATE for o in due),
        lag_max_ms=1000 * max((o.lag_s for o in due), default=0.0),
        valid_latencies_s=tuple(o.latency_s for o in due if o.group == "valid" and o.ok),
    )


@dataclass(frozen=True)
class KindStats:
    sent: int
    p50_ms: float  # of its answers as expected
    p99_ms: float


def kind_stats(names: Sequence[str], outcomes: Sequence[Outcome]) -> dict[str, KindStats]:
    """Per request kind, a kind never sent included (sent 0)."""
    stats = {}
    for name in names:
        mine = [o for o in outcomes if o.kind == name and o.sent]
        latencies = [o.latency_s for o in mine if o.ok]
        stats[name] = KindStats(
            len(mine), percentile_ms(latencies, 0.50), percentile_ms(latencies, 0.99)
        )
    return stats


@dataclass(frozen=True)
class SoakRun:
    rate_offered: float  # requests/s scheduled
    rate_achieved: float  # requests/s actually sent (lower when the client fell behind)
    duration_s: float
    warmup_s: float
    start: Sample  # before the first request
    windows: list[Window]
    client_cpu_percent: float  # of one core: the load generator's own CPU, sampler included
    kinds: dict[str, KindStats]
    errors_by_answer: Counter[tuple[str, str]]  # (kind, answer) of every error
    late: int  # requests not sent: the client was over traffic.MAX_LAG_S behind

    @property
    def baseline(self) -> Sample:
        """The sample the growth is measured from: the end of the warm-up."""
        warm = [w.sample for w in self.windows if w.end_s <= self.warmup_s]
        return warm[-1] if warm else self.start

    @property
    def after_warmup(self) -> list[Window]:
        return [w for w in self.windows if w.end_s > self.warmup_s]

    @property
    def end(self) -> Sample:
        return self.windows[-1].sample if self.windows else self.start

    @property
    def errors(self) -> int:
        return sum(self.errors_by_answer.values())
