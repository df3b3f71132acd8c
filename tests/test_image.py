"""The OCI image, for real: `make image` builds it, podman (runc, host network, 127.0.0.1) runs it.

The build goes to a private container storage (CONTAINERS_STORAGE_CONF) that the test removes;
the debootstrap'ed base root stays cached in ~/.cache/tabserve between runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as tc

from devtools.local_process import free_port
from tabserve.catalog import MODELS
from tests.data import instances
from tests.oip_tensors import assert_same_answers, infer_inputs, v1_answers
from tests.server import PROJECT
from tests.system_packages import require

pytestmark = pytest.mark.slow

BUILD_TIMEOUT_S = 1500
READY_TIMEOUT_S = 120
# Where scripts/build-image.sh caches the debootstrap'ed root and its log.
CACHE_DIR = Path(
    os.environ.get("TABSERVE_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tabserve"
)
DEBOOTSTRAP_LOG = CACHE_DIR / "debian-bookworm-python3.11-signed.tar.debootstrap.log"
# Certificates the build host added to its own trust store (e.g. a TLS-intercepting proxy's).
HOST_LOCAL_CAS = Path("/usr/local/share/ca-certificates")


@dataclass
class Running:
    reference: str
    url: str
    grpc_address: str
    metrics_url: str
    podman: list[str]


def _podman(storage_conf: Path) -> tuple[list[str], dict[str, str]]:
    # podman's default runtime (crun) fails on this kind of VM's cgroup and rlimit set-up.
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(storage_conf)}
    return ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"], env


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require("buildah", "debootstrap", "debian-archive-keyring", "gpgv", "podman", "runc")
    root = tmp_path_factory.mktemp("containers")
    conf = root / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n'
    )
    yield conf
    podman, env = _podman(conf)
    subprocess.run([*podman, "rmi", "--all", "--force"], env=env, capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(trained_store: Path, storage: Path) -> str:
    started = time.monotonic()
    built = subprocess.run(
        ["make", "--no-print-directory", "image"],
        cwd=PROJECT,
        env={**os.environ, "CONTAINERS_STORAGE_CONF": str(storage)},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    print(f"\nmake image: {time.monotonic() - started:.0f}s")
    return built.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def running(reference: str, storage: Path) -> Iterator[Running]:
    podman, env = _podman(storage)
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    container = subprocess.run(
        [
            *podman,
            "run",
            "--detach",
            "--network",
            "host",
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
            "--env",
            f"TABSERVE_GRPC_PORT={grpc_port}",
            "--env",
            "TABSERVE_GRPC_HOST=127.0.0.1",
            "--env",
            f"TABSERVE_METRICS_PORT={metrics_port}",
            "--env",
            "TABSERVE_METRICS_HOST=127.0.0.1",
            reference,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    served = Running(
        reference,
        f"http://127.0.0.1:{port}",
        f"127.0.0.1:{grpc_port}",
        f"http://127.0.0.1:{metrics_port}/metrics",
        podman,
    )
    try:
        _wait_ready(served.url, lambda: _logs(podman, env, container))
        yield served
    finally:
        subprocess.run([*podman, "rm", "--force", "--time", "10", container], env=env, check=False)


def _logs(podman: list[str], env: dict[str, str], container: str) -> str:
    logs = subprocess.run([*podman, "logs", container], env=env, capture_output=True, text=True)
    return (logs.stdout + logs.stderr)[-4000:]


def _wait_ready(url: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the image was not ready in {READY_TIMEOUT_S}s:\n{logs()}")


def _inspect(reference: str, storage: Path, template: str) -> str:
    podman, env = _podman(storage)
    return subprocess.run(
        [*podman, "image", "inspect", "--format", template, reference],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _shell_in_image(reference: str, storage: Path, script: str) -> str:
    """What `sh -c script` prints in a throwaway container of the image."""
    podman, env = _podman(storage)
    return subprocess.run(
        [
            *podman,
            "run",
            "--rm",
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
            "--entrypoint",
            "sh",
            reference,
            "-c",
            script,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_make_image_prints_the_bento_version_as_tag(reference: str) -> None:
    name, version = reference.split(":")
    assert name == "tabserve"
    bento = subprocess.run(
        [str(PROJECT / ".venv/bin/bentoml"), "get", f"tabserve:{version}", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bento.returncode == 0, f"no bento tabserve:{version}: {bento.stderr[-1000:]}"


def test_image_runs_as_non_root_without_compilers(reference: str, storage: Path) -> None:
    assert _inspect(reference, storage, "{{.Config.User}}") not in ("", "root", "0")
    uid, *tools = _shell_in_image(
        reference, storage, "id -u; command -v gcc cc g++ make git || :"
    ).split()
    assert uid != "0"
    assert tools == [], f"build tools left in the runtime image: {tools}"
    size_mb = int(_inspect(reference, storage, "{{.Size}}")) / 1e6
    print(f"\nimage {reference}: {size_mb:.0f} MB")
    assert size_mb < 1000


def test_the_debian_base_was_bootstrapped_with_a_checked_signature(reference: str) -> None:
    log = DEBOOTSTRAP_LOG.read_text()
    assert re.search(r"^I: Valid Release signature \(key id [0-9A-F]+\)$", log, re.MULTILINE), log


def test_the_image_trusts_debians_ca_bundle_not_the_build_hosts(
    reference: str, storage: Path
) -> None:
    shell = (
        "dpkg-query -W -f '${Status}\\n' ca-certificates; cat /etc/ssl/certs/ca-certificates.crt"
    )
    status, bundle = _shell_in_image(reference, storage, shell).split("\n", 1)
    assert status == "install ok installed"
    assert bundle.count("BEGIN CERTIFICATE") > 100  # Debian's Mozilla set
    for certificate in HOST_LOCAL_CAS.rglob("*.crt"):
        body = "".join(certificate.read_text().split("-----")[2].split())
        assert body not in "".join(bundle.split()), f"{certificate} was copied into the image"


def test_readyz_and_an_http_prediction(running: Running) -> None:
    assert httpx.get(f"{running.url}/readyz", timeout=5).status_code == 200
    rows = instances("iris", 5)
    response = httpx.post(
        f"{running.url}/v1/models/iris:predict", json={"instances": rows}, timeout=30
    )
    assert response.status_code == 200, response.text
    labels = [prediction["label"] for prediction in response.json()["predictions"]]
    assert len(labels) == 5
    assert set(labels) <= set(MODELS["iris"].class_names)


def test_a_grpc_prediction_matches_http(running: Running) -> None:
    client = tc.InferenceServerClient(running.grpc_address)
    assert client.is_server_ready()
    rows = instances("churn", 8, seed=3)
    result = client.infer("churn", infer_inputs(tc, "churn", rows, binary=True))
    assert_same_answers(result, v1_answers(running.url, "churn", rows))


def test_metrics_are_exported(running: Running) -> None:
    httpx.post(f"{running.url}/v1/models/iris:predict", json={"instances": instances("iris", 1)})
    exposition = httpx.get(running.metrics_url, timeout=10).text
    assert "bentoml_service_request_total" in exposition
    assert any(line.startswith("tabserve_") for line in exposition.splitlines())
