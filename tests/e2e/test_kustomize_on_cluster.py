"""The plain manifests without Helm: `kubectl apply -k k8s/overlays/example`, with the local
image and pods sized for this node, gives a working deployment; `kubectl delete -k` removes it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tabserve.catalog import MODELS
from tests.e2e.cluster import PROJECT, STATE, kubectl_json, run, wait_until_empty

NAMESPACE = "ml-serving"  # the example overlay's


@pytest.fixture
def overlay(image: str) -> Iterator[Path]:
    """The example overlay, as a user would adapt it: their image, their pod size."""
    directory = STATE / "e2e-kustomize"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    repository, tag = image.split(":")
    resources = {
        "requests": {"cpu": "200m", "memory": "512Mi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }
    pod_size = [{"op": "replace", "path": "/spec/template/spec/containers/0/resources",
                 "value": resources},
                {"op": "replace", "path": "/spec/template/spec/containers/0/imagePullPolicy",
                 "value": "Never"}]  # fmt: skip
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(PROJECT / "k8s" / "overlays" / "example", directory)],
        "images": [
            {"name": "registry.example.com/ml/tabserve", "newName": repository, "newTag": tag}
        ],
        "patches": [{"target": {"kind": "Deployment", "name": "tabserve"},
                     "patch": json.dumps(pod_size)}],
    }  # fmt: skip
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    run(["kubectl", "delete", "-k", str(directory), "--ignore-not-found", "--wait"], timeout=300)
    yield directory
    run(["kubectl", "delete", "-k", str(directory), "--ignore-not-found", "--wait"], timeout=300)
    shutil.rmtree(directory, ignore_errors=True)


def test_apply_k_deploys_a_working_service_and_delete_k_removes_it(overlay: Path) -> None:
    run(["kubectl", "create", "namespace", NAMESPACE], check=False)
    run(["kubectl", "apply", "-k", str(overlay)])
    run(["kubectl", "-n", NAMESPACE, "rollout", "status", "deployment/tabserve",
         "--timeout=600s"], timeout=620)  # fmt: skip
    cluster_ip = kubectl_json("-n", NAMESPACE, "get", "service", "tabserve")["spec"]["clusterIP"]
    answer = httpx.post(
        f"http://{cluster_ip}:3000/v1/models/iris:predict",
        json={"instances": [MODELS["iris"].example_instance()]},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text

    run(["kubectl", "delete", "-k", str(overlay), "--wait"], timeout=300)
    wait_until_empty(NAMESPACE)
    run(["kubectl", "delete", "namespace", NAMESPACE, "--wait", "--timeout=300s"], timeout=320)
