"""Every PromQL query of the Grafana dashboards, with Grafana's variables substituted as it does
for "All". Shared by the local Prometheus test and the cluster's end-to-end suite."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.declared_metrics import KUBERNETES

DASHBOARDS = sorted((Path(__file__).parent.parent / "observability" / "dashboards").glob("*.json"))
# What Grafana puts in place of the variables: "All" is the regex .*; the deployment is the
# runbook's release; rate windows span several scrapes.
VARIABLES = {
    "$__rate_interval": "1m",
    "$cluster": ".*",
    "$namespace": ".*",
    "$job": ".*",
    "$pod": ".*",
    "$model": ".*",
    "$deployment": "tabserve",
}
METRIC_NAME = re.compile(r"\b((?:tabserve|bentoml|kube|container)_[a-zA-Z0-9_]+)")
# A metric's selector, name{matchers}; a quoted value may hold braces (a regex).
SELECTOR = re.compile(r'\b([a-z_:][a-z0-9_:]*)\{((?:[^}"]|"[^"]*")*)\}')
# Grafana's label_values(<series selector>, <label>) variable query.
LABEL_VALUES = re.compile(r"^label_values\((.+), (\w+)\)$")


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield from panel.get("panels", [])
        if panel["type"] != "row":
            yield panel


def queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every target of every panel."""
    found = []
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            found += [(path.name, panel["title"], target["expr"]) for target in panel["targets"]]
    return found


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def variable_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard file, variable, series selector, label) of every label_values variable."""
    found = []
    for path in DASHBOARDS:
        for name, variable in variables(json.loads(path.read_text())).items():
            if variable["type"] == "query":
                match = LABEL_VALUES.match(variable["query"]["query"])
                assert match, f"{path.name} ${name}: not a label_values query"
                found.append((path.name, name, match.group(1), match.group(2)))
    return found


def substituted(expr: str, **overrides: str) -> str:
    """The query as Grafana sends it; `overrides` set variables, e.g. namespace="ml-serving"."""
    variables = VARIABLES | {f"${name}": value for name, value in overrides.items()}
    for variable, value in variables.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown variable in {expr}"
    return expr


def needs_kubernetes(expr: str) -> bool:
    return any(name in KUBERNETES for name in METRIC_NAME.findall(expr))
