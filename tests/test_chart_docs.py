"""The chart's README and its schema's descriptions are generated from values.yaml's `# --`
comments by helm/generate_docs.py (`make chart-docs`, with the real helm-docs): every value is
documented, and the committed files are what the generator writes now."""

from __future__ import annotations

import pytest

from tests.chart.manifests import PROJECT, load_script

generate_docs = load_script(PROJECT / "helm" / "generate_docs.py")


def test_every_value_is_documented_and_the_readme_and_schema_are_current() -> None:
    assert generate_docs.main(["--check"]) == 0


def test_descriptions_land_on_the_values_schema_nodes() -> None:
    schema = {
        "properties": {"image": {"type": "object", "properties": {"tag": {"type": "string"}}}}
    }
    described = generate_docs.described_schema(schema, {"image.tag": "Image tag."})
    assert described["properties"]["image"]["properties"]["tag"] == {
        "description": "Image tag.",
        "type": "string",
    }
    assert "description" not in schema["properties"]["image"]["properties"]["tag"]  # a copy


def test_a_value_the_schema_lacks_is_an_error() -> None:
    with pytest.raises(KeyError, match=r"image\.digest"):
        generate_docs.described_schema({"properties": {"image": {}}}, {"image.digest": "Pin."})
