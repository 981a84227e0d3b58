"""Helpers shared by the alert-rule unit tests and the real-Prometheus integration test."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts.test.yml"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "driftd.json"
METRICS_DOC = REPO / "docs" / "metrics.md"

# Words of PromQL that look like metric names but are not.
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def require_binary(name: str) -> str:
    """Path of ``name``. Missing: a failure under CI (it must
    have run scripts/debian-packages.sh), else a skip."""
    path = shutil.which(name)
    if path is None:
        reason = (
            f"{name} is not installed; `bash scripts/debian-packages.sh` installs "
            "it (Debian package prometheus)"
        )
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression (or a Grafana one, with $variables) selects."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range windows, $__rate_interval included
    # label lists
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        # a function call
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the Grafana dashboard: panel targets and annotation queries."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    return exprs


def grafana_to_promql(expr: str, rate_interval: str = "5m") -> str:
    """A dashboard expression with Grafana's variables
    replaced, as Grafana would send it (all instances)."""
    for var, value in {
        "$__rate_interval": rate_interval,
        "$__range": "1h",
        "$__interval": "1m",
        "$instance": ".*",
    }.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """{name: (type, label names)} from the tables of docs/metrics.md."""
    metrics = {}
    for line in METRICS_DOC.read_text().splitlines():
        row = re.match(r"^\| `((?:driftd|process)_\w+)` \| (\w+) \|([^|]*)\|", line)
        if row:
            name, kind, labels = row.groups()
            assert name not in metrics, f"{name} is documented twice"
            metrics[name] = (kind, set(re.findall(r"`(\w+)`:", labels)))
    return metrics


def documented_alerts() -> set[str]:
    return set(re.findall(r"^\| `(Driftd\w+)` \|", METRICS_DOC.read_text(), flags=re.MULTILINE))


def unknown_metrics(
    expr: str, known: dict[str, tuple[str, set[str]]], extra: set[str] = frozenset()
) -> set[str]:
    """Names in ``expr`` that are neither in ``known``
    (histogram series suffixes resolved) nor in ``extra``."""
    unknown = set()
    for name in metric_names(expr) - set(extra):
        base = next((name[: -len(s)] for s in _HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if name not in known and not (base in known and known[base][0] == "histogram"):
            unknown.add(name)
    return unknown
