"""The alert rules: valid for promtool and a PrometheusRule, unit-tested, documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.declared_metrics import KNOWN_SERIES
from tests.system_packages import require

OBSERVABILITY = Path(__file__).parent.parent / "observability"
RULES = OBSERVABILITY / "alerts.yaml"
RULE_TESTS = OBSERVABILITY / "alerts_test.yaml"
RUNBOOK = Path(__file__).parent.parent / "docs" / "observability.md"
METRIC_NAME = re.compile(r"\b((?:tabserve|bentoml|kube|container)_[a-zA-Z0-9_]+)")
# The keys a PrometheusRule's spec.groups[].rules[] accepts (prometheus-operator v1 CRD).
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}

PROMTOOL = shutil.which("promtool")


def alerts() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    require("prometheus")
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=OBSERVABILITY
    )


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_fail_when_a_threshold_is_broken(tmp_path: Path) -> None:
    """The unit tests can fail: raise the error-ratio threshold to 50% and they must."""
    broken = RULES.read_text().replace(") > 0.05", ") > 0.5")
    assert broken != RULES.read_text()
    (tmp_path / "alerts.yaml").write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yaml")
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert result.returncode != 0
    assert "TabserveHighErrorRatio" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in alerts():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never stays quiet"


def test_rules_fit_a_prometheusrule_and_carry_severity_summary_description_runbook() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    runbook = RUNBOOK.read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("#")
    }
    for group in document["groups"]:
        assert set(group) == {"name", "rules"}
        for rule in group["rules"]:
            assert set(rule) <= RULE_KEYS, rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning"}
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
            anchor = rule["annotations"]["runbook_url"].split("#")[1]
            assert anchor == rule["alert"].lower()
            assert anchor in headings, f"no runbook section for {rule['alert']}"


def test_every_metric_an_alert_uses_is_declared() -> None:
    for rule in alerts():
        unknown = set(METRIC_NAME.findall(rule["expr"])) - KNOWN_SERIES
        assert not unknown, f"{rule['alert']}: undeclared {unknown}"
