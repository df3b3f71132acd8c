"""The servers `make bench` compares, each serving the same churn model file on 127.0.0.1.

A peer says how to start it on a port, which URL answers 200 once it is ready, and which route
and body format its single-row requests use.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.payloads import PAYLOADS, oip_inputs, single_row_bodies

PROJECT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MLSERVER_BIN = PROJECT / "build" / "mlserver-venv" / "bin"
# The production thread setting (helm values, k8s/base/configmap.yaml): one OpenMP thread per
# process. The tuned peers get it too, so the comparison is of serving stacks, not of threads.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# MLServer's adaptive batching, as Seldon's docs configure it: up to 32 rows or 5 ms.
MLSERVER_BATCHING = {"max_batch_size": 32, "max_batch_time": 0.005}
# tabserve's production settings (those of the chart).
TABSERVE_ENV = {
    **ONE_THREAD,
    "TABSERVE_API_WORKERS": "1",
    "TABSERVE_RUNNER_WORKERS": "1",
    "TABSERVE_MODEL_THREADS": "1",
    # The 10,000-row target's requests (the default limit is 1000 rows); a limit only, it
    # changes nothing for smaller requests.
    "TABSERVE_MAX_INSTANCES": "10000",
}


@dataclass(frozen=True)
class Ports:
    http: int
    extra: tuple[int, ...]  # gRPC, metrics: ports a server binds besides HTTP


@dataclass(frozen=True)
class Peer:
    name: str
    description: str
    command: Callable[[Ports, Path], list[str]]  # (ports, a private work dir) -> argv
    ready_path: str
    predict_path: str
    bodies: Callable[[], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    ours: bool = False


def v1_bodies() -> list[str]:
    return [body.decode() for body in single_row_bodies("churn")]


def oip_tensor_bodies() -> list[str]:
    """One [1, 13] FP32 tensor per row: the layout MLServer's XGBoost runtime decodes."""
    bodies = []
    for row in PAYLOADS["churn"]["instances"]:
        values = [float(column[0]) for _, _, column in oip_inputs("churn", [row])]
        tensor = {"name": "input-0", "shape": [1, len(values)], "datatype": "FP32", "data": values}
        bodies.append(json.dumps({"inputs": [tensor]}))
    return bodies


def _tabserve(ports: Ports, _: Path) -> list[str]:
    return [str(VENV_BIN / "bentoml"), "serve", "service:ModelAPI",
            "--host", "127.0.0.1", "--port", str(ports.http)]  # fmt: skip


def _flask_dev(ports: Ports, _: Path) -> list[str]:
    return [str(VENV_BIN / "python"), "-m", "loadtests.baselines.flask_app",
            "--port", str(ports.http)]  # fmt: skip


def _gunicorn(ports: Ports, _: Path) -> list[str]:
    return [str(VENV_BIN / "gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{ports.http}",
            "--log-level", "warning", "loadtests.baselines.flask_app:app"]  # fmt: skip


def mlserver_command(model_file: Path, batching: bool) -> Callable[[Ports, Path], list[str]]:
    def command(ports: Ports, work: Path) -> list[str]:
        model_dir = work / "churn"
        model_dir.mkdir(parents=True, exist_ok=True)
        model_settings = {
            "name": "churn",
            "implementation": "mlserver_xgboost.XGBoostModel",
            "parameters": {"uri": str(model_file)},
            **(MLSERVER_BATCHING if batching else {}),
        }
        (model_dir / "model-settings.json").write_text(json.dumps(model_settings))
        grpc_port, metrics_port = ports.extra
        settings = {
            "host": "127.0.0.1",
            "http_port": ports.http,
            "grpc_port": grpc_port,
            "metrics_port": metrics_port,
        }
        (work / "settings.json").write_text(json.dumps(settings))
        return [str(MLSERVER_BIN / "mlserver"), "start", str(work)]

    return command


def all_peers(model_file: Path) -> list[Peer]:
    baseline_env = {"BASELINE_MODEL_FILE": str(model_file)}
    return [
        Peer(
            "tabserve",
            "this project: bentoml serve, production settings (1 API + 1 runner worker, "
            "1 model thread, adaptive batching on)",
            _tabserve,
            "/readyz",
            "/v1/models/churn:predict",
            v1_bodies,
            env=TABSERVE_ENV,
            ours=True,
        ),
        Peer(
            "tabserve-inline",
            "this project in inline mode (TABSERVE_INLINE_MODELS=true): the models in the one "
            "API worker, no runner process; otherwise the same settings",
            _tabserve,
            "/readyz",
            "/v1/models/churn:predict",
            v1_bodies,
            env={**TABSERVE_ENV, "TABSERVE_INLINE_MODELS": "true"},
            ours=True,
        ),
        Peer(
            "flask-dev",
            "seed-style Flask app on Flask's development server, as the tutorials run it",
            _flask_dev,
            "/health",
            "/v1/models/churn:predict",
            v1_bodies,
            env=baseline_env,
        ),
        Peer(
            "flask-gunicorn",
            "the same Flask app under gunicorn, 2 sync workers, OMP_NUM_THREADS=1",
            _gunicorn,
            "/health",
            "/v1/models/churn:predict",
            v1_bodies,
            env={**baseline_env, **ONE_THREAD},
        ),
        Peer(
            "mlserver",
            "Seldon MLServer 1.7.1 + mlserver-xgboost, Open Inference Protocol, OMP_NUM_THREADS=1",
            mlserver_command(model_file, batching=False),
            "/v2/models/churn/ready",
            "/v2/models/churn/infer",
            oip_tensor_bodies,
            env=ONE_THREAD,
        ),
        Peer(
            "mlserver-batching",
            "the same with adaptive batching (32 rows / 5 ms), OMP_NUM_THREADS=1",
            mlserver_command(model_file, batching=True),
            "/v2/models/churn/ready",
            "/v2/models/churn/infer",
            oip_tensor_bodies,
            env=ONE_THREAD,
        ),
    ]
