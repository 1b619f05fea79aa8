"""Checks of deploy/monitoring: the Prometheus alert rules and the Grafana dashboard.

The rules are checked and unit-tested with `promtool` (Debian's `prometheus` package, which
scripts/bootstrap.sh installs): `check rules` parses every expression, `test rules` runs
callcenter.rules.test.yaml (each alert fires on the series that should raise it). Without promtool
a structural check stands in. Every rule links to a section of docs/operations.md that exists. That
each metric named here is exposed by a service is checked on live scrapes in tests/e2e/test_metrics.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "callcenter.rules.yaml"
RULE_TESTS = MONITORING / "callcenter.rules.test.yaml"
DASHBOARD = MONITORING / "callcenter.dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
# the alerts issue 13 asks for, by what they watch
REQUIRED_ALERTS = {"CallcenterQueueWaitAboveSLA", "CallcenterStreamLagGrowing", "CallcenterDeadLetters",
                   "CallcenterEdgeHeartbeatLost", "CallcenterNoAgentsOnFlowWithCalls"}


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, re.M)}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool (Debian package prometheus)")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    for command in (["promtool", "check", "rules", RULES.name], ["promtool", "test", "rules", RULE_TESTS.name]):
        done = subprocess.run(command, cwd=MONITORING, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_rules_have_the_shape_prometheus_loads() -> None:
    """What `promtool check rules` would refuse, for machines without it, and what we want of each rule."""
    names = []
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"]), rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        names.append(rule["alert"])
    assert len(names) == len(set(names))
    assert REQUIRED_ALERTS <= set(names)


def test_every_rule_has_a_runbook_section() -> None:
    sections = anchors(OPERATIONS.read_text())
    for rule in rules():
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "docs/operations.md" and anchor in sections, (rule["alert"], anchor)


def test_every_alert_has_a_unit_test() -> None:
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"]}
    assert {rule["alert"] for rule in rules()} <= tested


def test_dashboard_is_grafana_json_on_our_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in {"timeseries", "stat", "gauge", "table"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert re.search(r"\b(callcenter|process)_[a-z_]+", target["expr"]), target
            assert target["expr"].count("(") == target["expr"].count(")"), target


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool (Debian package prometheus)")
def test_promtool_checks_the_example_configuration(tmp_path: Path) -> None:
    """prometheus.yml loads its rules and names a key file: checked in a copy with a key beside it."""
    for path in (MONITORING / "prometheus.yml", RULES):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "callcenter-api-key").write_text("cc_test_key\n")
    done = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout + done.stderr
