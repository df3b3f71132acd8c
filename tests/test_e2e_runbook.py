"""The cluster suite runs docs/deploy.md's commands, each found by its start
(`tests.e2e.cluster.runbook`). Checked here, offline, that every start it names finds exactly
one command: a docs edit that adds a second match (seen: a new `helm upgrade --install ...
--reuse-values` command broke the token test's lookup) fails in seconds, not 30 minutes into CI.
"""

from __future__ import annotations

import ast

import pytest

from tests.e2e.cluster import PROJECT, runbook

E2E = PROJECT / "tests" / "e2e"


def _constants(tree: ast.Module) -> dict[str, str]:
    """The module's top-level string constants (a start may be kept in one)."""
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def runbook_starts() -> list[tuple[str, str]]:
    """(file, start) of every `runbook(...)` call in the cluster suite."""
    starts = []
    for path in sorted(E2E.glob("*.py")):
        tree = ast.parse(path.read_text())
        constants = _constants(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "runbook":
                (argument,) = node.args
                if isinstance(argument, ast.Constant):
                    starts.append((path.name, argument.value))
                else:
                    assert isinstance(argument, ast.Name), ast.unparse(node)
                    starts.append((path.name, constants[argument.id]))
    return starts


STARTS = runbook_starts()


def test_the_cluster_suite_looks_up_runbook_commands() -> None:
    assert len(STARTS) >= 15, STARTS  # every call was found, not only the simple ones


@pytest.mark.parametrize(("file", "start"), STARTS)
def test_each_start_finds_exactly_one_command(file: str, start: str) -> None:
    assert runbook(start).startswith(start)
