"""Serving-state metrics read from the ``ModelServer`` at scrape time.

A collector rather than gauges set by each swap path (bootstrap, admin activation, learning loop,
canary rollback): whatever switched the model, a scrape sees the truth, and only the live version
carries a ``version`` label, so the label set stays at one series however many versions come and go.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from models.serving import ModelServer

__all__ = ["ServingCollector"]


class ServingCollector(Collector):
    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        model = self.server.model
        info = GaugeMetricFamily(
            "driftd_serving_model_info",
            "1, labelled with the version serving now (absent before the first model loads).",
            labels=["version"],
        )
        created = GaugeMetricFamily(
            "driftd_serving_model_created_timestamp_seconds",
            "Unix time the serving version was published to the registry (0 before "
            "the first model loads).",
        )
        if model is not None:
            info.add_metric([model.version], 1)
        created.add_metric([], (model.created_at or 0.0) if model is not None else 0.0)
        switches = CounterMetricFamily(
            "driftd_serving_model_switches_total",
            "Times the served model changed: first load, swaps and rollbacks.",
        )
        switches.add_metric([], len(self.server.history))
        yield info
        yield created
        yield switches
