"""The composition root: builds the running daemon (the faust app, its
ingest agent, the tiers, the learning loop, timers and the web service).

``Daemon.__init__`` builds every part through its constructor, in the order their dependencies
need, and hands each the callbacks it calls later; nothing is patched after construction.

``Daemon(settings).run()`` is the whole process: it starts the embedded broker when configured,
creates every topic explicitly, runs the faust worker until SIGTERM/SIGINT, and stops the broker.
faust's worker turns SIGTERM into a graceful stop: agents finish their batch in flight (see
streams.ingest), the consumer commits what was acknowledged, and the process exits 0.
SIGHUP re-reads the configuration and applies what may change at run time (daemon.reload). Under
systemd the daemon reports READY, WATCHDOG, RELOADING and STOPPING itself (daemon.systemd).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import faust
import mode
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector

from models.registry_mirror import open_registry
from models.serving import ModelServer
from streams.ingest import IngestAgent, UserIdPolicy
from streams.metrics import StreamMetrics
from streams.tiers import StoredEvent, TieredStore, TierPolicy

from . import systemd
from .admin_routes import AdminRoutes
from .batch_ingest import BatchIngest, StallingBatchConsumer
from .broker import EmbeddedBroker, TopicSpec, ensure_topics_sync
from .broker_probe import BrokerProbe
from .cluster import QualityForwarder, ReplicaLink, ReplicaMetrics, TrainerRole, replica_id
from .config import ConfigError, KafkaSettings, Settings, load_settings
from .consumer import PartitionStalls
from .daemon_status import DaemonStatus
from .housekeeping import Housekeeping, consumer_lag
from .http_routes import PredictRoutes
from .kafka import aiokafka_options, faust_credentials
from .labeling import LabelingRequests
from .learning import LearningLoop
from .logs import setup_logging
from .memory import trim_heap
from .model_service import ModelService
from .producer import DeadLetters, Producer
from .reload import diff_settings
from .services import LearningService, LifecycleService, StoreService
from .serving_metrics import ServingCollector
from .stream_predictor import StreamPredictor
from .tls import server_context
from .web import WebService

__all__ = ["Daemon", "topic_specs"]

log = logging.getLogger("driftd")
GC_YOUNG_THRESHOLD = 50_000  # allocations between young-generation collections (_tune_interpreter)


def faust_app_id(group_id: str) -> str:
    """faust's app (its timers, services and leader topic) has a consumer group of its own: the
    input topic's group is the hot path's (daemon.batch_ingest), whose assignor differs."""
    return f"{group_id}.app"


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
        TopicSpec(f"{faust_app_id(settings.kafka.group_id)}-__assignor-__leader", 1, rf),
    ]


class Daemon:
    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path  # re-read on SIGHUP
        self.metrics_registry = _metrics_registry()
        self.metrics = StreamMetrics(self.metrics_registry)
        self.bootstrap = _bootstrap(settings.kafka)
        self.store = _build_store(settings, self.metrics)
        self.store_service = StoreService(self.store, settings)
        self.broker_probe = BrokerProbe(
            self.bootstrap,
            aiokafka_options(settings.kafka),
            settings.kafka.probe_interval_s,
            self.metrics_registry,
        )
        # partitions stopped at a batch the consumer cannot read
        self.partition_stalls = PartitionStalls(self.metrics_registry)
        self.app = _build_app(settings, self.bootstrap)
        self.producer = Producer(self.app)
        # a replaced session's memory goes back to the OS at once, not at the next trim
        self.model_server = ModelServer(on_retired=trim_heap)
        self.metrics_registry.register(ServingCollector(self.model_server))
        self.model_registry = open_registry(
            settings.registry_dir,
            settings.models.registry_url,
            settings.models.registry_storage_options,
        )
        self.stream_predictor = StreamPredictor(
            self.model_server,
            self.model_registry.root,
            settings.models.top_k,
            in_child=settings.models.stream_prediction == "process",
        )
        swap_lock = asyncio.Lock()  # admin activations and the learning loop's swaps, one at a time
        self.role, self.learning, self.replica_link = self._build_learning(swap_lock)
        self.labeling = LabelingRequests(settings, self.producer.send, self.metrics_registry)
        self.ingest = self._build_ingest()
        self.batch_ingest = BatchIngest(
            settings.topics.input,
            self.ingest,
            partial(_ingest_consumer, settings, self.bootstrap, self.partition_stalls),
            self.metrics_registry,
            batch_size=settings.ingest.batch_size,
            batch_timeout_s=settings.ingest.batch_timeout_s,
        )
        self.status = DaemonStatus(
            self.batch_ingest.assignment,
            self.store_service,
            self.metrics,
            self.model_server,
            self.model_registry,
            self.learning,
            self.replica_link,
            self.broker_probe,
            lag=self.consumer_lag,
        )
        self.web = self._build_web(swap_lock)
        self._register()

    # -- construction ----------------------------------------------------------------------------

    def _build_learning(
        self, swap_lock: asyncio.Lock
    ) -> tuple[TrainerRole, LearningLoop, ReplicaLink]:
        """The learning loop between the two sides of the replica link: the role and the
        forwarder it asks, then the link that feeds it what other replicas forward."""
        s = self.settings
        replica, metrics = replica_id(), ReplicaMetrics(self.metrics_registry)
        # late: the ingest consumer exists once the app asks for it
        role = TrainerRole(s, assignment=lambda: self.batch_ingest.assignment())
        forwarder = QualityForwarder(s.topics.quality, replica, self.producer.send, metrics)
        learning = LearningLoop(
            s,
            self.store,
            self.model_server,
            self.model_registry,
            self.metrics_registry,
            self.producer.to(s.topics.model_updates),
            swap_lock,
            is_trainer=role.is_trainer,
            forward=forwarder.forward,
        )
        link = ReplicaLink(
            s,
            self.bootstrap,
            aiokafka_options(s.kafka),
            learning,
            role,
            self.model_server,
            self.model_registry,
            swap_lock,
            replica=replica,
            metrics=metrics,
        )
        return role, learning, link

    def _build_ingest(self) -> IngestAgent:
        s, cfg = self.settings, self.settings.ingest
        return IngestAgent(
            store=self.store,
            dead_letter=DeadLetters(self.producer, s.topics.dlq, s.topics.partitions).send,
            metrics=self.metrics,
            max_event_bytes=cfg.max_event_bytes,
            null_key=cfg.null_key,
            users=UserIdPolicy(cfg.store_user_id, cfg.user_id_salt.get_secret_value().encode()),
            redactor=s.privacy.redactor(),
            predict=self.stream_predictor.predict,
            publish_prediction=self.producer.batches_to(s.topics.predictions, s.topics.partitions),
            observe=self._observe_batch,
            observe_served=s.web.monitor_http_predictions,
            # late: the hot path is built on this agent
            on_blocked=lambda blocked: self.batch_ingest.blocked(blocked),
        )

    def _build_web(self, swap_lock: asyncio.Lock) -> WebService:
        s = self.settings
        # publish: /v1/feedback's events, on the daemon's producer
        predict = PredictRoutes(s, self.model_server, self.metrics_registry, self.producer.send)
        admin = AdminRoutes(
            s.web.admin_token,
            self.model_server,
            self.model_registry,
            self.metrics_registry,
            swap_lock,
            learning=self.learning,
            daemon_status=self.status.report,
        )
        return WebService(
            s.web.host,
            s.web.port,
            self.metrics_registry,
            self.status.readiness,
            routes=(predict, admin),
            # a bad cert/key pair: ConfigError before anything starts
            ssl_context=server_context(s.web),
        )

    def _register(self) -> None:
        """The services, the ingest agent and the timers, started and stopped with the app."""
        s, app = self.settings, self.app
        timeline_path = s.daemon.data_dir / "timeline.json"
        for service in (
            self.store_service,
            ModelService(s, self.model_server, self.model_registry),
            self.stream_predictor,
            self.replica_link,
            self.web,
            self.broker_probe,
            LearningService(self.learning, timeline_path),
            LifecycleService(self.reload),
            self.batch_ingest,
        ):
            _start_with(app, service)

        Housekeeping(
            s, self.store_service, self.metrics, self.learning, self.consumer_lag, timeline_path
        ).register(app)

    # -- what the parts call back ----------------------------------------------------------------

    def _observe_batch(
        self,
        events: Sequence[StoredEvent],
        predicted: Sequence[tuple[StoredEvent, dict[str, Any]]],
    ) -> None:
        self.learning.observe_batch(events, predicted)
        # An HTTP prediction reaches the hook only with
        # its client's label: no labelling request for it.
        self.labeling.observe([pair for pair in predicted if pair[1].get("source") != "http"])

    def consumer_lag(self) -> dict[int, int]:
        return consumer_lag(self.batch_ingest.consumer, self.ingest)

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
        self.role.reconfigure(applied.learning)  # learning.role, read at the next question
        self.settings = applied
        setup_logging(daemon.log_level, daemon.log_format)
        log.info(
            "SIGHUP: reloaded %s: %s%s",
            self.config_path or "the environment",
            diff.describe(),
            f" (restarted: {', '.join(restarted)})" if restarted else "",
        )
        return True

    # -- running ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        _tune_interpreter()
        before, after = raise_open_file_limit()
        if after != before:
            log.info("open-file limit raised from %d to %d", before, after)
        broker = _start_embedded_broker(self.settings)
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
            return _run_worker(self.app, self.settings.daemon.log_level)
        finally:
            self.model_server.close(timeout=5)
            if self.store_service.opened:
                self.store.close_now()
            if broker is not None:
                broker.stop()


def _tune_interpreter() -> None:
    # Background threads (store writer, model loading) run Python too; CPython lets one keep the
    # GIL for up to the switch interval, which the event loop's requests then wait out. 1 ms
    # instead of 5 bounds that wait (swap-time p99) for a few % more GIL hand-offs.
    sys.setswitchinterval(0.001)
    # The hot tier and the monitors keep hundreds of thousands of objects alive, which each
    # young-generation collection traverses again: at the default threshold (700 allocations)
    # bench/ingest.py ran 10-20% slower. Few of the hot path's objects form cycles, so
    # collecting less often costs little memory.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _metrics_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    # RSS, CPU, open fds: what a leak or a soak shows first
    ProcessCollector(registry=registry)
    Gauge(
        "driftd_up_since_seconds",
        "Unix time the daemon started.",
        registry=registry,
    ).set(time.time())
    return registry


def _bootstrap(kafka: KafkaSettings) -> str:
    return f"127.0.0.1:{kafka.embedded_port}" if kafka.embedded else kafka.bootstrap


def _build_store(settings: Settings, metrics: StreamMetrics) -> TieredStore:
    tiers = settings.tiers
    policy = TierPolicy(
        tiers.hot_max_age_s,
        tiers.warm_retention_s,
        {r.priority: r.model_dump(exclude={"priority"}) for r in tiers.rules},
    )
    return TieredStore(
        settings.warm_path,
        settings.cold_url,
        policy,
        tiers.hot_max_events,
        warm_synchronous=tiers.warm_synchronous,
        demotion_batch=tiers.demotion_batch,
        cold_retention_s=tiers.cold_retention_s,
        redelivery_horizon_s=tiers.redelivery_horizon_s,
        cold_storage_options=tiers.cold_storage_options,
        metrics=metrics,
    )


def _build_app(settings: Settings, bootstrap: str) -> faust.App:
    """The faust app: its services, timers and producer."""
    s = settings
    data_dir: Path = s.daemon.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    # The input topic is read by daemon.batch_ingest, which stalls an unreadable batch's partition;
    # faust's own consumer reads only its leader topic.
    return faust.App(
        faust_app_id(s.kafka.group_id),
        broker=f"kafka://{bootstrap.replace(',', ';kafka://')}",
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
        # a fetch's predictions for one partition go out as one record batch, not a dozen
        producer_max_batch_size=256 * 1024,
        stream_wait_empty=False,
        logging_config=None,
    )


def _ingest_consumer(
    settings: Settings, bootstrap: str, stalls: PartitionStalls
) -> StallingBatchConsumer:
    """The input topic's consumer, in the daemon's group, committing by hand (BatchIngest)."""
    k = settings.kafka
    return StallingBatchConsumer(
        stalls=stalls,
        bootstrap_servers=bootstrap,
        group_id=k.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(k.session_timeout_s * 1000),
        rebalance_timeout_ms=int(k.rebalance_timeout_s * 1000),
        heartbeat_interval_ms=int(k.heartbeat_interval_s * 1000),
        max_poll_records=settings.ingest.batch_size,
        **aiokafka_options(k),
    )


def _start_embedded_broker(settings: Settings) -> EmbeddedBroker | None:
    if not settings.kafka.embedded:
        return None
    return EmbeddedBroker(
        settings.kafka.embedded_port,
        log_path=settings.daemon.data_dir / "broker.log",
        storage=settings.kafka.embedded_storage,
    ).start()


def _run_worker(app: faust.App, log_level: str) -> int:
    """faust's worker, until SIGTERM/SIGINT; returns the process exit code."""
    worker = _Worker(
        app, loglevel=log_level, quiet=True, redirect_stdouts=False, override_logging=False
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def _start_with(app: faust.App, service: mode.Service) -> None:
    """Started with the app (after its consumer), stopped with it."""
    app.service(service)  # type: ignore[arg-type]  # faust takes instances too; its stub says classes


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
