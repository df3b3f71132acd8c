"""A Kubernetes API server that answers just what the chart's `lookup` asks: the apps/v1
discovery document and the Deployments of one namespace. Enough to render the chart
cluster-aware (helm_python.Config.render) without a cluster."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

APPS_V1 = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "apps/v1",
    "resources": [
        {
            "name": "deployments",
            "singularName": "deployment",
            "namespaced": True,
            "kind": "Deployment",
            "verbs": ["get", "list"],
        }
    ],
}


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    }


@contextmanager
def fake_apiserver(namespace: str, deployments: list[dict[str, Any]]) -> Iterator[str]:
    """Serve `deployments` as the namespace's Deployments; yields the server's URL."""
    documents = {
        "/apis/apps/v1": APPS_V1,
        f"/apis/apps/v1/namespaces/{namespace}/deployments": {
            "kind": "DeploymentList",
            "apiVersion": "apps/v1",
            "metadata": {"resourceVersion": "1"},
            "items": deployments,
        },
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            document = documents.get(self.path.split("?")[0])
            body = json.dumps(document or {"kind": "Status", "code": 404}).encode()
            self.send_response(200 if document else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Quiet: the test reads the rendered objects, not the request log."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
