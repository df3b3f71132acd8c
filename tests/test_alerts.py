"""The alert rules: rendered from the chart, valid for promtool and a PrometheusRule, unit-tested,
documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.manifests import CHART, generate, load_values
from tests.declared_metrics import KNOWN_SERIES
from tests.system_packages import require

OBSERVABILITY = Path(__file__).parent.parent / "observability"
RULES = OBSERVABILITY / "alerts.yaml"
RULE_TESTS = OBSERVABILITY / "alerts_test.yaml"
RULES_SOURCE = CHART / "files" / "alerts.yaml"
RUNBOOK = Path(__file__).parent.parent / "docs" / "observability.md"
METRIC_NAME = re.compile(r"\b((?:tabserve|bentoml|kube|container)_[a-zA-Z0-9_]+)")
# The keys a PrometheusRule's spec.groups[].rules[] accepts (prometheus-operator v1 CRD).
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}

PROMTOOL = shutil.which("promtool")


def rules(path: Path = RULES) -> list[dict[str, Any]]:
    """Every rule of a rule file, recording rules included."""
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def promtool(*args: str, cwd: Path = OBSERVABILITY) -> subprocess.CompletedProcess[str]:
    require("prometheus")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_the_rule_file_is_the_charts_rendering() -> None:
    """observability/alerts.yaml is generated: the chart is the rules' one source."""
    assert RULES.read_text() == generate.render_rules(), f"{RULES} is stale: run `make k8s`"


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("alert", "threshold"),
    [
        ("TabserveHighErrorRatio", 0.5),
        ("TabserveFeatureDrift", 0.4),
        ("TabserveScoreDrift", 0.4),
        ("TabserveShadowDisagreement", 0.5),  # fires under its threshold: lowered
    ],
)
def test_unit_tests_fail_when_a_threshold_is_broken(
    tmp_path: Path, alert: str, threshold: float
) -> None:
    """The unit tests can fail: move an alert's threshold past its firing case and they must."""
    raised = {"alerts": {alert: {"threshold": threshold}}}
    (tmp_path / "alerts.yaml").write_text(generate.render_rules(raised))
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yaml")
    result = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    failed = re.findall(r"alertname: (\w+)", result.stdout + result.stderr)
    assert set(failed) == {alert}, result.stdout


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


def test_every_alert_of_the_source_has_its_settings_in_the_values() -> None:
    settings = load_values(CHART / "values.yaml")["metrics"]["prometheusRule"]["alerts"]
    names = [rule["alert"] for rule in rules(RULES_SOURCE) if "alert" in rule]
    assert sorted(names) == sorted(settings)
    assert [rule["alert"] for rule in alerts()] == names  # none disabled by default


def test_rules_fit_a_prometheusrule_and_carry_severity_summary_description_runbook() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    runbook = RUNBOOK.read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("#")
    }
    home = load_values(CHART / "Chart.yaml")["home"]
    for group in document["groups"]:
        assert set(group) == {"name", "rules"}
        for rule in group["rules"]:
            assert set(rule) <= RULE_KEYS, rule
            if "record" in rule:
                continue
            assert rule["labels"]["severity"] in {"critical", "warning"}
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
            url = rule["annotations"]["runbook_url"]
            assert url == f"{home}/docs/observability.md#{rule['alert'].lower()}"
            assert rule["alert"].lower() in headings, f"no runbook section for {rule['alert']}"


def test_every_metric_a_rule_uses_is_declared() -> None:
    for rule in rules():
        unknown = set(METRIC_NAME.findall(rule["expr"])) - KNOWN_SERIES
        assert not unknown, f"{rule.get('alert', rule.get('record'))}: undeclared {unknown}"
