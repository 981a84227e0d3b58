"""Serving against real ONNX Runtime sessions of real tiny models:
predictions, every way a version is rejected, and hot swaps under
concurrent load with no failed request and no model closed while in use."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from models.classifier import ClassifierConfig
from models.export import SERVED_MODEL, SERVED_WEIGHTS, build_version_files
from models.featurize import HashingFeaturizer
from models.probe import decode_probe, encode_probe
from models.registry import Registry
from models.serving import _ROWS_PER_RUN as ROWS_PER_RUN
from models.serving import LoadedModel, ModelRejected, ModelServer, NoModel, Prediction
from models.train import TrainSettings, train_classifier
from tests.toy_intents import examples

PROBE = [
    "hello friend",
    "where is my parcel",
    "refund the phone please",
    "cancel my order",
    "",
    "upgrade the plan now",
    "bye for now",
    "track the package",
    "i want my money back",
    "stop the order",
    "good morning",
    "see you later",
]  # more than the 8 a load featurises: the rest are checked through their stored ids


def version_files(intents: list[str], seed: int) -> dict[str, bytes]:
    texts, labels = examples(intents, 200, seed)
    result = train_classifier(
        texts,
        labels,
        featurizer=HashingFeaturizer(buckets=4096),
        config=ClassifierConfig(buckets=4096, dim=16, hidden=32),
        # token dropout: a toy needs more steps
        settings=TrainSettings(epochs=60, batch_size=64, seed=seed),
    )
    files, _ = build_version_files(result.model, result.featurizer, result.labels, PROBE)
    return files


@pytest.fixture(scope="module")
def builds() -> list[dict[str, bytes]]:
    """Three different models: two seeds over five intents, and a sixth intent added."""
    five = ["greet", "bye", "refund", "track", "cancel"]
    return [version_files(five, 0), version_files(five, 1), version_files([*five, "upgrade"], 2)]


@pytest.fixture
def reg(tmp_path: Path, builds: list[dict[str, bytes]]) -> Registry:
    registry = Registry(tmp_path / "registry")
    parent = None
    for files in builds:
        parent = registry.publish(files, parent=parent, info={}).version
    return registry


def rewrite(reg: Registry, version: str, name: str, data: bytes, *, fix_manifest: bool) -> None:
    """Replace a file; with ``fix_manifest`` also record its
    new hash, so only the loader's own checks can catch it."""
    reg.path(version, name).write_bytes(data)
    if fix_manifest:
        path = reg.root / version / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        path.write_text(json.dumps(manifest))
        reg.verify(version)


def rejected(reg: Registry, version: str, *needles: str) -> str:
    with pytest.raises(ModelRejected) as caught:
        LoadedModel.load(reg, version)
    message = str(caught.value)
    assert caught.value.version == version and version in message
    for needle in needles:
        assert needle in message
    return message


# --- predictions ---------------------------------------------------------------------------------


def test_predictions(reg: Registry) -> None:
    model = LoadedModel.load(reg, "v000001")
    assert model.version == "v000001" and model.labels == [
        "bye",
        "cancel",
        "greet",
        "refund",
        "track",
    ]
    texts = [
        "hi there, good morning",
        "where is my laptop",
        "refund the shoes please",
        "cancel my book order",
        "",
    ]
    batch = model.predict(texts, top_k=3)
    assert len(batch) == len(texts)
    for p in batch:
        assert isinstance(p, Prediction) and p.model_version == "v000001"
        assert len(p.top_k) == 3 and p.top_k[0] == (p.intent, p.confidence)
        probs = [c for _, c in p.top_k]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
        assert {n for n, _ in p.top_k} <= set(model.labels)
        d = p.to_dict()
        assert d["intent"] == p.intent and d["model_version"] == "v000001" and len(d["top_k"]) == 3
        json.dumps(d)
    assert [p.intent for p in batch[:4]] == ["greet", "track", "refund", "cancel"]
    full = model.predict(texts[:1], top_k=99)[0]  # clamped to the label count: all probabilities
    assert len(full.top_k) == 5 and sum(c for _, c in full.top_k) == pytest.approx(1.0)
    # batch and single agree (INT8 activations are quantised per batch)
    for text, p in zip(texts, batch, strict=False):
        single = model.predict([text], top_k=3)[0]
        assert single.intent == p.intent and single.confidence == pytest.approx(
            p.confidence, abs=0.05
        )
    assert model.predict([]) == []
    with pytest.raises(ValueError):
        model.predict(texts, top_k=0)
    model.close()
    assert model.closed and model.active_at_close == 0


def test_a_batch_larger_than_one_session_call_is_predicted_in_order_call_by_call(
    reg: Registry,
) -> None:
    # several ONNX Runtime calls
    texts, _ = examples(["greet", "bye", "refund", "track", "cancel"], 200, 7)
    # lengths differ between calls
    texts = [f"{t} {'and more words ' * (i % 9)}" for i, t in enumerate(texts)]
    model = LoadedModel.load(reg, "v000001")
    try:
        batch = model.predict(texts)
        assert len(batch) == len(texts) > ROWS_PER_RUN
        chunked = [
            p
            for i in range(0, len(texts), ROWS_PER_RUN)
            for p in model.predict(texts[i : i + ROWS_PER_RUN])
        ]
        assert [(p.intent, p.confidence) for p in batch] == [
            (p.intent, p.confidence) for p in chunked
        ]
    finally:
        model.close()


def test_versions_differ(reg: Registry) -> None:
    a, b, c = (LoadedModel.load(reg, v) for v in ("v000001", "v000002", "v000003"))
    assert c.labels[-1] == "upgrade" and len(c.labels) == 6
    text = ["hello there friend"]
    assert a.predict(text)[0].confidence != b.predict(text)[0].confidence


def test_predict_before_load_raises_no_model() -> None:
    server = ModelServer()
    assert server.version is None and not server.ready and server.history == []
    with pytest.raises(NoModel):
        server.predict(["hello"])


# --- rejection -----------------------------------------------------------------------------------


def test_truncated_model_rejected(reg: Registry) -> None:
    data = reg.path("v000001", SERVED_MODEL).read_bytes()
    rewrite(reg, "v000001", SERVED_MODEL, data[: len(data) // 2], fix_manifest=False)
    rejected(reg, "v000001", SERVED_MODEL, "bytes")
    # hashes agree: ORT must refuse it
    rewrite(reg, "v000001", SERVED_MODEL, data[: len(data) // 2], fix_manifest=True)
    rejected(reg, "v000001", SERVED_MODEL, "does not load")


def test_damaged_weights_rejected(reg: Registry) -> None:
    data = reg.path("v000001", SERVED_WEIGHTS).read_bytes()
    rewrite(reg, "v000001", SERVED_WEIGHTS, data[:-64], fix_manifest=False)
    rejected(reg, "v000001", SERVED_WEIGHTS, "bytes")
    # hashes agree: the loader must see it is short
    rewrite(reg, "v000001", SERVED_WEIGHTS, data[:-64], fix_manifest=True)
    rejected(
        reg, "v000001", SERVED_MODEL, "does not load", "embedding.weight_quantized", "does not fit"
    )
    rewrite(
        reg,
        "v000002",
        SERVED_WEIGHTS,
        bytes(b ^ 0x55 for b in reg.path("v000002", SERVED_WEIGHTS).read_bytes()),
        fix_manifest=True,
    )
    rejected(reg, "v000002", "probe parity failed")  # the right size, the wrong numbers


def test_the_served_weights_are_mapped_from_the_registry_and_unmapped_when_retired(
    reg: Registry,
) -> None:
    weights = str(reg.path("v000001", SERVED_WEIGHTS))
    model = LoadedModel.load(reg, "v000001")
    # ONNX Runtime maps the file: no copy in this process
    assert weights in Path("/proc/self/maps").read_text()
    model.close()
    assert weights not in Path("/proc/self/maps").read_text()


def test_weights_replaced_between_hashing_and_mapping_are_refused(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loader hashes the weights file, then ONNX Runtime
    maps it by name: a writer in between is caught."""
    import models.serving as serving

    build = serving.cpu_session

    def replace_then_build(graph: bytes, threads: int = 1, weights: Path | None = None):
        assert weights is not None
        twin = weights.with_name("twin")
        twin.write_bytes(weights.read_bytes())  # the same bytes even: another file all the same
        os.replace(twin, weights)
        return build(graph, threads=threads, weights=weights)

    monkeypatch.setattr(serving, "cpu_session", replace_then_build)
    rejected(reg, "v000001", SERVED_WEIGHTS, "changed while it was loading")


def test_a_version_from_before_the_weights_split_still_loads(
    reg: Registry, builds: list[dict[str, bytes]], tmp_path: Path
) -> None:
    import onnx

    files = dict(builds[0])
    for name in (SERVED_MODEL, SERVED_WEIGHTS):
        (tmp_path / name).write_bytes(files[name])
    # the weights read back in
    files[SERVED_MODEL] = onnx.load(str(tmp_path / SERVED_MODEL)).SerializeToString()
    del files[SERVED_WEIGHTS]
    old = reg.publish(files, parent=None, info={}).version
    assert SERVED_WEIGHTS not in reg.verify(old).files
    texts = ["where is my parcel", "refund the phone please", "bye now"]
    assert LoadedModel.load(reg, old).predict(texts) == [
        Prediction(p.intent, p.confidence, p.top_k, old)
        for p in LoadedModel.load(reg, "v000001").predict(texts)
    ]


def test_flipped_label_byte_rejected(reg: Registry) -> None:
    data = bytearray(reg.path("v000002", "labels.json").read_bytes())
    data[3] ^= 0x01
    rewrite(reg, "v000002", "labels.json", bytes(data), fix_manifest=False)
    rejected(reg, "v000002", "labels.json", "sha256")


def test_tampered_probe_rejected(reg: Registry) -> None:
    texts, logits, ids = decode_probe(reg.path("v000001", "probe.json").read_bytes())
    logits[2][1] += 0.01
    rewrite(reg, "v000001", "probe.json", encode_probe(texts, logits, ids), fix_manifest=True)
    rejected(reg, "v000001", "probe parity failed")
    logits[2][1] = float("nan")
    rewrite(reg, "v000001", "probe.json", encode_probe(texts, logits, ids), fix_manifest=True)
    rejected(reg, "v000001", "probe parity failed")


def test_stored_probe_ids_are_checked_against_the_featuriser_and_the_model(reg: Registry) -> None:
    texts, logits, ids = decode_probe(reg.path("v000002", "probe.json").read_bytes())
    assert len(texts) == 12 and ids is not None and ids.shape[0] == 12
    # Within the texts a load featurises: the featuriser disagrees with the stored ids.
    wrong = ids.copy()
    wrong[1, 0] = wrong[1, 0] % 4095 + 1
    rewrite(reg, "v000002", "probe.json", encode_probe(texts, logits, wrong), fix_manifest=True)
    rejected(reg, "v000002", "featuriser does not give the ids stored in probe.json")
    # Beyond them: those ids are not what the logits were computed from, so parity fails.
    wrong = ids.copy()
    row = next(i for i in range(8, 12) if wrong[i, 0])
    wrong[row, 0] = wrong[row, 0] % 4095 + 1
    rewrite(reg, "v000002", "probe.json", encode_probe(texts, logits, wrong), fix_manifest=True)
    rejected(reg, "v000002", "probe parity failed")
    # A probe without ids (written before they were stored) featurises every text and still loads.
    rewrite(reg, "v000002", "probe.json", encode_probe(texts, logits), fix_manifest=True)
    LoadedModel.load(reg, "v000002").close()


def test_probe_logits_are_exact_float32_and_the_list_format_still_loads(reg: Registry) -> None:
    texts, logits, _ = decode_probe(reg.path("v000001", "probe.json").read_bytes())
    model = LoadedModel.load(reg, "v000001")
    try:
        # bit for bit: nothing rounded on the way
        assert np.array_equal(model._logits(texts), logits.astype(np.float32))
    finally:
        model.close()
    # A version written before the binary format (logits as JSON numbers) still serves.
    rewrite(
        reg,
        "v000001",
        "probe.json",
        json.dumps({"texts": texts, "logits": logits.tolist()}).encode(),
        fix_manifest=True,
    )
    LoadedModel.load(reg, "v000001").close()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p["logits"].update(base64="not base64!"), "base64"),
        (lambda p: p["logits"].update(shape=[2, 3]), "bytes"),
        (lambda p: p["logits"].update(dtype="float16"), "dtype"),
        (lambda p: p["logits"].update(shape="6x6"), "shape"),
        (lambda p: p.update(texts=[]), "no texts"),
        (lambda p: p.pop("logits"), "not {texts, logits}"),
        (lambda p: p["ids"].update(dtype="int64-le"), "ids dtype"),
        (lambda p: p["ids"].update(shape=[3, 1]), "ids hold"),
    ],
)
def test_malformed_probe_rejected_with_its_reason(reg: Registry, damage, reason: str) -> None:
    probe = json.loads(reg.path("v000001", "probe.json").read_bytes())
    damage(probe)
    rewrite(reg, "v000001", "probe.json", json.dumps(probe).encode(), fix_manifest=True)
    rejected(reg, "v000001", "probe.json", reason)


def test_label_count_mismatch_rejected(reg: Registry) -> None:
    labels = json.loads(reg.path("v000001", "labels.json").read_bytes())
    rewrite(
        reg, "v000001", "labels.json", json.dumps([*labels, "extra"]).encode(), fix_manifest=True
    )
    rejected(reg, "v000001", "shape", "6 labels")
    texts, logits, _ids = decode_probe(reg.path("v000002", "probe.json").read_bytes())
    rewrite(reg, "v000002", "probe.json", encode_probe(texts, logits[:, :-1]), fix_manifest=True)
    rejected(reg, "v000002", "probe.json", "shape")


def test_missing_version_rejected(reg: Registry) -> None:
    rejected(reg, "v000009", "no version")


def test_corrupt_version_keeps_previous_serving(reg: Registry) -> None:
    server = ModelServer()
    assert server.load_and_swap(reg, "v000001") is None
    assert server.version == "v000001" and server.ready
    data = reg.path("v000002", SERVED_MODEL).read_bytes()
    rewrite(reg, "v000002", SERVED_MODEL, data[:-10], fix_manifest=False)
    with pytest.raises(ModelRejected, match=SERVED_MODEL):
        server.load_and_swap(reg, "v000002")
    assert server.version == "v000001" and [v for _, v in server.history] == ["v000001"]
    assert server.predict(["where is my parcel"])[0].model_version == "v000001"
    assert server.load_and_swap(reg, "v000003") == "v000001"
    assert server.predict(["where is my parcel"])[0].model_version == "v000003"
    assert server.drain(timeout=5)
    assert server.close(timeout=5)
    with pytest.raises(NoModel):
        server.predict(["hello"])


def test_on_retired_runs_once_per_replaced_model_after_close_and_a_failing_one_changes_nothing(
    reg: Registry,
) -> None:
    seen: list[tuple[str, bool]] = []

    def on_retired() -> None:
        old = server.history[-2][1]
        seen.append((old, next(m for m in retired if m.version == old).closed))
        raise RuntimeError("housekeeping failed")  # logged; the retirement still completes

    server = ModelServer(on_retired=on_retired)
    retired: list[LoadedModel] = []
    for version in ("v000001", "v000002", "v000003"):
        current = server.model
        if current is not None:
            retired.append(current)
        server.load_and_swap(reg, version)
        assert server.drain(timeout=5)
    assert seen == [("v000001", True), ("v000002", True)]
    assert server.predict(["where is my parcel"])[0].model_version == "v000003"
    server.close(timeout=5)


# --- hot swap under load
# ---------------------------------------------------------------------------


def live_at_some_instant(
    history: list[tuple[float, str]], version: str, start: float, end: float
) -> bool:
    """Was ``version`` live at some instant of [start,
    end]? Entry i is live from its time to entry i+1's."""
    for i, (since, v) in enumerate(history):
        until = history[i + 1][0] if i + 1 < len(history) else float("inf")
        if v == version and since <= end and until >= start:
            return True
    return False


def test_swaps_under_concurrent_load(reg: Registry) -> None:
    server = ModelServer()
    server.load_and_swap(reg, "v000001")
    models = [server.model]
    stop = threading.Event()
    records: list[list[tuple[float, float, list[str]]]] = [[] for _ in range(8)]
    errors: list[BaseException] = []
    texts = [
        "hello there friend",
        "where is my phone",
        "refund the book please",
        "cancel my account order",
        "upgrade my plan",
    ]

    def load(slot: int) -> None:
        rng = random.Random(slot)
        try:
            while not stop.is_set():
                batch = rng.sample(texts, rng.randint(1, len(texts)))
                start = time.monotonic()
                out = server.predict(batch, top_k=2)
                end = time.monotonic()
                assert len(out) == len(batch)
                records[slot].append((start, end, [p.model_version for p in out]))
        except BaseException as exc:  # noqa: BLE001 - every failure is the test's business
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        versions = ["v000002", "v000003", "v000001"]
        for i in range(54):
            expected_previous = server.version
            assert server.load_and_swap(reg, versions[i % 3]) == expected_previous
            models.append(server.model)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert errors == []
    assert server.drain(timeout=10)

    history = server.history
    assert len(history) == 55 and [v for _, v in history[1:]] == (versions * 18)
    seen: set[str] = set()
    total = 0
    for rows in records:
        assert rows, "every load thread got requests through"
        for start, end, answered in rows:
            assert len(set(answered)) == 1  # one request, one model
            assert live_at_some_instant(history, answered[0], start, end), (answered[0], start, end)
            seen.add(answered[0])
            total += 1
    assert seen == {"v000001", "v000002", "v000003"} and total > 55
    assert len({id(m) for m in models}) == 55
    for old in models[:-1]:  # every replaced model was closed, and only once nothing was using it
        assert old.closed and old.active_at_close == 0 and old.in_flight == 0
    assert not models[-1].closed and server.version == "v000001"


def test_predict_from_event_loop_during_swaps(reg: Registry) -> None:
    """The daemon calls predict from its asyncio loop while loads run in worker threads."""
    server = ModelServer()
    server.load_and_swap(reg, "v000001")

    async def main() -> set[str]:
        answered: set[str] = set()
        swaps = asyncio.gather(
            *(
                asyncio.to_thread(server.load_and_swap, reg, v)
                for v in ("v000002", "v000003", "v000002")
            )
        )
        while not swaps.done():
            answered |= {p.model_version for p in server.predict(["where is my parcel", "hi"])}
            await asyncio.sleep(0)
        await swaps
        return answered

    answered = asyncio.run(main())
    assert (
        answered
        and answered <= {"v000001", "v000002", "v000003"}
        and server.version in {"v000002", "v000003"}
    )
    assert server.drain(timeout=5) and len(server.history) == 4


def test_serving_collector_reports_only_the_live_version(reg: Registry) -> None:
    from prometheus_client import CollectorRegistry

    from daemon.serving_metrics import ServingCollector

    server = ModelServer()
    metrics = CollectorRegistry()
    metrics.register(ServingCollector(server))
    assert metrics.get_sample_value("driftd_serving_model_created_timestamp_seconds") == 0
    first, second = reg.versions()[:2]
    for version in (first, second):
        server.load_and_swap(reg, version)
    info = [
        s for m in metrics.collect() for s in m.samples if s.name == "driftd_serving_model_info"
    ]
    assert [(s.labels, s.value) for s in info] == [({"version": second}, 1.0)]
    assert (
        metrics.get_sample_value("driftd_serving_model_created_timestamp_seconds")
        == reg.verify(second).created_at
    )
    assert metrics.get_sample_value("driftd_serving_model_switches_total") == 2
    server.close(timeout=10)
