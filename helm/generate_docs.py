"""The chart's values documented from one source, values.yaml's `# --` comments (`make chart-docs`).

helm-docs (the tool charts on Artifact Hub use; built from the Go module proxy, pinned in
scripts/cluster/versions.env) reads those comments. From them this writes
1. helm/tabserve/README.md, from README.md.gotmpl and helm-docs' values table, and
2. the "description" of each documented value in values.schema.json, which editors and
   `helm show values`-driven UIs show, so nobody writes a description twice.
Every value must have a comment: an undocumented one fails. With --check nothing is written and
any difference fails (tests/test_chart_docs.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))  # devtools, when run as a script

from devtools.go_tools import go_tool  # noqa: E402

CHART = PROJECT / "helm" / "tabserve"
README = CHART / "README.md"
SCHEMA = CHART / "values.schema.json"
# One line per value: key, then description (helm-docs joins a comment's lines with spaces).
SEPARATOR = "\x1f"
KEYS_TEMPLATE = (
    "{{- range .Values }}\n"
    f"{{{{ .Key }}}}{SEPARATOR}{{{{ or .Description .AutoDescription }}}}\n"
    "{{- end }}\n"
)


def helm_docs(*args: str) -> str:
    """helm-docs' output for the chart, printed rather than written (--dry-run)."""
    command = [str(go_tool("helm-docs", "helm-docs")), "--chart-search-root", str(CHART.parent)]
    command += ["--chart-to-generate", str(CHART), "--dry-run", "--log-level", "error", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def documented_values() -> dict[str, str]:
    """Each value's key (`a.b.c`) and its description."""
    with tempfile.NamedTemporaryFile("w", suffix=".gotmpl") as template:
        template.write(KEYS_TEMPLATE)
        template.flush()
        lines = helm_docs("--template-files", template.name).splitlines()
    return dict(line.split(SEPARATOR, 1) for line in lines if SEPARATOR in line)


def schema_node(schema: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The schema node of a value; None below a `$ref`: a shared definition (both Ingresses use
    one) cannot carry the descriptions of each use, so those stay in the README only."""
    node = schema
    for part in key.split("."):
        if "$ref" in node:
            return None
        properties = node.get("properties", {})
        if part not in properties:
            raise KeyError(f"values.schema.json has no property for the value {key!r}")
        node = properties[part]
    return node


def described_schema(schema: dict[str, Any], descriptions: dict[str, str]) -> dict[str, Any]:
    """The schema with each value's description first in its node (a deep copy)."""
    schema = json.loads(json.dumps(schema))
    for key, description in descriptions.items():
        node = schema_node(schema, key)
        if node is None:
            continue
        rest = {k: v for k, v in node.items() if k != "description"}
        node.clear()
        node.update({"description": description, **rest})
    return schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; fail on a difference")
    check = parser.parse_args(argv).check

    descriptions = documented_values()
    undocumented = sorted(key for key, text in descriptions.items() if not text.strip())
    if undocumented:
        print("values without a `# --` comment in values.yaml:", *undocumented, sep="\n  ")
        return 1
    readme = helm_docs()
    schema = json.dumps(described_schema(json.loads(SCHEMA.read_text()), descriptions), indent=2)
    outputs = {README: readme, SCHEMA: schema + "\n"}
    stale = [p for p, text in outputs.items() if not p.exists() or p.read_text() != text]
    if check and stale:
        print("out of date (run `make chart-docs`):", *(p.relative_to(PROJECT) for p in stale))
        return 1
    if not check:
        for path, text in outputs.items():
            path.write_text(text)
        print(f"documented {len(descriptions)} values in {README.name} and {SCHEMA.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
