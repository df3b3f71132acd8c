"""The README stays true: its curl examples work against a real server, and it documents
every setting."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tabserve.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
# A ```bash block holding a curl POST, followed by the ```json block it answers with.
EXAMPLE = re.compile(
    r"```bash\n(curl -s -X POST http://127\.0\.0\.1:3000(?P<path>\S+).*?)```\n"
    r"```json\n(?P<answer>.*?)\n```",
    re.DOTALL,
)


def _examples() -> list[tuple[str, dict, dict]]:
    examples = []
    for match in EXAMPLE.finditer(README):
        body = re.search(r"-d '(.*)'", match.group(1), re.DOTALL).group(1)
        examples.append((match.group("path"), json.loads(body), json.loads(match.group("answer"))))
    return examples


def test_the_readme_has_examples_to_check() -> None:
    assert len(_examples()) >= 4


@pytest.mark.parametrize(("path", "body", "shown"), _examples(), ids=lambda v: str(v)[:40])
def test_readme_curl_example_answers_as_shown(server, path: str, body: dict, shown: dict) -> None:
    response = httpx.post(f"{server.url}{path}", json=body)
    answer = response.json()
    if "error" in shown:  # errors do not depend on the model's training: exactly as shown
        assert response.status_code == 422
        assert answer == shown
        return
    assert response.status_code == 200
    # The tests' models are trained in fast mode, so only the shape and classes are compared;
    # the README's numbers come from `make serve`'s full models.
    assert answer["model"].split(":")[0] == shown["model"].split(":")[0]
    assert len(answer["predictions"]) == len(shown["predictions"])
    for served, documented in zip(answer["predictions"], shown["predictions"], strict=True):
        assert served["probabilities"].keys() == documented["probabilities"].keys()


def test_readme_documents_every_setting() -> None:
    for name in Settings.model_fields:
        assert f"`TABSERVE_{name.upper()}`" in README, f"README lacks TABSERVE_{name.upper()}"
