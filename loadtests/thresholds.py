"""Check locust's statistics CSV against a profile of loadtests/thresholds.yaml.

    python -m loadtests.thresholds reports/loadtest-.../locust_stats.csv --profile default

Latency limits are grouped by user class: only the classes that ran are judged, as listed in
user_classes.json beside the CSV (written by the locustfile, see LOADTEST_USER_CLASSES_FILE);
without that file every class is. Prints one line per check and exits 1 when any is broken.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import yaml

THRESHOLDS = Path(__file__).with_name("thresholds.yaml")
AGGREGATED = "Aggregated"
# Beside locust's CSV: the user classes that spawned (a JSON list), written by the locustfile.
USER_CLASSES_FILE = "user_classes.json"


@dataclass(frozen=True)
class Check:
    what: str
    limit: str
    measured: str
    ok: bool

    def line(self) -> str:
        verdict = "ok  " if self.ok else "FAIL"
        return f"{verdict}  {self.what:<42} {self.measured:>14}  (limit {self.limit})"


def load_profile(name: str, path: Path = THRESHOLDS) -> dict:
    profiles = yaml.safe_load(path.read_text())["profiles"]
    if name not in profiles:
        raise SystemExit(f"no profile {name!r} in {path}; one of {', '.join(profiles)}")
    return profiles[name]


def read_stats(stats_csv: Path) -> dict[str, dict[str, str]]:
    """locust's <prefix>_stats.csv, one row per request name (plus "Aggregated")."""
    with stats_csv.open(newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def user_classes_that_ran(stats_csv: Path) -> list[str] | None:
    """The classes listed in user_classes.json beside `stats_csv`; None without the file."""
    path = stats_csv.with_name(USER_CLASSES_FILE)
    return json.loads(path.read_text()) if path.exists() else None


def check(
    stats: dict[str, dict[str, str]], profile: dict, ran: Collection[str] | None = None
) -> list[Check]:
    """The profile's checks; the p99 limits only for the user classes in `ran` (all if None)."""
    total = stats.get(AGGREGATED)
    if total is None or int(total["Request Count"]) == 0:
        return [Check("requests made", "> 0", "0", False)]
    requests, failures = int(total["Request Count"]), int(total["Failure Count"])
    ratio = failures / requests
    checks = [
        Check(
            "failure ratio",
            f"<= {profile['max_failure_ratio']}",
            f"{ratio:.4f} ({failures}/{requests})",
            ratio <= profile["max_failure_ratio"],
        ),
        Check(
            "requests/s (all)",
            f">= {profile['min_rps']}",
            f"{float(total['Requests/s']):.1f}",
            float(total["Requests/s"]) >= profile["min_rps"],
        ),
    ]
    limits = {
        name: limit
        for user_class, by_name in profile.get("p99_ms", {}).items()
        if ran is None or user_class in ran
        for name, limit in by_name.items()
    }
    for name, limit in limits.items():
        row = stats.get(name)
        if row is None or int(row["Request Count"]) == 0:
            checks.append(Check(f"p99 {name}", f"<= {limit} ms", "not requested", False))
            continue
        p99 = float(row["99%"])
        checks.append(Check(f"p99 {name}", f"<= {limit} ms", f"{p99:.0f} ms", p99 <= limit))
    return checks


def report(stats_csv: Path, profile_name: str) -> bool:
    """Print every check; True when all hold."""
    profile, ran = load_profile(profile_name), user_classes_that_ran(stats_csv)
    checks = check(read_stats(stats_csv), profile, ran)
    print(f"thresholds ({profile_name}) on {stats_csv}:")
    for item in checks:
        print("  " + item.line())
    if ran is not None and (not_run := sorted(set(profile.get("p99_ms", {})) - set(ran))):
        print(f"  not judged: the limits of {', '.join(not_run)}, which did not run")
    return all(item.ok for item in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stats_csv", type=Path)
    parser.add_argument("--profile", default="default")
    args = parser.parse_args(argv)
    return 0 if report(args.stats_csv, args.profile) else 1


if __name__ == "__main__":
    sys.exit(main())
