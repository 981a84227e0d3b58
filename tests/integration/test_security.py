"""Security of a real daemon on the real broker: https only on the HTTP
endpoint (and `driftd status` over it), and personal data redacted before
anything is stored (warm SQLite, cold Parquet), published (predictions)
or logged, while the DLQ keeps malformed records byte for byte."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.classifier import ClassifierConfig
from models.export import build_version_files
from models.featurize import HashingFeaturizer
from models.registry import Registry
from models.train import TrainSettings, train_classifier
from tests.integration.harness import REPO, DaemonProcess, produce, read_topic, unique
from tests.tlscerts import self_signed
from tests.toy_intents import examples

TOKEN = "security-test-token-0123456789"
EMAILS = ["alice.smith@example.com", "jörg.müller@beispiel.de"]
PHONES = ["+44 20 7946 0958", "(555) 123-4567", "07911 123456"]
SECRETS = [s.encode() for s in EMAILS + PHONES] + [b"7946 0958", b"123-4567", b"911 123456"]


class TlsDaemon(DaemonProcess):
    """The harness's daemon, reached over https with its own certificate as the CA."""

    def __init__(self, *args: Any, cert: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # chain and host name (127.0.0.1 is in the SAN)
        self.context = ssl.create_default_context(cafile=str(cert))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.web_port}"

    def get(self, path: str, **kwargs: Any) -> Any:
        request = urllib.request.Request(self.url + path, **kwargs)
        with urllib.request.urlopen(request, timeout=5, context=self.context) as response:
            return response.read()

    def metrics(self) -> dict[str, float]:
        samples = {}
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def readiness(self) -> dict[str, bool]:
        try:
            return json.loads(self.get("/readyz"))["checks"]
        except urllib.error.HTTPError as not_ready:
            return json.load(not_ready)["checks"]


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    texts, intents = examples(["greet", "bye", "refund", "track", "cancel"], 200, 0)
    result = train_classifier(
        texts,
        intents,
        featurizer=HashingFeaturizer(buckets=4096),
        config=ClassifierConfig(buckets=4096, dim=16, hidden=32),
        settings=TrainSettings(epochs=30, seed=0),
    )
    files, _ = build_version_files(result.model, result.featurizer, result.labels, texts[:16])
    registry = Registry(root)
    registry.set_current(registry.publish(files, parent=None, info={}).version)
    return root


@pytest.fixture(scope="module")
def daemon(broker, tmp_path_factory, registry_dir):
    work = tmp_path_factory.mktemp("security")
    cert, key = self_signed(work / "tls")
    proc = TlsDaemon(
        broker.bootstrap,
        work / "state",
        unique("secure"),
        cert=cert,
        extra_env={
            "DRIFTD_WEB__TLS_CERTFILE": str(cert),
            "DRIFTD_WEB__TLS_KEYFILE": str(key),
            "DRIFTD_WEB__ADMIN_TOKEN": TOKEN,
            "DRIFTD_MODELS__REGISTRY_DIR": str(registry_dir),
            # normal events move to cold within seconds; high-priority ones stay in warm
            "DRIFTD_TIERS__WARM_RETENTION_S": "1",
            "DRIFTD_TIERS__MAINTENANCE_INTERVAL_S": "0.5",
            "DRIFTD_TIERS__RULES": '[{"priority": "high", "warm_retention_s": 3600}]',
        },
    ).start()
    try:
        proc.wait_ready(model=True)
        yield proc
        code, _ = proc.terminate()
        assert code == 0, proc.log_tail()
    finally:
        proc.stop_quietly()


def _cli(
    daemon: DaemonProcess, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=env or daemon.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_https_only_endpoint_and_the_cli_over_tls(daemon: TlsDaemon) -> None:
    assert json.loads(daemon.get("/healthz")) == {"status": "ok"}
    prediction = json.loads(
        daemon.get("/v1/predict", data=b'{"text": "where is my parcel"}', method="POST")
    )
    assert prediction["intent"] == "track" and prediction["model_version"] == "v000001"

    with pytest.raises((urllib.error.URLError, OSError)):  # plain http on the same port: no answer
        urllib.request.urlopen(f"http://127.0.0.1:{daemon.web_port}/healthz", timeout=5)
    # a client that does not trust the certificate
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(
            daemon.url + "/healthz", timeout=5, context=ssl.create_default_context()
        )
    assert f"HTTP endpoint on https://127.0.0.1:{daemon.web_port}" in daemon.log_path.read_text()

    # the CLI reads the same settings: https, the certificate pinned
    result = _cli(daemon, "status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"]["version"] == "v000001"
    plain = {k: v for k, v in daemon.env.items() if not k.startswith("DRIFTD_WEB__TLS_")}
    # a CLI configured for http gets a message, not a traceback
    result = _cli(daemon, "status", env=plain)
    assert result.returncode == 1 and "no daemon answers on http://127.0.0.1" in result.stderr, (
        result.stderr
    )
    assert _cli(daemon, "healthcheck").returncode == 0  # the image's HEALTHCHECK follows TLS
    assert _cli(daemon, "healthcheck", env=plain).returncode == 1


def _utterance(i: int, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"pii-{i}",
        "type": "utterance",
        "conversation_id": f"c{i % 7}",
        "turn": 0,
        "ts": 1_700_000_000.0 + i,
        "text": text,
        **extra,
    }


def test_personal_data_is_redacted_before_storage_and_publication_and_the_dlq_keeps_bytes(
    broker, daemon: TlsDaemon
) -> None:
    events = []
    for i in range(40):
        email, phone = EMAILS[i % len(EMAILS)], PHONES[i % len(PHONES)]
        events.append(
            _utterance(
                i,
                f"where is my parcel, mail {email} or call {phone}; order 12345",
                priority="high" if i % 2 else "normal",
                user_id=email,
                meta={"contact": {"email": email, "note": "order 12345"}},
                crm_phone=phone,
            )
        )
    clean = [_utterance(100 + i, f"refund the shoes please, order {10000 + i}") for i in range(10)]
    malformed = [
        f'{{"type": "utterance", "text": "call {p} or mail {e}"'.encode()
        for e, p in zip(EMAILS * 2, PHONES, strict=False)
    ]
    asyncio.run(
        produce(
            broker.bootstrap,
            daemon.topic,
            [json.dumps(e).encode() for e in events + clean] + malformed,
        )
    )

    stored_count = len(events) + len(clean)
    normal = sum(1 for e in events + clean if e.get("priority", "normal") == "normal")
    daemon.wait_stored(stored_count)
    daemon.wait_until(
        lambda: daemon.metric("driftd_tier_events{tier=cold}") == normal,
        60,
        f"{normal} events demoted to cold",
    )

    # warm SQLite and cold Parquet, column by column: text, payload (the event JSON) and user_ref
    db = sqlite3.connect(daemon.data_dir / "warm.sqlite3")
    try:
        rows = [
            dict(zip(("event_id", "text", "payload", "user_ref"), r, strict=False))
            for r in db.execute("SELECT event_id, text, payload, user_ref FROM events")
        ]
        cold_files = [r[0] for r in db.execute("SELECT path FROM cold_files")]
    finally:
        db.close()
    assert cold_files
    for path in cold_files:
        rows += pq.read_table(path, columns=["event_id", "text", "payload", "user_ref"]).to_pylist()
    assert sorted(r["event_id"] for r in rows) == sorted(e["event_id"] for e in events + clean)
    originals = {e["event_id"]: e for e in events + clean}
    for row in rows:
        original = originals[row["event_id"]]
        payload = json.loads(row["payload"])
        if original in clean:
            # nothing to redact: untouched
            assert row["text"] == original["text"] == payload["text"]
            continue
        assert (
            row["text"]
            == "where is my parcel, mail <email> or call <phone>; order 12345"
            == payload["text"]
        )
        assert (
            payload["meta"] == {"contact": {"email": "<email>", "note": "order 12345"}}
            and payload["crm_phone"] == "<phone>"
        )
        assert payload["user_id"] == row["user_ref"] and "@" not in row["user_ref"]  # pseudonymised
        for secret in SECRETS:
            assert secret not in row["payload"] and secret.decode() not in row["text"]

    # predictions: one per utterance, none carrying the personal data
    predictions = asyncio.run(
        read_topic(broker.bootstrap, f"{daemon.topic}.predictions", stored_count)
    )
    assert sorted(json.loads(r.value)["event_id"] for r in predictions) == sorted(originals)
    for record in predictions:
        assert not any(secret in record.value for secret in SECRETS)

    # the DLQ: malformed records, byte for byte (operators need what the producer really sent)
    dead = asyncio.run(read_topic(broker.bootstrap, daemon.dlq, len(malformed)))
    assert sorted(r.value for r in dead) == sorted(malformed)

    # the log: never the personal data (nor the admin token)
    log = daemon.log_path.read_bytes()
    assert not any(secret in log for secret in SECRETS) and TOKEN.encode() not in log
