"""Typed settings: config.toml, overridden by DRIFTD_*
environment variables, validated in one place.

Every setting has a type, a default and a description (config.toml repeats them for operators).
Environment names are ``DRIFTD_<SECTION>__<KEY>``, e.g. ``DRIFTD_KAFKA__BOOTSTRAP``.
An invalid value raises :class:`ConfigError` naming the key, the value and what was expected;
the CLI turns it into exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import fsspec
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from models.checkpoints import KNOWN as KNOWN_CHECKPOINTS
from models.names import ArchitectureName, ConflictPolicy, DistributedBackend, Precision
from streams.datasets import DATASETS
from streams.labeling_names import StrategyName
from streams.monitor.config import MonitorConfig
from streams.redact import DEFAULT_PATTERNS, Redactor, check_pattern
from streams.schema import Priority

__all__ = ["ENV_PREFIX", "ConfigError", "Settings", "load_settings"]

ENV_PREFIX = "DRIFTD_"
ENV_NESTED_DELIMITER = "__"


class ConfigError(Exception):
    """A setting has an invalid value. ``str(err)`` is the operator-facing message."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DaemonSettings(_Section):
    data_dir: Path = Field(
        default=Path("var"),
        description="Root of all local state (warm store, cold files, faust data). Relative "
        "paths are taken from the working directory.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level (changes on SIGHUP)."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description='"json": one JSON object per line (timestamp, level, logger, message), for '
        "log shippers (changes on SIGHUP).",
    )
    stats_interval_s: float = Field(
        default=10.0, gt=0, description="How often the daemon logs its ingest and tier counts."
    )
    trim_interval_s: float = Field(
        default=10.0,
        ge=0,
        description="How often freed heap memory is handed back to the OS (glibc malloc_trim); "
        "without it RSS stays at the high-water mark of every fine-tune and swap. "
        "0 turns it off.",
    )


class KafkaSettings(_Section):
    bootstrap: str = Field(
        default="embedded",
        min_length=1,
        description='"embedded" starts the bundled Tansu broker on 127.0.0.1; anything else is '
        "a host:port[,host:port] list of a real cluster.",
    )
    embedded_port: int = Field(
        default=19092, ge=1, le=65535, description="Port of the embedded broker."
    )
    embedded_storage: str = Field(
        default="memory://tansu/",
        pattern=r"^(memory|s3)://[^/\s]+/?$",
        description='Storage engine of the embedded broker: "memory://tansu/" keeps '
        'nothing across its restart; "s3://BUCKET/" keeps records and '
        "committed offsets in S3 or MinIO (AWS_ENDPOINT, AWS_ALLOW_HTTP and "
        "credentials from the environment).",
    )
    group_id: str = Field(
        default="driftd",
        min_length=1,
        description="Consumer group id; replicas with the same id share the partitions.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Passed to the Kafka client as is."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (prefer the env variable; never logged)."
    )
    ssl_cafile: Path | None = Field(default=None, description="CA bundle to verify the brokers.")
    ssl_certfile: Path | None = Field(
        default=None, description="Client certificate for mutual TLS."
    )
    ssl_keyfile: Path | None = Field(default=None, description="Client key for mutual TLS.")
    session_timeout_s: float = Field(
        default=10.0, gt=0, description="Consumer group session timeout."
    )
    rebalance_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Consumer group rebalance timeout. Group joins take about half of it on "
        "the embedded broker.",
    )
    heartbeat_interval_s: float = Field(
        default=1.0, gt=0, description="Consumer group heartbeat interval."
    )
    commit_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often acknowledged (durably stored) offsets are committed.",
    )
    probe_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="How often a metadata request checks that the cluster is reachable "
        "(driftd_broker_up).",
    )

    @property
    def embedded(self) -> bool:
        return self.bootstrap == "embedded"

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"kafka.security_protocol = {self.security_protocol!r} needs "
                "kafka.sasl_username and kafka.sasl_password"
            )
        return self


class TopicSettings(_Section):
    input: str = Field(
        default="conversations",
        min_length=1,
        description="Topic the conversation events arrive on.",
    )
    dlq: str = Field(
        default="conversations.dlq",
        min_length=1,
        description="Dead-letter topic for malformed events (original bytes + reason header).",
    )
    predictions: str = Field(
        default="predictions",
        min_length=1,
        description="Topic the live model's predictions are published on.",
    )
    model_updates: str = Field(
        default="model-updates",
        min_length=1,
        description="Topic new model versions are announced on.",
    )
    quality: str = Field(
        default="quality",
        min_length=1,
        description="Topic the replicas that do not train forward their decay decisions and "
        "labelled examples on, for the trainer (docs/scaling.md).",
    )
    labeling_requests: str = Field(
        default="labeling-requests",
        min_length=1,
        description="Topic the labelling requests (the predictions most worth a human label) "
        "are published on; `driftd labels export` reads it.",
    )
    partitions: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="Partition count of the input topic (created explicitly with it).",
    )
    replication_factor: int = Field(
        default=1, ge=1, description="Replication factor for topics driftd creates."
    )


class IngestSettings(_Section):
    max_event_bytes: int = Field(
        default=65536, ge=256, description="Larger payloads go to the DLQ as too_large."
    )
    batch_size: int = Field(
        default=2000,
        ge=1,
        le=100000,
        description="Most events decoded, stored and predicted per batch (one fetch).",
    )
    batch_timeout_s: float = Field(
        default=0.2, gt=0, description="A partial batch is flushed after this long."
    )
    store_user_id: Literal["pseudonymised", "clear", "drop"] = Field(
        default="pseudonymised",
        description="How user_id is stored: a keyed hash, in clear, or not at all.",
    )
    user_id_salt: SecretStr = Field(
        default=SecretStr("driftd-default-salt"),
        description="Key of the user_id hash; set your own in production.",
    )
    null_key: Literal["dlq", "accept"] = Field(
        default="dlq",
        description="A valid event in a record with no key (producers key by conversation_id): "
        '"dlq" dead-letters it as missing_key, "accept" stores it.',
    )


class RedactPattern(_Section):
    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="Name of the pattern (unique; letters, digits, _ . -).",
    )
    regex: str = Field(
        min_length=1,
        description="Python regular expression. All patterns run as one alternation: use "
        "scoped flags such as (?i:...) and named back-references, not global flags "
        "or \\1.",
    )
    replacement: str = Field(
        description="Text put in place of each match, as is (no group references)."
    )

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, regex: str, info: ValidationInfo) -> str:
        try:
            check_pattern(regex)
        except ValueError as exc:
            raise ValueError(f"pattern {info.data.get('name', '?')!r} {exc}") from None
        return regex


class PrivacySettings(_Section):
    redact_patterns: list[RedactPattern] = Field(
        default_factory=lambda: [
            RedactPattern(name=n, regex=r, replacement=t) for n, r, t in DEFAULT_PATTERNS
        ],
        description="Replaced in utterance text, meta and unknown fields' strings before "
        "an event is stored, published or logged (the model sees the redacted "
        "text); the DLQ keeps malformed records' original bytes. Empty turns "
        "redaction off.",
    )

    @field_validator("redact_patterns")
    @classmethod
    def _patterns_combine(cls, patterns: list[RedactPattern]) -> list[RedactPattern]:
        # unique names, one combined regex
        Redactor((p.name, p.regex, p.replacement) for p in patterns)
        return patterns

    def redactor(self) -> Redactor:
        return Redactor((p.name, p.regex, p.replacement) for p in self.redact_patterns)


class PriorityRule(_Section):
    priority: Priority = Field(description="Events with this priority follow this rule.")
    hot: bool = Field(
        default=True, description="Whether these events are kept in the hot tier at all."
    )
    hot_max_age_s: float | None = Field(
        default=None, gt=0, description="Overrides tiers.hot_max_age_s for these events."
    )
    warm_retention_s: float | None = Field(
        default=None, gt=0, description="Overrides tiers.warm_retention_s for these events."
    )


class TierSettings(_Section):
    hot_max_events: int = Field(
        default=100_000,
        ge=1,
        description="Hot tier capacity; the oldest events are evicted beyond it.",
    )
    hot_max_age_s: float = Field(
        default=900.0,
        gt=0,
        description="Events leave the hot tier after this age (they stay in warm).",
    )
    warm_retention_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="Events older than this move from warm (SQLite) to cold (Parquet).",
    )
    cold_retention_s: float | None = Field(
        default=None,
        gt=0,
        description="Cold files older than this are deleted; unset keeps them forever.",
    )
    redelivery_horizon_s: float = Field(
        default=86400.0,
        gt=0,
        description="How long the keys of events demoted to cold are remembered, so a Kafka "
        "redelivery of them stores nothing; a consumer-group reset further back "
        "than this stores them again.",
    )
    cold_url: str = Field(
        default="",
        description="Where Parquet files go: a path, file:// or s3:// URL (through fsspec). "
        "Empty means <data_dir>/cold.",
    )
    cold_storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to the fsspec filesystem of cold_url, e.g. {endpoint_url = "
        '"http://minio:9000"} for s3://. Credentials: prefer the AWS_* environment '
        "variables.",
    )
    warm_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="SQLite synchronous mode: FULL survives power loss, NORMAL only process "
        "crashes.",
    )
    maintenance_interval_s: float = Field(
        default=5.0, gt=0, description="How often hot eviction and warm->cold demotion run."
    )
    demotion_batch: int = Field(
        default=50_000,
        ge=1,
        description="Most events moved to one cold file per maintenance round.",
    )
    rules: list[PriorityRule] = Field(
        default_factory=lambda: [
            PriorityRule(priority="high", hot_max_age_s=3600.0, warm_retention_s=30 * 86400.0)
        ],
        description="Per-priority routing rules.",
    )

    @field_validator("cold_url")
    @classmethod
    def _cold_url_scheme_is_supported(cls, url: str) -> str:
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as exc:
            raise ValueError(f"no fsspec filesystem for {protocol}:// ({exc})") from None
        return url

    @field_validator("rules")
    @classmethod
    def _one_rule_per_priority(cls, rules: list[PriorityRule]) -> list[PriorityRule]:
        seen = [r.priority for r in rules]
        dupes = sorted({p for p in seen if seen.count(p) > 1})
        if dupes:
            raise ValueError(f"more than one rule for priority {', '.join(dupes)}")
        return rules


class WebSettings(_Section):
    host: str = Field(
        default="127.0.0.1",
        description="Address of the HTTP endpoint (/metrics, /healthz, /readyz). Loopback "
        "unless you mean it.",
    )
    port: int = Field(
        default=8780, ge=0, le=65535, description="Port of the HTTP endpoint; 0 picks a free one."
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the admin routes (/admin/v1/...); unset disables them. "
        "Prefer the env variable.",
    )
    tls_certfile: Path | None = Field(
        default=None,
        description="PEM certificate (chain) of the HTTP endpoint; set with tls_keyfile to "
        "serve https only. Unset: plain http.",
    )
    tls_keyfile: Path | None = Field(
        default=None,
        description="PEM private key of tls_certfile (unencrypted; keep it mode 0600).",
    )
    tls_min_version: Literal["TLSv1.2", "TLSv1.3"] = Field(
        default="TLSv1.2", description="Oldest TLS version the endpoint accepts."
    )
    tls_cafile: Path | None = Field(
        default=None,
        description="CA bundle the driftd CLI (status, learning) verifies the endpoint with, "
        "host name included; unset: it trusts tls_certfile itself (pinned).",
    )
    feedback_horizon_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long a /v1/predict answer takes feedback (POST /v1/feedback with its "
        "prediction_id); later: 410.",
    )
    feedback_max_pending: int = Field(
        default=50_000,
        ge=1,
        description="Most served predictions kept in memory for feedback; beyond, the oldest "
        "go (their feedback: 410).",
    )
    feedback_publish_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait for the broker to acknowledge a feedback's events; then 503 "
        "(nothing acknowledged, retry).",
    )
    monitor_http_predictions: bool = Field(
        default=True,
        description="Predictions served over HTTP and reported on count in live accuracy and "
        "decay detection; off: their feedback is training data only.",
    )

    @property
    def tls(self) -> bool:
        return self.tls_certfile is not None

    @model_validator(mode="after")
    def _tls_files(self) -> WebSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            given, missing = (
                ("web.tls_certfile", "web.tls_keyfile")
                if self.tls_keyfile is None
                else ("web.tls_keyfile", "web.tls_certfile")
            )
            raise ValueError(
                f"{given} is set but {missing} is not: set both for https, or neither for http"
            )
        for key in ("tls_certfile", "tls_keyfile", "tls_cafile"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                raise ValueError(f"web.{key} = {str(path)!r}: no such file")
        return self


def _shipped_dataset(name: str) -> str:
    if name not in DATASETS:  # read at run time: the list grows with the datasets shipped
        raise ValueError(f"unknown dataset; expected one of {', '.join(DATASETS)}")
    return name


def _check_fsspec_protocol(url: str) -> None:
    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"no fsspec filesystem for {protocol}:// ({exc})") from None


class ModelSettings(_Section):
    registry_dir: Path | None = Field(
        default=None,
        description="Model registry root (versioned, checksummed). Unset: "
        "<daemon.data_dir>/registry.",
    )
    registry_url: str = Field(
        default="",
        pattern=r"^$|^[a-z][a-z0-9+.-]*://\S+$",
        description="Shared registry for replicas on several hosts: an s3:// (or other "
        "fsspec) URL holding the versions and CURRENT; registry_dir is then "
        "the local working copy. Empty: registry_dir alone.",
    )
    registry_storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to the fsspec filesystem of registry_url, e.g. {endpoint_url = "
        '"http://minio:9000"} for s3://. Credentials: prefer the AWS_* environment '
        "variables.",
    )
    bootstrap: bool = Field(
        default=True,
        description="Train a first model from bootstrap_source when the registry is empty; "
        "off: serve nothing until a version is activated.",
    )
    bootstrap_source: str = Field(
        default="",
        description="What the first model is trained on when the registry is empty: a "
        "shipped dataset name (see bootstrap_dataset; bootstrap_groups "
        "applies), or a labelled .csv, .jsonl or .parquet file, as a path or "
        "an s3:// (fsspec) URL. Empty: bootstrap_dataset when kafka.bootstrap "
        'is "embedded" (the demo), nothing against another broker.',
    )
    bootstrap_dataset: str = Field(
        default="clinc150",
        description="Shipped dataset the empty bootstrap_source trains on with the embedded "
        "broker: clinc150, banking77, snips, or another name in "
        "streams.datasets.DATASETS.",
    )
    bootstrap_groups: list[str] = Field(
        default_factory=lambda: [
            "banking",
            "credit_cards",
            "kitchen_and_dining",
            "home",
            "auto_and_commute",
        ],
        description="Domains (or intents) of the shipped dataset to train on; empty means all. "
        "Not applied to a file.",
    )
    bootstrap_text_column: str = Field(
        default="text", min_length=1, description="Column of the texts in a bootstrap_source file."
    )
    bootstrap_intent_column: str = Field(
        default="intent",
        min_length=1,
        description="Column of the intents in a bootstrap_source file.",
    )
    bootstrap_storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to the fsspec filesystem of an s3:// (or other URL) "
        'bootstrap_source, e.g. {endpoint_url = "http://minio:9000"}. Credentials: '
        "prefer the AWS_* environment variables.",
    )
    top_k: int = Field(
        default=3, ge=1, le=20, description="Intents returned per prediction by default."
    )
    stream_prediction: Literal["process", "thread"] = Field(
        default="process",
        description='Where the stream\'s utterances are predicted: "process", a child process '
        "on another core, so featurising does not take the event loop's GIL from ingest "
        '(daemon/stream_predictor); "thread", a worker thread of the daemon.',
    )
    max_batch: int = Field(
        default=256, ge=1, le=4096, description="Most texts in one /v1/predict request."
    )
    max_text_chars: int = Field(default=2000, ge=1, description="Longest text /v1/predict accepts.")
    sync_interval_s: float = Field(
        default=10.0,
        ge=0,
        description="How often a replica checks the registry's CURRENT and swaps to it if "
        "another replica changed it (a missed model-updates record, a replica that "
        "was down); 0: only on model-updates records.",
    )
    architecture: ArchitectureName = Field(
        default="bag_of_ngrams",
        description="Architecture of a model trained from scratch: the CPU-fast bag of "
        'n-grams, the small transformer meant for a GPU, or "encoder", a '
        "pretrained sentence encoder (models.encoder) with a classification "
        "head. Fine-tunes keep the incumbent's.",
    )
    encoder: str = Field(
        default="",
        description='The pretrained checkpoint of architecture "encoder": "minilm" '
        "(all-MiniLM-L6-v2, English, installed by scripts/venv.sh) or the path "
        "of a local Hugging Face checkpoint directory (config.json, "
        "tokenizer.json or vocab.txt, model.safetensors; the "
        "sentence-transformers layout too), e.g. a multilingual one. Read "
        "offline, never downloaded.",
    )
    encoder_sha256: str = Field(
        default="",
        pattern=r"^$|^[0-9a-fA-F]{64}$",
        description="sha256 of a local checkpoint's model.safetensors: loading refuses other "
        "weights. Empty: not checked (every version's manifest records it either "
        'way); "minilm" is always checked against its pinned hash.',
    )
    encoder_max_len: int = Field(
        default=64,
        ge=8,
        le=512,
        description="Most tokens per text (the special tokens included) that the encoder "
        "reads; the rest is cut.",
    )

    @model_validator(mode="after")
    def _encoder_named(self) -> ModelSettings:
        if self.architecture == "encoder" and not self.encoder:
            raise ValueError(
                'models.architecture = "encoder" needs models.encoder: "minilm" or '
                "the path of a checkpoint directory"
            )
        if (
            self.encoder
            and self.encoder not in KNOWN_CHECKPOINTS
            and not Path(self.encoder).expanduser().is_dir()
        ):
            raise ValueError(
                f"models.encoder = {self.encoder!r}: expected "
                f"{', '.join(map(repr, KNOWN_CHECKPOINTS))} or an existing "
                "checkpoint directory"
            )
        return self

    @field_validator("bootstrap_dataset")
    @classmethod
    def _dataset_is_shipped(cls, name: str) -> str:
        return _shipped_dataset(name)

    @field_validator("bootstrap_source")
    @classmethod
    def _source_is_dataset_or_file(cls, source: str) -> str:
        if not source or source in DATASETS:
            return source
        # here, not at the top: streams.labelled_files loads pyarrow (and numpy), too heavy for
        # every CLI command that reads the settings
        from streams.labelled_files import LabelledFileError, file_format, is_url

        try:
            file_format(source)
        except LabelledFileError:
            names = ", ".join(DATASETS)
            raise ValueError(
                f"expected a shipped dataset name ({names}), the path or URL of a "
                ".csv, .jsonl or .parquet file, or empty"
            ) from None
        if is_url(source):
            _check_fsspec_protocol(source)
        return source


class MonitorSettings(MonitorConfig):
    """The [monitor] section: the decay policy's fields (defined once, with their defaults and
    bounds, in streams.monitor.MonitorConfig) and how long outcomes wait to be joined."""

    label_horizon_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long a prediction waits for its label (and a label for its "
        "prediction) before it is dropped.",
    )

    def to_config(self) -> MonitorConfig:
        """The policy's part, validated again (a ``model_copy(update=...)`` skips validation)."""
        return MonitorConfig.model_validate(self.model_dump(exclude={"label_horizon_s"}))


class LearningDataSettings(_Section):
    """[learning] fields that choose the training data: the window, replay from cold, the
    holdout, hygiene and pseudo-labels."""

    window_s: float = Field(
        default=86400.0,
        gt=0,
        description="Recent labelled events (hot + warm) of this many seconds, by event time, "
        "make the training data.",
    )
    replay_ratio: float = Field(
        default=0.3,
        ge=0,
        le=10,
        description="Replay examples sampled from cold per recent example (guards against "
        "forgetting).",
    )
    holdout_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=0.5,
        description="Share of the recent labelled events kept out of training to judge the "
        "candidate (see holdout_span).",
    )
    holdout_span: int = Field(
        default=1,
        ge=1,
        le=20,
        description="1 keeps the newest labelled events out as one block (holdout, and the "
        "validation split of the newest training examples). Above 1, each is "
        "drawn 1 in this many (by a hash of the event id) from the newest "
        "share x this, so the labels that arrived since the last fine-tune are "
        "mostly trained on at once (bench/labeling.py uses 4); worse for "
        "recovery from an abrupt drift (bench/loop.py), where the newest block "
        "is what the gate should judge.",
    )
    replay_scan_rows: int = Field(
        default=2_000_000,
        ge=1000,
        description="Most cold rows read to draw the replay sample. When cold holds more, "
        "whole files are chosen at random under the fine-tune's seed, so the "
        "parent's memory stays bounded as history grows.",
    )
    replay_eval_fraction: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Share of the replay sample kept out of training to measure forgetting.",
    )
    replay_class_cap: float = Field(
        default=2.0,
        ge=1,
        description="No intent keeps more than this many times its fair share (size / intents) "
        "of the replay sample; the rest is dropped before training (a few frequent "
        "intents would otherwise fill the sample when the others are rare in cold).",
    )
    hygiene: bool = Field(
        default=True,
        description="Clean the training examples before every fine-tune (models/hygiene.py): "
        "normalise text, drop empties, holdout leaks, exact and near duplicates, "
        "resolve label conflicts; the manifest records what was removed and why.",
    )
    near_duplicate_threshold: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Estimated Jaccard similarity of word 3-shingles above which two examples "
        "with the same intent are near duplicates (the newest is kept); 0 or 1 "
        "turns near-duplicate removal off.",
    )
    label_conflicts: ConflictPolicy = Field(
        default="majority",
        description='A text labelled with different intents: "majority" keeps the majority '
        'intent (a tie drops the text), "drop" drops every example of it.',
    )
    pseudo_labels: bool = Field(
        default=False,
        description="Also train on confident predictions of recent unlabelled utterances, at "
        "pseudo_label_weight (models/pseudo.py). The confidence threshold is "
        "measured on the fine-tune's validation split (human labels), and the "
        "candidate trained with them replaces the one trained without only if its "
        "validation loss is no higher. They are never events: never evaluated, "
        "gated on or used for decay detection.",
    )
    pseudo_label_weight: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Loss weight of a pseudo-labelled example (a human label weighs 1).",
    )
    pseudo_label_precision: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="The threshold is the lowest confidence at which the candidate's "
        "predictions on its validation split were right at least this often.",
    )
    pseudo_label_ratio: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="Most pseudo-labels per human-labelled training example.",
    )
    min_labelled: int = Field(
        default=300,
        ge=10,
        description="Fewest labelled examples a fine-tune starts with; against an incumbent "
        "also enough for the gate's holdout of 50 at holdout_fraction (500 at 0.1).",
    )
    max_examples: int = Field(
        default=30000,
        ge=100,
        description="Most recent labelled examples used (the newest are kept).",
    )


class LearningRunSettings(_Section):
    """[learning] fields of a fine-tune run: when it may start, how long it may take, and
    where and how it runs."""

    cooldown_s: float = Field(
        default=30.0,
        ge=0,
        description="Least time between the end of one fine-tune that trained (not a skipped "
        "one) and the start of the next automatic one.",
    )
    timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="A fine-tune still running after this long is killed (no swap, a failure "
        "metric).",
    )
    threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Torch threads of the fine-tune child; the rest of the cores keep ingesting.",
    )
    distributed_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Fine-tune under torchrun with this many DDP workers (each with `threads` "
        "torch threads); 1 trains in one child process. The same gate and registry "
        "steps follow; rank 0 judges.",
    )
    distributed_backend: DistributedBackend = Field(
        default="auto",
        description='torch.distributed backend of the workers: "auto" is NCCL when CUDA is '
        "present, else gloo.",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description='"auto" (CUDA when present), "cpu" or "cuda[:N]".',
    )
    precision: Precision = Field(
        default="auto",
        description='"auto": bf16 AMP on CUDA where supported, else fp16 with GradScaler; fp32 '
        "on CPU.",
    )


class LearningOptimiserSettings(_Section):
    """[learning] fields of the optimisation itself: epochs, learning rate, batches,
    early stopping, and which layers of an encoder train."""

    epochs: int = Field(
        default=10,
        ge=1,
        le=200,
        description="Most epochs per fine-tune (early stopping on a validation split may stop "
        "sooner).",
    )
    lr: float | None = Field(
        default=None,
        gt=0,
        description="Peak learning rate (AdamW); unset: the architecture's default scaled by "
        "sqrt(examples per step / 64).",
    )
    batch_size: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="Examples per micro-batch (large batches: far fewer optimiser steps over "
        "the embedding table, so much faster on CPU).",
    )
    accumulation_steps: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Micro-batches per optimiser step (gradient accumulation).",
    )
    clip_norm: float = Field(default=1.0, ge=0, description="Gradient norm clip; 0 turns it off.")
    warmup_ratio: float = Field(
        default=0.06,
        ge=0,
        lt=1,
        description="Share of steps with a linear learning-rate warm-up before the cosine decay.",
    )
    curriculum: bool = Field(
        default=False,
        description="The first epoch of a fine-tune goes easy to hard, by the incumbent's loss "
        "on each example (later epochs are shuffled).",
    )
    validation_fraction: float = Field(
        default=0.03,
        ge=0,
        lt=0.5,
        description="Share of the training examples (the newest, spread as holdout_span says) "
        "kept out for early stopping; 0 trains every epoch and keeps the last.",
    )
    patience: int = Field(
        default=3, ge=1, description="Epochs without a lower validation loss before early stopping."
    )
    encoder_trainable_layers: int | None = Field(
        default=None,
        ge=-1,
        description='Architecture "encoder": the top encoder layers a fine-tune trains '
        "(the lower ones and the embeddings stay frozen); 0 trains the head "
        "alone on sentence embeddings cached under <data_dir>/embeddings "
        "(seconds on a CPU); -1 trains every layer. Unset: every layer on "
        "CUDA, 0 on CPU.",
    )
    encoder_head_epochs: int = Field(
        default=40,
        ge=1,
        le=1000,
        description="Epochs of a fine-tune that trains an encoder's head alone "
        "(learning.encoder_trainable_layers = 0): each is a pass over cached "
        "sentence embeddings, milliseconds for a few thousand labels, and the "
        "head needs more of them than a network does (learning.epochs).",
    )


class LearningGateSettings(_Section):
    """[learning] fields of the gate a candidate must pass to replace the incumbent."""

    gate_margin: float = Field(
        default=0.005,
        ge=-0.1,
        le=1,
        description="Holdout accuracy the candidate must gain over the incumbent "
        "(absolute); a negative value is the most it may trail (a "
        "non-inferiority gate, for retraining often on a few new labels each "
        "time, where a required gain on a holdout of a few hundred turns noise "
        "into rejections).",
    )
    followup_gate_margin: float = Field(
        default=-0.01,
        ge=-0.1,
        le=1,
        description="The same for follow-ups. Their incumbent is the previous candidate of "
        "the episode, trained on a subset of the same data; a negative value "
        "lets one through that trails it by at most that much (noise on a "
        "holdout of a few hundred labels).",
    )
    forgetting_epsilon: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Replay accuracy the candidate may lose against the incumbent (absolute).",
    )
    latency_ratio: float = Field(
        default=1.5,
        ge=1,
        description="Candidate p99 (one text) may be this multiple of the incumbent's...",
    )
    latency_budget_ms: float | None = Field(
        default=None,
        gt=0,
        description="...or under this absolute p99 budget; unset: the architecture's (5 ms for "
        "the bag of n-grams and the transformer, 25 ms for the encoder).",
    )


class LearningRecoverySettings(_Section):
    """[learning] fields of what follows a decay: follow-up retrains, and the canary that
    watches a swap and rolls it back."""

    followup_labels: int = Field(
        default=1500,
        ge=0,
        description="After a decay, retrain each time this many new labels arrived since the "
        "last fine-tune ended, until followup_patience rejections in a row or "
        "max_followups (recovery); 0 turns follow-ups off.",
    )
    max_followups: int = Field(
        default=6, ge=0, description="Most follow-up retrains after one decay."
    )
    followup_patience: int = Field(
        default=2,
        ge=1,
        description="Follow-ups stop after this many consecutive gate rejections (nothing left "
        "to gain).",
    )
    followup_quiet_s: float = Field(
        default=60.0,
        ge=0,
        description="After a decay, when labels stop arriving for this long and at least a "
        "quarter of followup_labels came since the last fine-tune took its "
        "data, retrain once more so the episode's last labels are learned; 0 "
        "turns it off.",
    )
    canary_labels: int = Field(
        default=300,
        ge=0,
        description="Labelled outcomes watched after a swap; 0 turns the canary off.",
    )
    canary_margin: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Roll back when the new model's canary accuracy is this much below the "
        "previous model's last accuracy.",
    )


class LearningSettings(
    LearningRecoverySettings,
    LearningGateSettings,
    LearningOptimiserSettings,
    LearningRunSettings,
    LearningDataSettings,
):
    """The [learning] section: the field groups above (one table, one env prefix
    DRIFTD_LEARNING__), and whether and on which replica learning runs. The groups are listed
    last-first because pydantic collects fields base by base in reverse MRO order."""

    enabled: bool = Field(
        default=True,
        description="Fine-tune when decay is confirmed (or on a manual trigger); off: detect "
        "and report only.",
    )
    role: Literal["auto", "trainer", "follower"] = Field(
        default="auto",
        description='Which replica of the consumer group fine-tunes: "auto" is the one '
        "that owns partition 0 of the input topic (it moves on failover; a "
        'single replica always owns it), "trainer" always, "follower" never. A '
        "replica that is not the trainer forwards its decay decisions and "
        "labelled examples on topics.quality.",
    )


class LabelingSettings(_Section):
    enabled: bool = Field(
        default=False,
        description="Publish labelling requests for the most uncertain predictions on "
        "topics.labeling_requests (`driftd labels export | import` take them to "
        "Label Studio and back).",
    )
    strategy: StrategyName = Field(
        default="margin",
        description="Uncertainty score of a prediction: least_confidence (1 - p1), margin (1 - "
        "(p1 - p2)) or entropy (normalised, over the top-k); random (a hash of the "
        "event id) is the baseline they are measured against.",
    )
    budget_per_hour: int = Field(
        default=100,
        ge=0,
        description="Most labelling requests an hour (a token bucket holding a sixth of it, so "
        "the hour cannot go at once); 0 requests nothing.",
    )
    min_score: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="A prediction is requested only with at least this uncertainty score, and "
        "at least the `percentile` of the last `window` scores.",
    )
    percentile: float = Field(
        default=80.0,
        ge=0,
        lt=100,
        description="Running percentile of the last `window` scores a prediction must "
        "reach to be requested: 80 requests about a fifth of the predictions. "
        "Lower it to request more than annotators label, so they work the "
        "queue most uncertain first (`driftd labels export` orders it so).",
    )
    diversity_threshold: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="Estimated Jaccard similarity of word 3-shingles (MinHash) with one of the "
        "last `window` requested texts at or above which a text is a near "
        "duplicate and not requested; 0 turns the guard off.",
    )
    window: int = Field(
        default=500,
        ge=1,
        description="Recent scores the percentile is taken over, and recent requested texts "
        "the diversity guard compares with.",
    )


class ReplaySettings(_Section):
    dataset: str = Field(
        default="clinc150",
        description="Shipped dataset the demo (and driftd replay without --file) replays: "
        "clinc150, banking77, snips, or another name in streams.datasets.DATASETS.",
    )
    data_dir: Path | None = Field(
        default=None, description="Where the datasets are; unset uses the copy shipped in data/."
    )
    rate: float = Field(
        default=800.0, ge=0, description="Events per second; 0 means as fast as possible."
    )
    limit: int = Field(
        default=30000, ge=0, description="Utterances to send; 0 means the whole split."
    )
    label_fraction: float = Field(
        default=0.5, ge=0, le=1, description="Share of utterances that later get a label event."
    )
    label_delay: int = Field(
        default=200, ge=0, description="A label is sent this many utterances after its utterance."
    )
    schedule: str = Field(
        default="0=banking,credit_cards,kitchen_and_dining,home,auto_and_commute;3000=*",
        description="Drift schedule: <utterance index>=<domains or intents, comma separated, * "
        "for all>;...",
    )
    seed: int = Field(default=7, description="Seed of the replay order.")

    @field_validator("dataset")
    @classmethod
    def _dataset_is_shipped(cls, name: str) -> str:
        return _shipped_dataset(name)


class Settings(BaseSettings):
    """All of driftd's settings. Sections mirror config.toml."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        validate_default=True,
    )

    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    tiers: TierSettings = Field(default_factory=TierSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    learning: LearningSettings = Field(default_factory=LearningSettings)
    labeling: LabelingSettings = Field(default_factory=LabelingSettings)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)

    @property
    def warm_path(self) -> Path:
        return self.daemon.data_dir / "warm.sqlite3"

    @property
    def embedding_cache_dir(self) -> Path:
        # a frozen encoder's sentence embeddings (models/embedding_cache.py)
        return self.daemon.data_dir / "embeddings"

    @property
    def registry_dir(self) -> Path:
        return self.models.registry_dir or self.daemon.data_dir / "registry"

    @property
    def cold_url(self) -> str:
        return self.tiers.cold_url or str(self.daemon.data_dir / "cold")


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "<root>"
        value = error.get("input")
        if isinstance(value, dict):
            value = "<table>"
        elif "password" in key or "token" in key or "salt" in key:
            value = "<secret>"
        if error["type"] == "extra_forbidden":
            # its value may be a misplaced secret
            lines.append(f"{key}: unknown setting; see config.toml for the valid keys")
            continue
        env = ENV_PREFIX + ENV_NESTED_DELIMITER.join(
            str(p).upper() for p in error["loc"] if not isinstance(p, int)
        )
        lines.append(
            f"{key} = {value!r} is invalid: "
            f"{error['msg'][0].lower()}{error['msg'][1:]} (config.toml key {key}, "
            f"env {env})"
        )
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (TOML; optional), then
    environment variables, then ``overrides`` (highest)."""
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    try:
        loaded = _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
    # an environment variable that is not valid JSON for a table/list setting
    except SettingsError as exc:
        raise ConfigError(f"invalid environment variable: {exc}") from None
    except ValueError as exc:  # a TOML syntax error
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return loaded
