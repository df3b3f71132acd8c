"""Write loadtests/payloads.json: real rows of every model's data set, as V1 instances.

The locust files read that JSON file and nothing of tabserve, so they run on a stock locust
image (loadtests/k8s) as well as here. Run again after a catalog change:

    .venv/bin/python -m loadtests.make_payloads
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tabserve import datasets
from tabserve.catalog import MODELS, ModelSpec
from tabserve.features import Kind
from tabserve.protocols.oip import DECLARED_TYPES

PAYLOADS = Path(__file__).with_name("payloads.json")
ROWS_PER_MODEL = 200
SEED = 6


def _json_value(kind: Kind, value: Any) -> Any:
    if kind is Kind.BOOLEAN:
        return bool(value)
    if kind is Kind.INTEGER:
        return int(value)
    if kind is Kind.NUMBER:
        return float(value)
    return str(value)


def _instances(spec: ModelSpec) -> list[dict[str, Any]]:
    path = datasets.DATA_DIR / spec.dataset_file if spec.dataset_file else None
    features, _ = spec.load_dataset(path)
    sample = features.sample(n=min(ROWS_PER_MODEL, len(features)), random_state=SEED)
    return [
        {
            feature.name: _json_value(feature.kind, value)
            for feature in spec.features
            # A missing optional value is left out, as callers do.
            if not (isinstance(value := row[feature.name], float) and math.isnan(value))
        }
        for _, row in sample.iterrows()
    ]


def main() -> None:
    payloads = {
        name: {
            "features": spec.feature_names,
            # The Open Inference Protocol datatype of each feature.
            "datatypes": {f.name: DECLARED_TYPES[f.kind] for f in spec.features},
            "instances": _instances(spec),
        }
        for name, spec in MODELS.items()
    }
    PAYLOADS.write_text(json.dumps(payloads, indent=1) + "\n")
    counts = ", ".join(f"{name} {len(p['instances'])}" for name, p in payloads.items())
    print(f"wrote {PAYLOADS}: {counts} instances")


if __name__ == "__main__":
    main()
