"""The local cluster of `make cluster` as the end-to-end tests use it: kubectl and helm (the
versions scripts/cluster/ built) with its kubeconfig, its Prometheus, and locust against a Service.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import tritonclient.grpc as grpcclient

from tabserve.catalog import MODELS

PROJECT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPTS = PROJECT / "scripts" / "cluster"


def _versions() -> dict[str, str]:
    lines = (CLUSTER_SCRIPTS / "versions.env").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return dict(pairs)


VERSIONS = _versions()
CACHE = Path(os.environ.get("TABSERVE_CLUSTER_CACHE", Path.home() / ".cache/tabserve/cluster"))
STATE = Path(os.environ.get("TABSERVE_CLUSTER_STATE", PROJECT / ".cluster"))
KUBECONFIG = STATE / "kubeconfig"
PROMETHEUS_URL = f"http://127.0.0.1:{VERSIONS['PROMETHEUS_PORT']}"
_TOOLS = [
    CACHE / "bin" / f"kubernetes-{VERSIONS['KUBERNETES_VERSION']}",
    CACHE / "bin" / f"helm-{VERSIONS['HELM_VERSION']}",
]
T = TypeVar("T")


# The runbook's release (docs/deploy.md), as the end-to-end tests install it.
RUNBOOK = PROJECT / "docs" / "deploy.md"
NAMESPACE = "ml-serving"
SELECTOR = "app.kubernetes.io/name=tabserve,app.kubernetes.io/instance=tabserve"
LOCAL_VALUES = "helm/tabserve/ci/local-cluster-values.yaml"


def environment() -> dict[str, str]:
    path = os.pathsep.join([*map(str, _TOOLS), os.environ["PATH"]])
    return os.environ | {"KUBECONFIG": str(KUBECONFIG), "PATH": path}


def run(
    command: str | list[str], *, timeout: float = 120, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A command line as a runbook writes it (str, through the shell) or an argv (list)."""
    result = subprocess.run(
        command,
        shell=isinstance(command, str),
        env=environment(),
        cwd=PROJECT,
        text=True,
        capture_output=True,
        timeout=timeout,
        input=stdin,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{command!r} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def kubectl_json(*args: str) -> dict[str, Any]:
    return json.loads(run(["kubectl", *args, "-o", "json"]).stdout)


def wait_until(what: str, condition: Callable[[], T], timeout: float, interval: float = 2) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)


def prometheus_query(expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{PROMETHEUS_URL}/api/v1/query", params={"query": expr}, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]["result"]


def answers_every_model(url: str) -> None:
    """A prediction of every model over REST, and gRPC's readiness of each, through `url` (a
    Service's HTTP address; its gRPC port is 8001)."""
    for name, spec in MODELS.items():
        answer = httpx.post(
            f"{url}/v1/models/{name}:predict",
            json={"instances": [spec.example_instance()]},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] in spec.class_names
    client = grpcclient.InferenceServerClient(url.removeprefix("http://")[:-4] + "8001")
    assert client.is_server_ready()
    assert all(client.is_model_ready(name) for name in MODELS)


def ready_pods(namespace: str, selector: str) -> list[str]:
    pods = kubectl_json("-n", namespace, "get", "pods", "-l", selector)["items"]
    return [
        pod["metadata"]["name"]
        for pod in pods
        if pod["metadata"].get("deletionTimestamp") is None
        and any(
            condition["type"] == "Ready" and condition["status"] == "True"
            for condition in pod["status"].get("conditions", [])
        )
    ]


# What Kubernetes itself puts in every namespace.
NAMESPACE_DEFAULTS = {"configmap/kube-root-ca.crt", "serviceaccount/default"}


def left_in_namespace(namespace: str) -> set[str]:
    """Objects of the kinds a release creates still in `namespace` (besides its defaults)."""
    kinds = "all,configmap,secret,serviceaccount,pdb,hpa,networkpolicy,job,role,rolebinding,pvc"
    left = run(["kubectl", "-n", namespace, "get", kinds, "-o", "name"]).stdout.split()
    return set(left) - NAMESPACE_DEFAULTS


def wait_until_empty(namespace: str) -> None:
    """Pods are garbage-collected after their Deployment and end gracefully (preStop pause,
    drain): give them the chart's grace period."""
    last: set[str] = set()

    def empty() -> bool:
        nonlocal last
        last = left_in_namespace(namespace)
        return not last

    try:
        wait_until(f"nothing left in {namespace}", empty, timeout=90)
    except AssertionError as error:
        raise AssertionError(f"{error}; left: {sorted(last)}") from None


@dataclass
class LoadResult:
    requests: int
    failures: int
    failure_lines: list[str]
    by_name: dict[str, tuple[int, int]]  # request name -> (requests, failures)


class LocustRun:
    """locust (the project's scenarios, loadtests/) against a Service, in the background, for at
    most `seconds`. Every answer is checked by the scenarios: a wrong status or body is a failure.
    """

    def __init__(
        self, host: str, workdir: Path, users: int, seconds: int, classes: tuple[str, ...]
    ):
        self.workdir = workdir
        grpc_target = host.removeprefix("http://").rsplit(":", 1)[0] + ":8001"
        command = [
            sys.executable, "-m", "locust", "--config", "loadtests/locust.conf",
            "--host", host, "--users", str(users), "--spawn-rate", str(users),
            "--run-time", f"{seconds}s", "--csv", str(workdir / "locust"), *classes,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=PROJECT,
            env=os.environ | {"LOADTEST_GRPC_TARGET": grpc_target},
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "locust.log").open("w"),
        )
        self.timeout = seconds + 60

    def stop(self) -> LoadResult:
        """End the run now (locust writes its statistics on SIGTERM) and read them."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=self.timeout)
        with (self.workdir / "locust_stats.csv").open() as stats:
            rows = list(csv.DictReader(stats))
        with (self.workdir / "locust_failures.csv").open() as failures:
            failure_lines = [
                f"{row['Occurrences']}x {row['Name']}: {row['Error']}"
                for row in csv.DictReader(failures)
            ]
        by_name = {
            row["Name"]: (int(row["Request Count"]), int(row["Failure Count"]))
            for row in rows
            if row["Name"] != "Aggregated"
        }
        total = next(row for row in rows if row["Name"] == "Aggregated")
        requests, failures = int(total["Request Count"]), int(total["Failure Count"])
        return LoadResult(requests, failures, failure_lines, by_name)


@contextmanager
def locust(
    host: str,
    workdir: Path,
    *,
    users: int,
    seconds: int = 600,
    classes: tuple[str, ...] = ("HotPathUser", "OipRestUser", "GrpcInferUser"),
) -> Iterator[LocustRun]:
    load = LocustRun(host, workdir, users, seconds, classes)
    try:
        yield load
    finally:
        if load.process.poll() is None:
            load.process.kill()
            load.process.wait()


def runbook(prefix: str) -> str:
    """The one command of docs/deploy.md that starts with `prefix` (continuations joined,
    comment dropped): the suite runs what the runbook says, so the two cannot drift apart."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", RUNBOOK.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = " ".join(re.sub(r"\s+#.*$", "", line).split())
            if command.startswith(prefix):
                commands.append(command)
    assert len(commands) == 1, f"docs/deploy.md should have one `{prefix}...`: {commands}"
    return commands[0]


def install_command(image: str) -> str:
    """The runbook's `helm upgrade --install` of `image` (repository:tag), with the local
    cluster's values; more options may follow."""
    repository, tag = image.split(":")
    install = runbook("helm upgrade --install tabserve helm/tabserve -n ml-serving --set image")
    install = install.replace("registry.example.com/ml/tabserve", repository)
    return f"{install.replace('<bento version>', tag)} -f {LOCAL_VALUES}"


def remove_release() -> None:
    run(["helm", "uninstall", "tabserve", "-n", NAMESPACE, "--wait"], check=False, timeout=300)
    run(["kubectl", "delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=300s"])
