"""Locust users for tests/test_versions.py: single-row churn predictions on the unversioned V1
route (the champion), each answer's send and receive times, status and version written to the
JSON-lines file named by VERSIONS_LOG, so the test can check every answer against the alias
moves it made."""

from __future__ import annotations

import json
import os
import time

from locust import FastHttpUser, constant, task

from tests.data import instances

BODY = {"instances": instances("churn", 1, seed=5)}
HEADERS = {"authorization": f"Bearer {os.environ['VERSIONS_TOKEN']}"}


class ChampionUser(FastHttpUser):
    wait_time = constant(0.005)

    def on_start(self) -> None:
        self.log = open(os.environ["VERSIONS_LOG"], "a", buffering=1)  # noqa: SIM115

    def on_stop(self) -> None:
        self.log.close()

    @task
    def predict(self) -> None:
        sent = time.time()
        with self.client.post(
            "/v1/models/churn:predict", json=BODY, headers=HEADERS, catch_response=True
        ) as answer:
            received = time.time()
            model = answer.json().get("model") if answer.status_code == 200 else None
            record = {"sent": sent, "received": received, "status": answer.status_code}
            self.log.write(json.dumps({**record, "model": model}) + "\n")
