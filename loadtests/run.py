"""`make loadtest`: one bounded, headless locust run with its reports and a threshold verdict.

    python -m loadtests.run                          # starts a local server on free ports
    python -m loadtests.run --host http://svc:3000 --grpc-target svc:8001
    python -m loadtests.run --shape                  # step load: find the knee (stepload.py)
    python -m loadtests.run --profile smoke --run-time 20
    python -m loadtests.run --run-time 30 -- HotPathUser --loglevel DEBUG   # after --: locust's

Writes locust's CSV files, its HTML report, the server log, the user classes that ran and (with
--shape) knee.json into reports/loadtest-<timestamp>/, checks loadtests/thresholds.yaml (the
limits of the user classes that ran), exits 1 when a check fails. LOADTEST_API_TOKEN is sent as
the bearer token (HTTP and gRPC); a local server started for the run then requires it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from loadtests.thresholds import USER_CLASSES_FILE, report
from tests.server import ServerProcess

LOADTESTS = Path(__file__).resolve().parent
PROJECT = LOADTESTS.parent
LOCUST = Path(sys.executable).with_name("locust")
SCENARIOS = [LOADTESTS / "locustfile.py", LOADTESTS / "grpc_user.py"]
STEP_SHAPE = LOADTESTS / "stepload.py"
# Past the run time, locust gets this long to stop, write its reports and exit.
EXIT_GRACE_S = 60


@contextlib.contextmanager
def target(host: str | None, grpc_target: str | None, out: Path) -> Iterator[tuple[str, str]]:
    """(HTTP base URL, gRPC host:port): the given ones, or a local server started for the run."""
    if host:
        yield host, grpc_target or ""
        return
    with local_server(out, os.environ.get("LOADTEST_API_TOKEN")) as server:
        yield server.url, f"127.0.0.1:{server.grpc_port}"


@contextlib.contextmanager
def local_server(out: Path, api_token: str | None = None) -> Iterator[ServerProcess]:
    """`bentoml serve` on free ports, its log and BentoML home in `out`, stopped after; it
    requires `api_token` when one is given."""
    # The server links the models of this BentoML home (BentoML's default one unless set).
    os.environ.setdefault("BENTOML_HOME", str(Path.home() / "bentoml"))
    started = time.monotonic()
    env = {"TABSERVE_API_TOKEN": api_token} if api_token else None
    with ServerProcess.start(out / "server.log", env) as server:
        print(f"local server {server.url} ready in {time.monotonic() - started:.1f} s")
        yield server


def run_locust(args: argparse.Namespace, host: str, grpc_target: str, out: Path) -> None:
    files = [*SCENARIOS, STEP_SHAPE] if args.shape else SCENARIOS
    command = [
        str(LOCUST),
        "--config", str(LOADTESTS / "locust.conf"),
        "-f", ",".join(map(str, files)),
        "--host", host,
        "--run-time", f"{args.run_time}s",
        "--csv", str(out / "locust"),
        "--html", str(out / "report.html"),
        # Pass/fail is decided by the thresholds, not by locust's "any failure" exit code.
        "--exit-code-on-error", "0",
    ]  # fmt: skip
    if args.users:
        command += ["--users", str(args.users), "--spawn-rate", str(args.users)]
    # Last, so they win over the options above (user class names, --loglevel, ...).
    command += args.locust_args
    env = {
        **os.environ,
        "LOADTEST_KNEE_FILE": str(out / "knee.json"),
        "LOADTEST_USER_CLASSES_FILE": str(out / USER_CLASSES_FILE),
    }
    if grpc_target:
        env["LOADTEST_GRPC_TARGET"] = grpc_target
    print("$", " ".join(command))
    subprocess.run(command, cwd=PROJECT, env=env, check=True, timeout=args.run_time + EXIT_GRACE_S)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Our options; everything after `--` is passed to locust as it is."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], usage="%(prog)s [options] [-- locust options]"
    )
    parser.add_argument("--host", help="base URL of a running tabserve; default: start one")
    parser.add_argument("--grpc-target", help="host:port of its gRPC server (default: host:8001)")
    parser.add_argument("--profile", default="default", help="profile in thresholds.yaml")
    parser.add_argument("--run-time", type=int, default=60, help="seconds of load (bounded)")
    parser.add_argument("--users", type=int, help="concurrent users (default: locust.conf)")
    parser.add_argument("--shape", action="store_true", help="step load to find the knee")
    parser.add_argument("--reports", type=Path, default=PROJECT / "reports")
    args = parser.parse_args(argv[:split])
    args.locust_args = argv[split + 1 :]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.reports / time.strftime("loadtest-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    with target(args.host, args.grpc_target, out) as (host, grpc_target):
        run_locust(args, host, grpc_target, out)
    print(f"reports: {out}")
    return 0 if report(out / "locust_stats.csv", args.profile) else 1


if __name__ == "__main__":
    sys.exit(main())
