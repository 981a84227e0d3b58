"""The served model as a version stores it: optimised at export, and
split into the graph and its large initializers (ONNX external data).

Real ONNX Runtime sessions on a real exported and quantised model: the stored form
gives the logits of the plain INT8 model, loads with optimisations off only when
marked as optimised, is a standard external-data model on disk, and a weights file
that does not match the graph is refused with a message naming the initializer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.classifier import ClassifierConfig
from models.export import (
    SERVED_MODEL,
    SERVED_WEIGHTS,
    build_version_files,
    cpu_session,
    export_onnx,
    externalize_weights,
    quantize_int8,
)
from models.featurize import HashingFeaturizer
from models.train import TrainSettings, train_classifier
from tests.toy_intents import examples

TEXTS = [
    "hello friend",
    "where is my parcel",
    "refund the phone please",
    "cancel my order",
    "",
    "upgrade the plan now",
]


@pytest.fixture(scope="module")
def exported() -> dict:
    texts, labels = examples(["greet", "bye", "refund", "track", "cancel"], 100, 0)
    result = train_classifier(
        texts,
        labels,
        featurizer=HashingFeaturizer(buckets=8192),
        config=ClassifierConfig(buckets=8192, dim=16, hidden=32),
        settings=TrainSettings(epochs=5),
    )
    files, _ = build_version_files(result.model, result.featurizer, result.labels, TEXTS)
    # the same model, neither optimised nor split
    int8, _ = quantize_int8(export_onnx(result.model))
    return {"files": files, "int8": int8, "ids": result.featurizer.batch(TEXTS + texts[:50])}


def whole_model(files: dict[str, bytes], directory: Path) -> bytes:
    """The served model as one file, the way versions were stored before the split."""
    for name in (SERVED_MODEL, SERVED_WEIGHTS):
        (directory / name).write_bytes(files[name])
    # onnx.load reads the external data in
    return onnx.load(str(directory / SERVED_MODEL)).SerializeToString()


def logits(session, ids: np.ndarray) -> np.ndarray:
    return session.run(None, {"ids": ids})[0]


def test_the_embedding_table_leaves_the_graph_and_the_small_tensors_stay(exported: dict) -> None:
    files = exported["files"]
    graph = onnx.load_from_string(files[SERVED_MODEL])
    external = {
        t.name: {e.key: e.value for e in t.external_data}
        for t in graph.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    }
    inline = [
        t.name for t in graph.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL
    ]
    assert list(external) == ["embedding.weight_quantized"]  # 8192 x 16 int8 = 128 KiB
    assert external["embedding.weight_quantized"]["location"] == SERVED_WEIGHTS
    assert int(external["embedding.weight_quantized"]["length"]) == 8192 * 16
    # under the 64 KiB threshold
    assert "hidden.weight_quantized" in inline and "output.bias" in inline
    assert len(files[SERVED_MODEL]) < 20_000 and len(files[SERVED_WEIGHTS]) == 8192 * 16


def test_split_graph_with_its_weights_gives_the_whole_models_logits_exactly(
    exported: dict, tmp_path: Path
) -> None:
    files, ids = exported["files"], exported["ids"]
    whole = whole_model(files, tmp_path)
    split = logits(cpu_session(files[SERVED_MODEL], weights=files[SERVED_WEIGHTS]), ids)
    np.testing.assert_array_equal(split, logits(cpu_session(whole), ids))
    # On disk, the pair is a standard external-data model:
    # ONNX Runtime finds the weights beside the graph.
    np.testing.assert_array_equal(split, logits(cpu_session(tmp_path / SERVED_MODEL), ids))


def test_the_stored_model_gives_the_plain_int8_models_logits_and_loads_without_optimising_again(
    exported: dict,
) -> None:
    files, ids = exported["files"], exported["ids"]
    served = cpu_session(files[SERVED_MODEL], weights=files[SERVED_WEIGHTS])
    plain = cpu_session(exported["int8"])
    np.testing.assert_allclose(logits(served, ids), logits(plain, ids), rtol=0, atol=1e-5)
    assert (
        served.get_session_options().graph_optimization_level
        == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    assert (
        plain.get_session_options().graph_optimization_level
        == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    # Split but not marked as optimised (as externalize_weights
    # leaves it by default): optimised at load.
    graph, weights = externalize_weights(exported["int8"])
    unmarked = cpu_session(graph, weights=weights)
    assert (
        unmarked.get_session_options().graph_optimization_level
        == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    np.testing.assert_array_equal(logits(unmarked, ids), logits(plain, ids))
    nodes = {n.op_type for n in onnx.load_from_string(files[SERVED_MODEL]).graph.node}
    # the export did fuse something
    assert nodes != {n.op_type for n in onnx.load_from_string(graph).graph.node}


def test_externalizing_is_idempotent_and_aligns_every_tensor(
    exported: dict, tmp_path: Path
) -> None:
    whole = whole_model(exported["files"], tmp_path)
    # the hidden layer (16 x 32 int8) leaves too
    graph, weights = externalize_weights(whole, min_bytes=512)
    proto = onnx.load_from_string(graph)
    offsets = [
        int({e.key: e.value for e in t.external_data}["offset"])
        for t in proto.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    # a page: ONNX Runtime maps them
    assert len(offsets) >= 2 and all(offset % 4096 == 0 for offset in offsets)
    again, nothing = externalize_weights(graph, min_bytes=512)
    assert again == graph and nothing == b""
    np.testing.assert_array_equal(
        logits(cpu_session(graph, weights=weights), exported["ids"]),
        logits(cpu_session(whole), exported["ids"]),
    )


def test_weights_given_as_a_file_are_mapped_and_give_the_same_logits(
    exported: dict, tmp_path: Path
) -> None:
    files, ids = exported["files"], exported["ids"]
    path = tmp_path / SERVED_WEIGHTS
    path.write_bytes(files[SERVED_WEIGHTS])
    mapped = cpu_session(files[SERVED_MODEL], weights=path)
    np.testing.assert_array_equal(
        logits(mapped, ids),
        logits(cpu_session(files[SERVED_MODEL], weights=files[SERVED_WEIGHTS]), ids),
    )
    # marked: not optimised again
    assert (
        mapped.get_session_options().graph_optimization_level
        == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    # mapped from the file, not read into the process
    assert str(path) in Path("/proc/self/maps").read_text()
    del mapped
    assert str(path) not in Path("/proc/self/maps").read_text()  # and unmapped with the session


def test_a_weights_file_that_does_not_fit_the_graph_is_refused_by_name(
    exported: dict, tmp_path: Path
) -> None:
    files = exported["files"]
    short = tmp_path / SERVED_WEIGHTS
    short.write_bytes(files[SERVED_WEIGHTS][:131000])
    with pytest.raises(
        ValueError,
        match=r"embedding\.weight_quantized .* does not fit model\.int8\.weights: bytes "
        r"0\.\.131072 of 131000",
    ):
        cpu_session(files[SERVED_MODEL], weights=short)
    other = tmp_path / "weights.bin"
    other.write_bytes(files[SERVED_WEIGHTS])
    with pytest.raises(ValueError, match=r"named model.int8.weights, not weights.bin"):
        cpu_session(files[SERVED_MODEL], weights=other)


def test_weights_that_do_not_fit_the_graph_are_refused_by_name(exported: dict) -> None:
    files = exported["files"]
    with pytest.raises(
        ValueError,
        match=r"embedding\.weight_quantized .* does not fit model\.int8\.weights: bytes "
        r"0\.\.131072 of 131000",
    ):
        cpu_session(files[SERVED_MODEL], weights=files[SERVED_WEIGHTS][:131000])
    # no weights at all: ONNX Runtime cannot find them
    with pytest.raises(Exception, match=r"model.int8.weights"):
        cpu_session(files[SERVED_MODEL])
    with pytest.raises(TypeError, match="beside it"):
        cpu_session(Path("model.int8.onnx"), weights=files[SERVED_WEIGHTS])


def test_a_graph_pointing_at_another_file_is_refused(exported: dict) -> None:
    proto = onnx.load_from_string(exported["files"][SERVED_MODEL])
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "/etc/passwd"
    with pytest.raises(ValueError, match=r"stored in '/etc/passwd', not model.int8.weights"):
        cpu_session(proto.SerializeToString(), weights=exported["files"][SERVED_WEIGHTS])
