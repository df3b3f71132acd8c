"""`make soak`: a real `bentoml serve` under open-loop mixed traffic for minutes, watched.

    python -m loadtests.soak                              # 600 s at 40 req/s
    python -m loadtests.soak --duration 60 --rate 20 --warmup 20
    python -m loadtests.soak --max-rss-growth-mib 50      # any bound can be given

Starts the server on free ports (models from $BENTOML_HOME, else ~/bentoml), sends the mix of
loadtests/soak/traffic.py on a fixed schedule, samples the server's process tree and metrics
directory every window, prints a row per window, then the table, a summary and the bounds
(loadtests/soak/bounds.py). Writes summary.txt, windows.csv, soak.png and the server log to
reports/soak/<time>/. Exits 1 when a bound is broken, 2 on bad options.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from loadtests.run import local_server
from loadtests.soak.bounds import Bounds, check
from loadtests.soak.report import write_reports
from loadtests.soak.run import Options, soak

PROJECT = Path(__file__).resolve().parents[2]


def _option(name: str) -> str:
    return "--" + name.removesuffix("_s").replace("_", "-")


def parse_args(argv: list[str] | None = None) -> tuple[Options, Bounds, Path]:
    """Options and bounds from the command line: one flag per field, defaulting to the field's
    default (the values and the reasons for them live in run.Options and bounds.Bounds)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for group, cls in (("traffic", Options), ("bounds", Bounds)):
        arguments = parser.add_argument_group(group)
        for field in dataclasses.fields(cls):
            default = field.default
            arguments.add_argument(
                _option(field.name),
                dest=field.name,
                type=type(default),
                default=default,
                help=f"default {default}",
            )
    parser.add_argument("--reports", type=Path, default=PROJECT / "reports" / "soak")
    args = vars(parser.parse_args(argv))
    options = Options(**{f.name: args[f.name] for f in dataclasses.fields(Options)})
    bounds = Bounds(**{f.name: args[f.name] for f in dataclasses.fields(Bounds)})
    if problems := options.problems():
        parser.error("; ".join(problems))
    return options, bounds, args["reports"]


def main(argv: list[str] | None = None) -> int:
    options, bounds, reports = parse_args(argv)
    out = reports / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    with local_server(out) as server:
        run = soak(server, options)
    checks = check(run, bounds)
    print(write_reports(run, bounds, checks, out))
    print(f"reports: {out}")
    return 0 if all(item.ok for item in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
