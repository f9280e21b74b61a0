"""The alert rules file: valid for Prometheus (`promtool check rules`), unit-tested
(`promtool test rules`), and complete (every alert documented and linked to its runbook)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.support import require_binary

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "rules"
RULES_FILE = RULES / "lang1-ops.rules.yml"
TESTS_FILE = RULES / "lang1-ops.rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = require_binary("promtool", "apt-get install -y prometheus")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=RULES)


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules():
    result = promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", str(TESTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_severity_summary_description_runbook_and_a_unit_test():
    tested = {case["alertname"] for test in yaml.safe_load(TESTS_FILE.read_text())["tests"]
              for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"docs/monitoring.md#{rule['alert'].lower()}"
        assert rule["alert"] in tested, f"{rule['alert']} is never shown firing in {TESTS_FILE.name}"


def test_the_issue_asks_for_these_alerts():
    exprs = {rule["alert"]: rule["expr"] for rule in alerts()}
    for needed, metric in (("Lang1OpsDriftDetected", "lang1ops_drift_detected"),
                           ("Lang1OpsAurocBelowThreshold", "lang1ops_rolling_auroc"),
                           ("Lang1OpsCalibrationDegraded", "lang1ops_rolling_ece"),
                           ("Lang1OpsScorerErrorRate", "lang1ops_requests_total"),
                           ("Lang1OpsNoScoring", "lang1ops_last_note_scored_timestamp_seconds"),
                           ("Lang1OpsServiceDown", "up")):
        assert metric in exprs[needed]
    retrain = {rule["alert"] for rule in alerts() if rule["labels"].get("action") == "retrain"}
    assert retrain == {"Lang1OpsDriftDetected", "Lang1OpsAurocBelowThreshold", "Lang1OpsCalibrationDegraded"}
