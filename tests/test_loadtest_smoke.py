"""The load-test kit, for real: a ~20-second headless locust run of every scenario (HTTP V1,
batches, every model, V2 REST, gRPC, invalid requests) against the session's `bentoml serve`,
checked against the `smoke` thresholds; the threshold checker failing on broken limits and
judging only the user classes that ran; a token-protected server loaded with and without the
token; and the in-cluster manifests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from loadtests.thresholds import AGGREGATED, USER_CLASSES_FILE, check, load_profile, read_stats
from tests.server import ServerProcess

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
    ran = json.loads((folder / USER_CLASSES_FILE).read_text())
    assert ran == sorted(
        ["BatchUser", "GrpcInferUser", "HotPathUser", "MixedModelUser", "OipRestUser"]
    )


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
        "p99_ms": {
            "HotPathUser": {"v1 churn [1 row]": 0.001},
            "BatchUser": {"a request never made": 1000},
        },
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
    done = subprocess.run(
        command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120
    )
    # Both steps pass the smoke limits: a non-zero exit is a broken run or checker.
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    (folder,) = tmp_path.iterdir()
    summary = json.loads((folder / "knee.json").read_text())
    assert [step["users"] for step in summary["steps"]] == [1, 3]
    assert all(step["rps"] > 0 and step["failure_ratio"] == 0 for step in summary["steps"])
    assert summary["knee"] == max(summary["steps"], key=lambda step: step["rps"])


def test_only_the_user_classes_that_ran_are_judged(smoke_run) -> None:
    _, _, folder = smoke_run
    stats = read_stats(folder / "locust_stats.csv")
    profile = {
        "max_failure_ratio": 0.0,
        "min_rps": 0,
        "p99_ms": {"HotPathUser": {"v1 churn [1 row]": 10**6}, "NeverRan": {"nothing": 1}},
    }
    judged = {item.what: item.ok for item in check(stats, profile, ran=["HotPathUser"])}
    assert judged == {"failure ratio": True, "requests/s (all)": True, "p99 v1 churn [1 row]": True}
    # A class said to have run but whose requests are missing fails (a broken scenario).
    assert not all(item.ok for item in check(stats, profile, ran=["HotPathUser", "NeverRan"]))


def test_profiles_group_limits_by_the_user_classes_of_the_scenarios() -> None:
    scenarios = (PROJECT / "loadtests" / "locustfile.py").read_text()
    scenarios += (PROJECT / "loadtests" / "grpc_user.py").read_text()
    classes = set(re.findall(r"^class (\w+User)\((?:TabserveUser|User)\)", scenarios, re.M))
    for name in ("default", "smoke"):
        assert set(load_profile(name)["p99_ms"]) <= classes, name


def test_a_run_without_requests_fails(tmp_path: Path) -> None:
    stats_csv = tmp_path / "locust_stats.csv"
    stats_csv.write_text("Type,Name,Request Count,Failure Count,Requests/s\n,Aggregated,0,0,0\n")
    checks = check(read_stats(stats_csv), load_profile("smoke"))
    assert [item.ok for item in checks] == [False]


# --- a server that requires a token --------------------------------------------------------------
TOKEN = "loadtest-token-0123456789abcdef"


@pytest.fixture(scope="module")
def protected_server(trained_store: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("protected") / "serve.log"
    with ServerProcess.start(log, {"TABSERVE_API_TOKEN": TOKEN}) as server:
        yield server


def short_run(server, reports: Path, token: str | None) -> tuple[int, str, Path]:
    """A few seconds of HotPathUser and GrpcInferUser only (chosen through the options passed
    to locust after `--`), with LOADTEST_API_TOKEN set to `token` or unset."""
    command = [
        sys.executable, "-m", "loadtests.run",
        "--host", server.url,
        "--grpc-target", f"127.0.0.1:{server.grpc_port}",
        "--profile", "smoke",
        "--run-time", "6",
        "--users", "4",
        "--reports", str(reports),
        "--", "HotPathUser", "GrpcInferUser",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "LOADTEST_API_TOKEN"}
    env |= {"LOADTEST_THINK_MS": "50"} | ({"LOADTEST_API_TOKEN": token} if token else {})
    done = subprocess.run(
        command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120
    )
    (folder,) = reports.iterdir()
    return done.returncode, done.stdout + done.stderr, folder


def test_the_token_is_sent_over_http_and_grpc(protected_server, tmp_path: Path) -> None:
    code, output, folder = short_run(protected_server, tmp_path, TOKEN)
    assert code == 0, output[-4000:]
    stats = read_stats(folder / "locust_stats.csv")
    for name in ("v1 churn [1 row]", "ModelInfer churn [1 row]"):
        assert int(stats[name]["Request Count"]) > 0, name
    assert int(stats[AGGREGATED]["Failure Count"]) == 0
    # Only the classes asked for ran, and only their limits were judged.
    assert json.loads((folder / USER_CLASSES_FILE).read_text()) == ["GrpcInferUser", "HotPathUser"]
    assert "v1 churn [100 rows]" not in stats
    assert "not judged: the limits of BatchUser, OipRestUser, which did not run" in output


def test_without_the_token_every_request_fails_and_so_does_the_run(
    protected_server, tmp_path: Path
) -> None:
    code, output, folder = short_run(protected_server, tmp_path, None)
    assert code == 1, output[-4000:]
    stats = read_stats(folder / "locust_stats.csv")
    for name in ("v1 churn [1 row]", "ModelInfer churn [1 row]"):
        assert stats[name]["Failure Count"] == stats[name]["Request Count"] != "0", name
    assert re.search(r"FAIL +failure ratio", output), output[-4000:]


# --- in the cluster ------------------------------------------------------------------------------
def manifests() -> list[dict]:
    return [
        document
        for path in sorted((PROJECT / "loadtests" / "k8s").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
    ]


def containers() -> dict[str, dict]:
    """Job name -> its (only) container."""
    return {
        m["metadata"]["name"]: m["spec"]["template"]["spec"]["containers"][0]
        for m in manifests()
        if m["kind"] == "Job"
    }


@pytest.mark.parametrize("kube_version", ["1.30.0", "1.37.0"])
def test_in_cluster_manifests_are_valid_kubernetes(kube_version: str) -> None:
    """loadtests/k8s: master Job + Service and worker Job, strictly schema-valid."""
    assert {m["kind"] for m in manifests()} == {"Job", "Service"}
    for manifest in manifests():
        kubernetes_validate.validate(manifest, kube_version, strict=True)
    master, worker = containers()["tabserve-locust-master"], containers()["tabserve-locust-workers"]
    assert "--master-host=tabserve-locust-master" in worker["args"]
    token = next(env for env in worker["env"] if env["name"] == "LOADTEST_API_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {
        "name": "tabserve-auth", "key": "api-token", "optional": True
    }  # fmt: skip
    master_env = {env["name"]: env["value"] for env in master["env"]}
    assert master_env["LOADTEST_USER_CLASSES_FILE"] == f"/reports/{USER_CLASSES_FILE}"


def test_every_in_cluster_run_is_bounded_with_time_to_copy_the_reports() -> None:
    jobs = {m["metadata"]["name"]: m for m in manifests() if m["kind"] == "Job"}
    master = containers()["tabserve-locust-master"]
    option = dict(arg.removeprefix("--").split("=", 1) for arg in master["args"] if "=" in arg)
    run_s = int(option["run-time"].removesuffix("m")) * 60
    hold_s = int(next(env["value"] for env in master["env"] if env["name"] == "REPORTS_HOLD_S"))
    needed = int(option["expect-workers-max-wait"]) + run_s + int(option["stop-timeout"]) + hold_s
    assert hold_s >= 120
    assert all(needed < job["spec"]["activeDeadlineSeconds"] <= 900 for job in jobs.values())


def test_the_master_keeps_its_reports_until_copied_and_keeps_locusts_exit_code(
    tmp_path: Path,
) -> None:
    """The master's shell wrapper, run here with this venv's locust and /reports moved."""
    master = containers()["tabserve-locust-master"]
    assert master["command"][:2] == ["sh", "-c"]
    script = master["command"][2].replace("/reports", str(tmp_path))
    assert master["readinessProbe"]["exec"]["command"] == ["test", "-f", "/reports/complete"]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "REPORTS_HOLD_S": "0",
        "HOSTNAME": "locust-master-x",
    }

    def wrapper(*args: str) -> subprocess.CompletedProcess[str]:
        command = ["sh", "-c", script, *master["command"][3:], *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    done = wrapper("--version")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "complete").exists()
    assert "kubectl cp locust-master-x:" in done.stdout
    assert wrapper("--no-such-option").returncode != 0
