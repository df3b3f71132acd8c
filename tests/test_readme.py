"""The README stays true: its curl examples work against a real server, and it documents
every setting."""

from __future__ import annotations

import json
import re
import subprocess
import sys
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
    if "explanations" in shown:  # :explain: the same classes, features and explained classes
        for served, documented in zip(answer["explanations"], shown["explanations"], strict=True):
            assert served.keys() == documented.keys()
            assert served["scale"] == documented["scale"]
            assert [o["class"] for o in served["outputs"]] == [
                o["class"] for o in documented["outputs"]
            ]
            assert served["outputs"][0]["contributions"].keys() == (
                documented["outputs"][0]["contributions"].keys()
            )
        return
    assert len(answer["predictions"]) == len(shown["predictions"])
    for served, documented in zip(answer["predictions"], shown["predictions"], strict=True):
        assert served["probabilities"].keys() == documented["probabilities"].keys()


def test_readme_documents_every_setting() -> None:
    for name in Settings.model_fields:
        assert f"`TABSERVE_{name.upper()}`" in README, f"README lacks TABSERVE_{name.upper()}"


# --- the commands the README and the docs give ---------------------------------------------------
PROJECT = Path(__file__).resolve().parent.parent
DOCS = [
    PROJECT / "README.md",
    PROJECT / "loadtests" / "README.md",
    *(PROJECT / "docs").glob("*.md"),
]
PAGES = {path.relative_to(PROJECT).as_posix(): path.read_text() for path in DOCS}
MAKE_TARGETS = set(re.findall(r"^([a-z0-9-]+):", (PROJECT / "Makefile").read_text(), re.M))


def test_setting_up_takes_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    """One command installs, trains and serves; one runs the tests, and it is what CI runs."""
    setup = README.split("## Set up on a fresh machine", 1)[1].split("```bash\n", 1)[1]
    commands = [line.split("#")[0].strip() for line in setup.split("```", 1)[0].splitlines()]
    assert commands == ["make serve", "make test"]
    ci = (PROJECT / ".ci" / "run").read_text().splitlines()
    assert "make test" in ci


@pytest.mark.parametrize("page", [page for page in PAGES if page != "docs/deploy.md"])
def test_no_bare_python_command(page: str) -> None:
    """Without the venv activated `python` is the system's (no project packages) or missing:
    commands name .venv/bin/..., or a make target. (docs/deploy.md's commands run in the image.)"""
    bare = re.findall(r"(?<![\w/.-])python3?(?:\.11)? (?:-m [\w.]+|[\w/]+\.py)", PAGES[page])
    assert not bare, bare


def _source(target: list[str]) -> Path:
    """The file `python <target>` runs: `-m package.module` or `path/file.py`."""
    if target[0] != "-m":
        return PROJECT / target[0]
    module = PROJECT / target[1].replace(".", "/")
    return module / "__main__.py" if module.is_dir() else module.with_suffix(".py")


def test_every_venv_command_the_docs_name_exists() -> None:
    """Each `.venv/bin/python -m <module>`, `.venv/bin/python <file>.py` and
    `.venv/bin/tabserve <command>` is there; those with options answer --help."""
    from tabserve.cli import COMMANDS

    text = "\n".join(PAGES.values())
    targets = [["-m", module] for module in set(re.findall(r"\.venv/bin/python -m ([\w.]+)", text))]
    targets += [[script] for script in set(re.findall(r"\.venv/bin/python ([\w/]+\.py)", text))]
    commands = set(re.findall(r"\.venv/bin/tabserve (\w+)", text))
    assert len(targets) >= 3 and commands
    assert commands <= set(COMMANDS), commands - set(COMMANDS)
    for target in targets:
        source = _source(target)
        assert source.is_file(), target
        if "argparse" in source.read_text():  # a module without options would just run
            done = subprocess.run(
                [sys.executable, *target, "--help"], cwd=PROJECT, capture_output=True, timeout=120
            )
            assert done.returncode == 0, (target, done.stderr[-2000:])


def test_every_make_target_the_docs_name_exists() -> None:
    named = {
        target
        for text in PAGES.values()
        for target in re.findall(r"(?:`|^)make ([a-z][a-z0-9-]*)", text, re.M)
    }
    assert named - MAKE_TARGETS == set()
