"""The seed-style baseline: the churn XGBoost model behind a minimal Flask app.

Written the way the tutorials write it: load the model at import, one POST route, read the JSON,
build an array, `predict_proba`, answer JSON; no validation, no batching, no metrics. It loads
the very file tabserve serves (BASELINE_MODEL_FILE: the `model.ubj` in the BentoML model store)
and takes tabserve's V1 body, so `make bench` can send both servers the same requests.

    BASELINE_MODEL_FILE=.../model.ubj python -m loadtests.baselines.flask_app --port 5000
    BASELINE_MODEL_FILE=.../model.ubj gunicorn -w 2 loadtests.baselines.flask_app:app
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import xgboost
from flask import Flask, jsonify, request

# The feature order the model was trained with, as tabserve's catalog declares it.
FEATURES = json.loads(Path(__file__).parent.parent.joinpath("payloads.json").read_text())["churn"][
    "features"
]
CLASSES = ("churned", "retained")

model = xgboost.XGBClassifier()
model.load_model(os.environ["BASELINE_MODEL_FILE"])
app = Flask(__name__)


@app.post("/v1/models/churn:predict")
def predict():
    instances = request.get_json()["instances"]
    rows = np.array([[instance[name] for name in FEATURES] for instance in instances], dtype=float)
    probabilities = model.predict_proba(rows)
    return jsonify(
        predictions=[
            {
                "label": CLASSES[int(row.argmax())],
                "probabilities": dict(zip(CLASSES, row.tolist(), strict=True)),
            }
            for row in probabilities
        ]
    )


@app.get("/health")
def health():
    return {"status": "ok"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Flask's development server, as tutorials run it")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    arguments = parser.parse_args()
    app.run(host=arguments.host, port=arguments.port)
