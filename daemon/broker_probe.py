"""Is the Kafka cluster reachable? A metadata request every
``kafka.probe_interval_s``, on a client of its own.

faust and aiokafka reconnect by themselves after an outage; what an operator lacks is seeing the
outage. This service turns it into metrics (``driftd_broker_up``, outages and their seconds),
one log line when the cluster goes away and one when it is back, and a line in ``driftd
status``. It never gates readiness: the HTTP endpoint serves predictions without a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import mode
from aiokafka.client import AIOKafkaClient
from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["BrokerProbe"]

log = logging.getLogger(__name__)


class BrokerProbe(mode.Service):
    def __init__(
        self,
        bootstrap: str,
        client_options: dict[str, Any],
        interval_s: float,
        registry: CollectorRegistry,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bootstrap = bootstrap
        self.client_options = client_options
        self.interval_s = interval_s
        self.timeout_s = max(1.0, min(5.0, interval_s * 2))
        self.up_gauge = Gauge(
            "driftd_broker_up",
            "1 when the last metadata request to the Kafka cluster succeeded, 0 during an outage.",
            registry=registry,
        )
        self.outages = Counter(
            "driftd_broker_outages_total",
            "Times the Kafka cluster became unreachable.",
            registry=registry,
        )
        self.outage_seconds = Counter(
            "driftd_broker_outage_seconds_total",
            "Seconds the Kafka cluster was unreachable (counted as each probe fails).",
            registry=registry,
        )
        self.up: bool | None = None  # unknown until the first probe
        self.outage_count = 0
        self.down_since: float | None = None
        self.last_error = ""
        self._client: AIOKafkaClient | None = None
        self._last_probe = time.monotonic()

    async def on_start(self) -> None:
        self.add_future(self._run())

    async def on_stop(self) -> None:
        await self._close_client()

    async def _run(self) -> None:
        while not self.should_stop:
            await self.probe()
            await self.sleep(self.interval_s)

    async def probe(self) -> bool:
        now = time.monotonic()
        try:
            await asyncio.wait_for(self._fetch_metadata(), self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to reach the cluster is an outage
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await self._close_client()  # a fresh client re-resolves and re-bootstraps next time
            self._mark_down(now)
        else:
            self._mark_up(now)
        self._last_probe = now
        return bool(self.up)

    async def _fetch_metadata(self) -> None:
        if self._client is None:
            self._client = AIOKafkaClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=int(self.timeout_s * 1000),
                **self.client_options,
            )
            await self._client.bootstrap()
        await self._client.fetch_all_metadata()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail too
                await client.close()

    def _mark_down(self, now: float) -> None:
        if self.up is not False:
            self.outages.inc()
            self.outage_count += 1
            self.down_since = now
            log.error(
                "Kafka cluster %s unreachable: %s (ingest waits; predictions over HTTP go on)",
                self.bootstrap,
                self.last_error,
            )
        else:
            self.outage_seconds.inc(now - self._last_probe)
        self.up = False
        self.up_gauge.set(0)

    def _mark_up(self, now: float) -> None:
        if self.up is False and self.down_since is not None:
            self.outage_seconds.inc(now - self._last_probe)
            log.warning(
                "Kafka cluster %s reachable again after %.1f s",
                self.bootstrap,
                now - self.down_since,
            )
        self.up, self.down_since = True, None
        self.up_gauge.set(1)

    def status(self) -> dict[str, Any]:
        down_for = None if self.down_since is None else round(time.monotonic() - self.down_since, 1)
        return {
            "up": self.up,
            "down_for_s": down_for,
            "last_error": self.last_error if self.up is False else None,
            "outages": self.outage_count,
        }
