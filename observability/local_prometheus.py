"""A local Prometheus (Debian's `prometheus` package) scraping tabserve on 127.0.0.1.

Used by `make observe` (run this module) and by the tests: a generated config with one scrape
job per target and the project's alert rules, a private TSDB directory, a free loopback port.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.local_process import free_port, stop_process_group, wait_until_ready

OBSERVABILITY = Path(__file__).resolve().parent
ALERT_RULES = OBSERVABILITY / "alerts.yaml"
# The target labels the Prometheus Operator gives the runbook's install (release tabserve in
# ml-serving), which the rules of alerts.yaml, rendered for that install, select.
TARGET_LABELS = {"namespace": "ml-serving", "service": "tabserve"}
READY_TIMEOUT_S = 30


def scrape_config(
    targets: Sequence[str],
    interval_s: float,
    rule_files: Sequence[Path],
    target_labels: Sequence[Mapping[str, str]] = (TARGET_LABELS,),
) -> str:
    """Prometheus configuration (JSON is valid YAML): every target scraped at `/metrics`, once
    per set of target labels (a test can stand one server in for several pods)."""
    interval = f"{int(interval_s * 1000)}ms"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": "tabserve",
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": list(targets), "labels": dict(labels)} for labels in target_labels
                ],
            }
        ],
    }
    return json.dumps(config, indent=2)


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        targets: Sequence[str],
        workdir: Path,
        interval_s: float = 1.0,
        port: int | None = None,
        rule_files: Sequence[Path] = (ALERT_RULES,),
        target_labels: Sequence[Mapping[str, str]] = (TARGET_LABELS,),
    ) -> Iterator[Prometheus]:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: run `make system-deps`")
        config = workdir / "prometheus.yml"
        config.write_text(scrape_config(targets, interval_s, rule_files, target_labels))
        port = port or free_port()
        log = workdir / "prometheus.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(process, f"http://127.0.0.1:{port}", log)
        try:
            server.wait_ready()
            yield server
        finally:
            server.stop()

    def wait_ready(self) -> None:
        wait_until_ready(self.process, f"{self.url}/-/ready", self.log, READY_TIMEOUT_S)

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; Prometheus answers errors (a bad query: 400) as JSON too."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            return json.load(error)

    def query(self, expr: str) -> dict[str, Any]:
        """The instant query's whole answer: `status`, and `data` or `error`."""
        return self.api("query", query=expr)

    def stop(self) -> None:
        stop_process_group(self.process, timeout_s=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:8002", help="tabserve's metrics host:port")
    parser.add_argument("--port", type=int, default=9090, help="Prometheus port on 127.0.0.1")
    parser.add_argument("--interval", type=float, default=5.0, help="scrape interval, seconds")
    args = parser.parse_args()
    # `kill` (make's trap, a supervisor) must stop Prometheus too: it runs in its own session.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with (
        tempfile.TemporaryDirectory(prefix="tabserve-prometheus-") as workdir,
        Prometheus.start([args.target], Path(workdir), args.interval, args.port) as prometheus,
    ):
        print(
            f"Prometheus {prometheus.url} scrapes http://{args.target}/metrics "
            f"every {args.interval:g}s\n"
            f"  targets: {prometheus.url}/targets   alerts: {prometheus.url}/alerts\n"
            f"  try:     {prometheus.url}/graph?g0.expr=sum+by+(model)+"
            "(rate(tabserve_predictions_total[1m]))\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            prometheus.process.wait()
        if prometheus.process.returncode not in (None, 0):
            sys.exit(f"prometheus exited:\n{prometheus.log.read_text()[-3000:]}")


if __name__ == "__main__":
    main()
