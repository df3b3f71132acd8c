"""The load-test kit, for real: a ~20-second headless locust run of every scenario (HTTP V1,
batches, every model, V2 REST, gRPC, invalid requests) against the session's `bentoml serve`,
checked against the `smoke` thresholds; and the threshold checker failing on broken limits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from loadtests.thresholds import AGGREGATED, check, load_profile, read_stats

PROJECT = Path(__file__).resolve().parent.parent
RUN_TIME_S = 20


@pytest.fixture(scope="module")
def smoke_run(server, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    """(exit code, output, report folder) of `python -m loadtests.run --profile smoke`."""
    reports = tmp_path_factory.mktemp("loadtest")
    command = [
        sys.executable, "-m", "loadtests.run",
        "--host", server.url,
        "--grpc-target", f"127.0.0.1:{server.grpc_port}",
        "--profile", "smoke",
        "--run-time", str(RUN_TIME_S),
        "--users", "10",
        "--reports", str(reports),
    ]  # fmt: skip
    # A little think time: the smoke run shares two cores with the rest of the suite.
    env = {**os.environ, "LOADTEST_THINK_MS": "20"}
    done = subprocess.run(
        command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=RUN_TIME_S + 120
    )
    (folder,) = reports.iterdir()
    return done.returncode, done.stdout + done.stderr, folder


def test_smoke_load_meets_the_smoke_thresholds(smoke_run) -> None:
    code, output, folder = smoke_run
    assert code == 0, output[-4000:]
    assert "FAIL" not in output
    assert (folder / "report.html").stat().st_size > 10_000
    stats = read_stats(folder / "locust_stats.csv")
    # Every scenario ran, each request type was answered, none failed.
    for name in (
        "v1 churn [1 row]",
        "v1 churn [100 rows]",
        "v1 churn [1000 rows]",
        "v2 churn infer [1 row]",
        "ModelInfer churn [1 row]",
    ):
        assert int(stats[name]["Request Count"]) > 0, name
    mixed = [name for name in stats if name.startswith("v1 ") and "churn" not in name]
    assert mixed, "the mixed-model user sent no request"
    assert int(stats[AGGREGATED]["Failure Count"]) == 0


def test_invalid_requests_were_refused_with_their_4xx(smoke_run) -> None:
    """They are part of the load, and counted as successes only for the expected status."""
    _, _, folder = smoke_run
    stats = read_stats(folder / "locust_stats.csv")
    invalid = {name: row for name, row in stats.items() if name.startswith("invalid: ")}
    assert invalid, "no invalid request was sent"
    assert all(int(row["Failure Count"]) == 0 for row in invalid.values())


def test_thresholds_fail_when_the_measurements_break_them(smoke_run) -> None:
    _, _, folder = smoke_run
    stats = read_stats(folder / "locust_stats.csv")
    strict = {
        "max_failure_ratio": 0.0,
        "min_rps": 10**9,
        "p99_ms": {"v1 churn [1 row]": 0.001, "a request never made": 1000},
    }
    failed = {item.what for item in check(stats, strict) if not item.ok}
    assert failed == {"requests/s (all)", "p99 v1 churn [1 row]", "p99 a request never made"}
    # The committed profiles are well-formed: each has every kind of limit.
    for profile in ("default", "smoke"):
        assert {"max_failure_ratio", "min_rps", "p99_ms"} <= set(load_profile(profile))


def test_step_load_records_every_step_and_the_knee(server, tmp_path: Path) -> None:
    """The knee finder, for real: two short steps, each step's rate and p99 in knee.json."""
    env = {
        **os.environ,
        "LOCUST_USER_CLASSES": "HotPathUser",
        "LOADTEST_STEP_USERS": "1,3",
        "LOADTEST_STEP_S": "4",
        "LOADTEST_SLO_P99_MS": "60000",  # never crossed here: both steps run
        "LOADTEST_THINK_MS": "20",
    }
    command = [sys.executable, "-m", "loadtests.run", "--host", server.url, "--shape",
               "--profile", "smoke", "--run-time", "30", "--reports", str(tmp_path)]  # fmt: skip
    subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, timeout=120)
    (folder,) = tmp_path.iterdir()
    summary = json.loads((folder / "knee.json").read_text())
    assert [step["users"] for step in summary["steps"]] == [1, 3]
    assert all(step["rps"] > 0 and step["failure_ratio"] == 0 for step in summary["steps"])
    assert summary["knee"] == max(summary["steps"], key=lambda step: step["rps"])


def test_a_run_without_requests_fails(tmp_path: Path) -> None:
    stats_csv = tmp_path / "locust_stats.csv"
    stats_csv.write_text("Type,Name,Request Count,Failure Count,Requests/s\n,Aggregated,0,0,0\n")
    checks = check(read_stats(stats_csv), load_profile("smoke"))
    assert [item.ok for item in checks] == [False]


@pytest.mark.parametrize("kube_version", ["1.30.0", "1.37.0"])
def test_in_cluster_manifests_are_valid_kubernetes(kube_version: str) -> None:
    """loadtests/k8s: master Job + Service and worker Job, strictly schema-valid."""
    manifests = [
        document
        for path in sorted((PROJECT / "loadtests" / "k8s").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
    ]
    assert {m["kind"] for m in manifests} == {"Job", "Service"}
    for manifest in manifests:
        kubernetes_validate.validate(manifest, kube_version, strict=True)
    jobs = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Job"}
    master_args = jobs["tabserve-locust-master"]["spec"]["template"]["spec"]["containers"][0]
    worker = jobs["tabserve-locust-workers"]["spec"]["template"]["spec"]["containers"][0]
    # Every run is bounded, and the workers find the master's Service.
    assert all(job["spec"]["activeDeadlineSeconds"] <= 900 for job in jobs.values())
    assert any(arg.startswith("--run-time=") for arg in master_args["args"])
    assert "--master-host=tabserve-locust-master" in worker["args"]
