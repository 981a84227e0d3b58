"""Assembles the running daemon: the faust app, its
ingest agent, the tiers, timers and the web service.

``Daemon(settings).run()`` is the whole process: it starts the embedded broker when configured,
creates every topic explicitly, runs the faust worker until SIGTERM/SIGINT, and stops the broker.
faust's worker turns SIGTERM into a graceful stop: agents finish their batch in flight (see
streams.ingest), the consumer commits what was acknowledged, and the process exits 0.
SIGHUP re-reads the configuration and applies what may change at run time (daemon.reload). Under
systemd the daemon reports READY, WATCHDOG, RELOADING and STOPPING itself (daemon.systemd).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import mode
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector

from models.registry_mirror import MirroredRegistry, open_registry
from models.serving import ModelServer, NoModel
from streams.ingest import (
    DETAIL_HEADER,
    REASON_HEADER,
    SOURCE_HEADER,
    IngestAgent,
    RawRecord,
    UserIdPolicy,
)
from streams.metrics import StreamMetrics
from streams.schema import Rejection
from streams.tiers import TieredStore, TierPolicy

from . import systemd
from .broker import EmbeddedBroker, TopicSpec, ensure_topics_sync
from .broker_probe import BrokerProbe
from .cluster import ReplicaLink
from .config import ConfigError, Settings, load_settings
from .consumer import PartitionStalls, StallingTransport
from .kafka import aiokafka_options, faust_credentials
from .labeling import LabelingRequests
from .learning import LearningLoop
from .logs import setup_logging
from .memory import trim_heap
from .model_service import ModelService
from .predict_api import PredictApi
from .reload import diff_settings
from .serving_metrics import ServingCollector
from .tls import server_context
from .web import WebService

__all__ = ["Daemon", "topic_specs"]

log = logging.getLogger("driftd")


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic driftd touches, faust's internal
    leader topic included, with its partition count."""
    t, rf = settings.topics, settings.topics.replication_factor
    return [
        TopicSpec(t.input, t.partitions, rf),
        TopicSpec(t.dlq, t.partitions, rf),
        TopicSpec(t.predictions, t.partitions, rf),
        TopicSpec(t.model_updates, 1, rf),
        TopicSpec(t.quality, 1, rf),
        TopicSpec(t.labeling_requests, 1, rf),
        TopicSpec(f"{settings.kafka.group_id}-__assignor-__leader", 1, rf),
    ]


class Daemon:
    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path  # re-read on SIGHUP
        self.metrics_registry = CollectorRegistry()
        # RSS, CPU, open fds: what a leak or a soak shows first
        ProcessCollector(registry=self.metrics_registry)
        self.metrics = StreamMetrics(self.metrics_registry)
        Gauge(
            "driftd_up_since_seconds",
            "Unix time the daemon started.",
            registry=self.metrics_registry,
        ).set(time.time())
        self.bootstrap = (
            f"127.0.0.1:{settings.kafka.embedded_port}"
            if settings.kafka.embedded
            else settings.kafka.bootstrap
        )
        self.store = self._build_store()
        self.broker_probe = BrokerProbe(
            self.bootstrap,
            aiokafka_options(settings.kafka),
            settings.kafka.probe_interval_s,
            self.metrics_registry,
        )
        # partitions stopped at a batch the consumer cannot read
        self.partition_stalls = PartitionStalls(self.metrics_registry)
        self.app = self._build_app()
        self.ingest = self._build_ingest()
        # a replaced session's memory goes back to the OS at once, not at the next trim
        self.model_server = ModelServer(on_retired=trim_heap)
        self.metrics_registry.register(ServingCollector(self.model_server))
        self.model_registry = open_registry(
            settings.registry_dir,
            settings.models.registry_url,
            settings.models.registry_storage_options,
        )
        swap_lock = asyncio.Lock()  # admin activations and the learning loop's swaps, one at a time
        self.predict_api = PredictApi(  # publish: /v1/feedback's events, on the daemon's producer
            settings,
            self.model_server,
            self.model_registry,
            self.metrics_registry,
            swap_lock,
            publish=self._send,
        )
        # The loop and the replica link refer to each other:
        # the loop asks the link late, through these lambdas.
        self.learning = LearningLoop(
            settings,
            self.store,
            self.model_server,
            self.model_registry,
            self.metrics_registry,
            self._announce_model,
            swap_lock,
            is_trainer=lambda: self.replica_link.is_trainer(),
            forward=lambda kind, payload: self.replica_link.forward(kind, payload),
        )
        self.labeling = LabelingRequests(settings, self._send, self.metrics_registry)
        self.ingest.observe = self._observe_batch
        self.replica_link = ReplicaLink(
            settings,
            self.bootstrap,
            aiokafka_options(settings.kafka),
            self.learning,
            self.model_server,
            self.model_registry,
            swap_lock,
            send=self._send,
            assignment=lambda: self.app.consumer.assignment(),
            metrics_registry=self.metrics_registry,
        )
        self.predict_api.learning = self.learning
        self.predict_api.daemon_status = self.status
        self.started_at = time.time()
        self.web = WebService(
            settings.web.host,
            settings.web.port,
            self.metrics_registry,
            self._readiness,
            # a bad cert/key pair: ConfigError before anything starts
            add_routes=self.predict_api.add_routes,
            ssl_context=server_context(settings.web),
        )
        self._store_open = False
        self._register()

    # -- construction ----------------------------------------------------------------------------

    def _build_store(self) -> TieredStore:
        tiers = self.settings.tiers
        policy = TierPolicy(
            tiers.hot_max_age_s,
            tiers.warm_retention_s,
            {r.priority: r.model_dump(exclude={"priority"}) for r in tiers.rules},
        )
        return TieredStore(
            self.settings.warm_path,
            self.settings.cold_url,
            policy,
            tiers.hot_max_events,
            warm_synchronous=tiers.warm_synchronous,
            demotion_batch=tiers.demotion_batch,
            cold_retention_s=tiers.cold_retention_s,
            redelivery_horizon_s=tiers.redelivery_horizon_s,
            cold_storage_options=tiers.cold_storage_options,
            metrics=self.metrics,
        )

    def _build_app(self) -> faust.App:
        s = self.settings
        data_dir: Path = s.daemon.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            s.kafka.group_id,
            broker=f"kafka://{self.bootstrap.replace(',', ';kafka://')}",
            broker_credentials=faust_credentials(s.kafka),
            datadir=str(data_dir / "faust"),
            # our own aiohttp service serves /metrics etc.; faust's debug pages stay off
            web_enabled=False,
            topic_partitions=s.topics.partitions,
            topic_replication_factor=s.topics.replication_factor,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=s.kafka.session_timeout_s,
            broker_rebalance_timeout=s.kafka.rebalance_timeout_s,
            broker_heartbeat_interval=s.kafka.heartbeat_interval_s,
            broker_commit_interval=s.kafka.commit_interval_s,
            producer_acks=-1,
            stream_wait_empty=False,
            logging_config=None,
        )
        # Before anything asks for the transport: an unreadable batch
        # stalls its partition, not the worker (daemon/consumer).
        app.transport = StallingTransport(
            app.conf.broker_consumer, app, stalls=self.partition_stalls
        )
        self.input_topic = app.topic(
            s.topics.input,
            key_type=bytes,
            value_type=bytes,
            value_serializer="raw",
            key_serializer="raw",
            partitions=s.topics.partitions,
        )
        self.dlq_topic = app.topic(
            s.topics.dlq,
            value_serializer="raw",
            key_serializer="raw",
            partitions=s.topics.partitions,
        )
        return app

    def _build_ingest(self) -> IngestAgent:
        ingest_cfg = self.settings.ingest
        return IngestAgent(
            store=self.store,
            dead_letter=self._dead_letter,
            metrics=self.metrics,
            max_event_bytes=ingest_cfg.max_event_bytes,
            null_key=ingest_cfg.null_key,
            users=UserIdPolicy(
                ingest_cfg.store_user_id, ingest_cfg.user_id_salt.get_secret_value().encode()
            ),
            redactor=self.settings.privacy.redactor(),
            predict=self._predict_stream,
            publish_prediction=self._publish_prediction,
            observe_served=self.settings.web.monitor_http_predictions,
        )

    def _predict_stream(self, texts: list[str]) -> list[dict[str, Any]] | None:
        try:
            predictions = self.model_server.predict(texts, top_k=self.settings.models.top_k)
        except NoModel:
            return None
        return [p.to_dict() for p in predictions]

    async def _publish_prediction(self, key: bytes, value: bytes) -> Any:
        # The producer directly, not Topic.send: one record per utterance makes faust's per-message
        # send machinery (codecs, FutureMessage, callbacks) a visible share of the ingest path.
        return await self.app.producer.send(
            self.settings.topics.predictions,
            key,
            value,
            partition=None,
            timestamp=None,
            headers=None,
        )

    def _observe_batch(self, events: Any, predicted: Any) -> None:
        self.learning.observe_batch(events, predicted)
        # An HTTP prediction reaches the hook only with
        # its client's label: no labelling request for it.
        self.labeling.observe([pair for pair in predicted if pair[1].get("source") != "http"])

    async def _send(self, topic: str, key: bytes, value: bytes) -> Any:
        return await self.app.producer.send(
            topic, key, value, partition=None, timestamp=None, headers=None
        )

    async def _announce_model(self, key: bytes, value: bytes) -> Any:
        return await self.app.producer.send(
            self.settings.topics.model_updates,
            key,
            value,
            partition=None,
            timestamp=None,
            headers=None,
        )

    async def _dead_letter(self, record: RawRecord, rejection: Rejection) -> Any:
        headers = [
            (REASON_HEADER, rejection.reason.encode()),
            # cut on a character boundary
            (
                DETAIL_HEADER,
                rejection.detail.encode("utf-8", "replace")[:1024]
                .decode("utf-8", "ignore")
                .encode(),
            ),
            (SOURCE_HEADER, f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        return await self.dlq_topic.send(
            key=record.key,
            value=record.value,
            headers=headers,
            partition=record.partition % self.settings.topics.partitions,
        )

    def _register(self) -> None:
        s, app = self.settings, self.app
        store, ingest = self.store, self.ingest

        class StoreService(mode.Service):
            async def on_start(inner) -> None:  # noqa: N805 - mode's hook on a nested class
                suffix = time.strftime("@retired-%Y%m%dT%H%M%SZ", time.gmtime())
                await store.open(self._fresh_log_ends(), retired_suffix=suffix)
                for (topic, partition), (highest, _) in sorted(store.retired.items()):
                    log.warning(
                        "the embedded broker keeps nothing across its restart "
                        "(kafka.embedded_storage = %s): the events stored from "
                        "its previous log of %s partition %d (offsets up to "
                        "%d) are kept under topic %r, and the new records that "
                        "reuse those offsets are stored as new events",
                        s.kafka.embedded_storage,
                        topic,
                        partition,
                        highest,
                        f"{topic}{suffix}",
                    )
                self._store_open = True
                log.info(
                    "tiers open: hot max %d events, warm %s (%d events), cold %s (%d events)",
                    s.tiers.hot_max_events,
                    s.warm_path,
                    store.warm.count,
                    s.cold_url,
                    store.warm.cold_rows,
                )

        app.service(StoreService)
        app.service(ModelService(s, self.model_server, self.model_registry))
        app.service(self.replica_link)
        app.service(self.web)
        app.service(self.broker_probe)
        learning = self.learning
        timeline_path = s.daemon.data_dir / "timeline.json"

        class LearningService(mode.Service):
            async def on_stop(inner) -> None:  # noqa: N805
                # kills a running fine-tune child; the serving model is untouched
                await learning.stop()
                learning.save_timeline(timeline_path)

        app.service(LearningService)
        app.service(LifecycleService(self))

        @app.agent(self.input_topic, name="driftd.ingest")
        async def ingest_agent(stream: faust.StreamT) -> None:
            await ingest.consume(stream, s.ingest.batch_size, s.ingest.batch_timeout_s)

        @_guarded_timer(app, s.tiers.maintenance_interval_s, "driftd.tiers.maintain")
        async def maintain_tiers() -> None:
            if self._store_open:
                moved = await store.maintain()
                if moved["warm_to_cold"] or moved["cold_deleted"]:
                    log.info(
                        "tiers: %d warm->cold, %d deleted by cold retention",
                        moved["warm_to_cold"],
                        moved["cold_deleted"],
                    )

        @_guarded_timer(app, 1.0, "driftd.consumer_lag")
        async def update_lag() -> None:
            for partition, lag in self.consumer_lag().items():
                self.metrics.consumer_lag.labels(str(partition)).set(lag)

        @_guarded_timer(app, 10.0, "driftd.outcomes.expire")
        async def expire_outcomes() -> None:
            # predictions never labelled, labels never matched: bounded by the horizon
            self.learning.joiner.expire()
            self.learning.settle()  # a quiet stream still gets its episode's last labels learned
            # small (bounded points); survives a crash for the post-mortem
            self.learning.save_timeline(timeline_path)

        if s.daemon.trim_interval_s > 0:

            @_guarded_timer(app, s.daemon.trim_interval_s, "driftd.memory.trim")
            async def trim_memory() -> None:
                seconds = await asyncio.get_running_loop().run_in_executor(None, trim_heap)
                if seconds is not None and seconds > 0.05:
                    log.debug("malloc_trim took %.3f s", seconds)

        last = {"events": 0.0, "dlq": 0.0}

        @_guarded_timer(app, s.daemon.stats_interval_s, "driftd.stats")
        async def log_stats() -> None:
            if not self._store_open:
                return
            events = _total(self.metrics.events)
            dlq = _total(self.metrics.dlq)
            sizes = store.sizes()
            log.info(
                "ingest: %d events stored (+%d), %d dead-lettered (+%d) | "
                "tiers: hot=%d warm=%d cold=%d",
                events,
                events - last["events"],
                dlq,
                dlq - last["dlq"],
                sizes["hot"],
                sizes["warm"],
                sizes["cold"],
            )
            last.update(events=events, dlq=dlq)

    def _fresh_log_ends(self) -> dict[tuple[str, int], int]:
        """Log ends known for certain at start: an embedded broker on memory storage was
        started empty by this process, so every input partition's log begins again at
        offset 0 and any offset stored before belongs to a log that is gone
        (TieredStore.open retires it). Anything else: unknown, nothing retired. (Asking the
        broker would be no substitute: Tansu reports a partition's end at its last batch.)"""
        if not (
            self.settings.kafka.embedded
            and self.settings.kafka.embedded_storage.startswith("memory://")
        ):
            return {}
        return {
            (self.settings.topics.input, partition): 0
            for partition in range(self.settings.topics.partitions)
        }

    def consumer_lag(self) -> dict[int, int]:
        """Records behind the high watermark, per assigned
        input partition (known once a fetch saw it)."""
        lags = {}
        for tp in self.app.consumer.assignment():
            highwater = self.app.consumer.highwater(tp)
            if highwater is None:
                continue
            position = self.ingest.next_offsets.get((tp.topic, tp.partition))
            lags[tp.partition] = max(0, highwater - position if position is not None else highwater)
        return lags

    def _registry_current(self) -> str | None:
        if isinstance(self.model_registry, MirroredRegistry):
            # as last read off the event loop: an object-store request here would block it
            return self.replica_link.registry_current
        return self.model_registry.current()

    def status(self) -> dict[str, Any]:
        """What ``driftd status`` shows: model, quality
        and detectors, tiers, lag, the last training."""
        model = self.model_server.model
        learning = self.learning.status()
        monitor = learning.pop("monitor")
        now = time.time()
        return {
            "pid": os.getpid(),
            "uptime_s": round(now - self.started_at, 1),
            "model": None
            if model is None
            else {
                "version": model.version,
                "created_at": model.created_at,
                "age_s": None if model.created_at is None else round(now - model.created_at, 1),
                "intents": len(model.labels),
                "registry_current": self._registry_current(),
            },
            "quality": {
                "ewma_accuracy": monitor["ewma_accuracy"],
                "reference_accuracy": monitor["reference_accuracy"],
                "window_accuracy": monitor["window_accuracy"],
                "samples": monitor["samples"],
                "signals": monitor["signals"],
                "fired": monitor["fired"],
                "detectors": monitor["detectors"],
                "triggers": monitor["triggers"],
                "label_free": monitor["label_free"],
                "decisions": monitor["decisions"],
                "cooldown_remaining_s": monitor["cooldown_remaining_s"],
                # the thresholds live now (SIGHUP changes them)
                "config": self.learning.monitor.config.to_dict(),
            },
            "tiers": self.store.sizes() if self._store_open else None,
            "ingest": {
                "events": _total(self.metrics.events),
                "dead_lettered": _total(self.metrics.dlq),
                # sinks a batch waits for
                "blocked_on": [
                    sample.labels["sink"]
                    for sample in _samples(self.metrics.ingest_blocked)
                    if sample.value
                ],
            },
            "broker": self.broker_probe.status(),
            "consumer_lag": {str(p): lag for p, lag in sorted(self.consumer_lag().items())}
            if self._store_open
            else {},
            "replica": self.replica_link.status(),
            "training": learning,
        }

    def reload(self) -> bool:
        """SIGHUP: re-read config.toml and the environment,
        apply the run-time settings, report the rest.

        A configuration that no longer validates is refused as a whole and the running settings
        stay; the daemon never stops over a reload. Returns True when the new settings were taken.
        """
        systemd.reloading()
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded, the running settings stay: %s", exc)
            return False
        finally:
            systemd.notify("READY=1")
        diff = diff_settings(self.settings, new)
        if diff.needs_restart:
            log.warning(
                "SIGHUP: %s changed; these take effect only after a restart and were not applied",
                ", ".join(diff.needs_restart),
            )
        daemon = self.settings.daemon.model_copy(
            update={"log_level": new.daemon.log_level, "log_format": new.daemon.log_format}
        )
        applied = self.settings.model_copy(
            update={"daemon": daemon, "monitor": new.monitor, "learning": new.learning}
        )
        try:
            # the monitor first: all of it or nothing
            restarted = self.learning.reconfigure(applied)
        except ValueError as exc:
            log.error("SIGHUP: configuration not reloaded, the running settings stay: %s", exc)
            return False
        self.settings = applied
        setup_logging(daemon.log_level, daemon.log_format)
        log.info(
            "SIGHUP: reloaded %s: %s%s",
            self.config_path or "the environment",
            diff.describe(),
            f" (restarted: {', '.join(restarted)})" if restarted else "",
        )
        return True

    def _readiness(self) -> dict[str, bool]:
        return {
            "store_open": self._store_open,
            "consumer_assigned": bool(self.app.consumer.assignment())
            if self._store_open
            else False,
            "model_loaded": self.model_server.ready,
        }

    # -- running ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        # Background threads (store writer, model loading, stream prediction)
        # run Python too; CPython lets one keep the GIL for up to the switch
        # interval, which the event loop's requests then wait out. 1 ms instead
        # of 5 bounds that wait (swap-time p99) for a few % more GIL hand-offs.
        sys.setswitchinterval(0.001)
        before, after = raise_open_file_limit()
        if after != before:
            log.info("open-file limit raised from %d to %d", before, after)
        broker = None
        if self.settings.kafka.embedded:
            log_path = self.settings.daemon.data_dir / "broker.log"
            broker = EmbeddedBroker(
                self.settings.kafka.embedded_port,
                log_path=log_path,
                storage=self.settings.kafka.embedded_storage,
            ).start()
        try:
            ensure_topics_sync(
                self.bootstrap, topic_specs(self.settings), aiokafka_options(self.settings.kafka)
            )
            log.info(
                "driftd ingests and tiers events from %s on %s, serves the "
                "registry's current model and retrains it on decay "
                "(learning.enabled=%s)",
                self.settings.topics.input,
                self.bootstrap,
                self.settings.learning.enabled,
            )
            worker = _Worker(
                self.app,
                loglevel=self.settings.daemon.log_level,
                quiet=True,
                redirect_stdouts=False,
                override_logging=False,
            )
            try:
                worker.execute_from_commandline()
            except SystemExit as exit_:
                return int(exit_.code or 0)
            return 0
        finally:
            self.model_server.close(timeout=5)
            if self._store_open:
                self.store.close_now()
            if broker is not None:
                broker.stop()


def _guarded_timer(
    app: faust.App, interval: float, name: str
) -> Callable[[Callable[[], Awaitable[None]]], Any]:
    """``app.timer`` whose body never takes the daemon down: faust stops the whole worker
    when a timer raises (a full disk, no file descriptor left), so the error is logged
    (a repeat of the same error once a minute at most) and the next tick tries again."""

    def register(body: Callable[[], Awaitable[None]]) -> Any:
        last_logged: list[Any] = [-math.inf, None]  # when, and which error

        async def guarded() -> None:
            try:
                await body()
            except Exception as exc:
                # not the path: it changes per attempt
                error = (type(exc).__name__, getattr(exc, "errno", None) or str(exc)[:100])
                if error != last_logged[1] or time.monotonic() - last_logged[0] >= 60:
                    last_logged[:] = [time.monotonic(), error]
                    log.exception("timer %s failed; it runs again in %g s", name, interval)

        guarded.__name__ = guarded.__qualname__ = body.__name__
        return app.timer(interval, name=name)(guarded)

    return register


def raise_open_file_limit(wanted: int = 65536) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard one: every HTTP client and Kafka
    connection is a file descriptor, and systemd's and most shells' default soft
    limit (1024) is a few hundred idle clients away. Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return soft, target
    return soft, soft


class _Worker(faust.Worker):
    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        systemd.notify("READY=1", "STATUS=consuming; /readyz says when a model serves")


class LifecycleService(mode.Service):
    """SIGHUP to reload, systemd's watchdog pings, and STOPPING=1 as the graceful stop begins."""

    def __init__(self, daemon: Daemon, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.daemon = daemon
        self.watchdog_s = systemd.watchdog_interval_s()

    async def on_start(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.daemon.reload)
        if self.watchdog_s is not None:
            self.add_future(self._watchdog())

    async def _watchdog(self) -> None:
        # Pinged from the event loop, so a loop blocked for
        # longer than WatchdogSec gets the process restarted.
        while not self.should_stop:
            systemd.notify("WATCHDOG=1")
            await self.sleep(self.watchdog_s)

    async def on_stop(self) -> None:
        systemd.notify("STOPPING=1")
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)


def _samples(metric: Any) -> list[Any]:
    return [sample for family in metric.collect() for sample in family.samples]


def _total(counter: Any) -> float:
    return sum(sample.value for sample in _samples(counter) if sample.name.endswith("_total"))
