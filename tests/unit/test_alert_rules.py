"""Alert rules, their promtool tests, the dashboard and
docs/metrics.md against the metrics the daemon registers."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from daemon.config import ENV_PREFIX
from tests.promtools import (
    ALERTS,
    ALERTS_TEST,
    DASHBOARD,
    PROMETHEUS_CONFIG,
    dashboard_exprs,
    documented_alerts,
    documented_metrics,
    grafana_to_promql,
    metric_names,
    require_binary,
    unknown_metrics,
)

PROVIDED_BY_PROMETHEUS = {"up"}  # series Prometheus adds per target


def alert_rules() -> list[dict]:
    return [
        rule
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def promtool(*args: str | Path) -> None:
    result = subprocess.run(
        [require_binary("promtool"), *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (
        f"promtool {' '.join(map(str, args))} exited "
        f"{result.returncode}:\n{result.stdout}\n{result.stderr}"
    )


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, set[str]]]:
    """{name as scraped: (type, label names)} of the registry
    a real ``Daemon`` builds (nothing is started)."""
    from daemon.app import Daemon
    from daemon.config import load_settings

    # the defaults, whatever the shell says
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(ENV_PREFIX)}
    try:
        daemon = Daemon(load_settings(None, daemon={"data_dir": tmp_path_factory.mktemp("daemon")}))
    finally:
        os.environ.update(saved)
    families = {}
    for family in daemon.metrics_registry.collect():
        # prometheus_client strips _total
        name = family.name + "_total" if family.type == "counter" else family.name
        families[name] = (
            family.type,
            {label for sample in family.samples for label in sample.labels} - {"le"},
        )
    return families


# --- promtool --------------------------------------------------------------------------------


def test_alert_rules_are_valid() -> None:
    promtool("check", "rules", ALERTS)


def test_alert_rule_unit_tests_pass() -> None:
    promtool("test", "rules", ALERTS_TEST)


def test_example_prometheus_config_is_valid() -> None:
    promtool("check", "config", PROMETHEUS_CONFIG)


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    """promtool has no bare query parser, so each expression becomes a recording rule to check."""
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(expr)}
        for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", path)


# --- the rules and their tests ---------------------------------------------------------------


def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    cases = [
        case
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "an alert name is used twice"
    assert {name for name in names if name not in fires} == set(), "alerts never expected to fire"
    assert {name for name in names if name not in quiet} == set(), (
        "alerts never expected to stay quiet"
    )


def test_every_alert_has_a_for_duration_a_severity_and_a_runbook() -> None:
    for rule in alert_rules():
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_alerts_use_only_documented_metrics() -> None:
    documented = documented_metrics()
    for rule in alert_rules():
        assert metric_names(rule["expr"]), (
            f"no metric found in {rule['alert']}: the parser is broken"
        )
        assert unknown_metrics(rule["expr"], documented, PROVIDED_BY_PROMETHEUS) == set(), rule[
            "alert"
        ]
        mentioned = set(re.findall(r"\bdriftd_\w+", rule["annotations"]["description"]))
        assert unknown_metrics(" ".join(mentioned), documented) == set(), (
            f"{rule['alert']} description"
        )


def test_docs_list_exactly_the_alerts() -> None:
    assert documented_alerts() == {rule["alert"] for rule in alert_rules()}


def test_metric_name_parser() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (instance, le) "
        '(rate(a_bucket{x="b_c"}[5m]))) > 0.05 and on (instance) b offset 5m or '
        'absent(up{job="d"}) * 1e3'
    )
    assert metric_names(expr) == {"a_bucket", "b", "up"}


# --- docs/metrics.md and the dashboard against the daemon's registry -------------------------


def test_docs_document_exactly_the_registered_metrics(registered) -> None:
    documented = documented_metrics()
    assert set(documented) - set(registered) == set(), "documented but not registered"
    assert set(registered) - set(documented) == set(), (
        "registered but not documented in docs/metrics.md"
    )
    for name, (kind, labels) in registered.items():
        assert documented[name][0] == kind, (
            f"{name}: documented as {documented[name][0]}, registered as {kind}"
        )
        # families with no series yet (labels known only once used) are checked by name and type
        if labels:
            assert documented[name][1] == labels, (
                f"{name}: documented labels {documented[name][1]}, registered {labels}"
            )


def test_dashboard_uses_only_registered_metrics(registered) -> None:
    for expr in dashboard_exprs():
        assert unknown_metrics(expr, registered) == set(), expr
    board = json.loads(DASHBOARD.read_text())
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert set(re.findall(r"label_values\((\w+)", variable["definition"])) <= set(
                registered
            ), variable["name"]


def test_dashboard_covers_every_registered_metric(registered) -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    used |= {
        name[: -len(suffix)]
        for name in used
        for suffix in ("_bucket", "_sum", "_count")
        if name.endswith(suffix)
    }
    assert set(registered) - used == set(), "metrics with no panel"


def test_dashboard_queries_the_input_datasource() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 39
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert any(
        v["name"] == "DS_PROMETHEUS" and v["type"] == "datasource"
        for v in board["templating"]["list"]
    )
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"]), (
                panel["title"]
            )
