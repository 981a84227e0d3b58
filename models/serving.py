"""Serving one registry version and hot-swapping to the next without failing a request.

``LoadedModel.load`` is the gate between the registry and live traffic: a version is served only
after its files match the manifest, its ONNX graph loads, and it reproduces the logits recorded at
export time (the probe). That last check catches what hashes cannot: a manifest rewritten to match
damaged files, or a runtime that computes differently from the one that exported the model.

``ModelServer`` holds the live model. A request takes a reference under a lock and runs outside
it, so a swap never waits for inference and inference never waits for a load. A replaced model is
closed only once the requests that still hold it have finished (counted per model, under the same
lock), so no request ever sees a closed session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .export import SERVED_MODEL, SERVED_WEIGHTS, cpu_session
from .featurize import Featurizer, featurizer_from_json
from .probe import PROBE, Probe, decode_probe
from .registry import CorruptVersion, Manifest, Registry

__all__ = ["LoadedModel", "ModelClosed", "ModelRejected", "ModelServer", "NoModel", "Prediction"]

log = logging.getLogger(__name__)

LABELS = "labels.json"
FEATURIZER = "featurizer.json"
# Most texts in one ONNX Runtime call. A session's memory arena grows to the largest call it has
# served and keeps that memory until the session closes: one call on a 1,000-utterance ingest batch
# added about 150 MB of resident memory (the gathered embeddings of every n-gram, padded to the
# longest text), and each swap started that over, so RSS swung by hundreds of MB in a soak. Calls
# of 64 keep the arena small; per text they are also faster (less padding to the longest text).
_ROWS_PER_RUN = 64
# No warm-up runs beyond the parity probe, which is a new session's first run: measured on the
# default model, a session's first run at each traffic shape (1 or 64 texts, 16 to 256 ids) costs
# at most 0.07 ms more than its second, while warming up each of those shapes would cost ~3 ms of
# CPU and ten GIL hand-offs per swap, beside the request path. Probe texts a load featurises to
# check the featuriser still gives the ids stored at export (the rest of the probe runs on the
# stored ids): every text featurised is Python holding the GIL the request path needs.
_FEATURIZER_CHECK = 8


class ModelRejected(Exception):
    """A version that must not be served. ``reason`` says why, for logs and the operator."""

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(f"model {version} rejected: {reason}")
        self.version = version
        self.reason = reason


class NoModel(RuntimeError):
    """A prediction was asked for before any version was loaded."""


class ModelClosed(RuntimeError):
    """A prediction on a model whose session was released: a bug in whoever retired it too early."""


@dataclass(frozen=True)
class Prediction:
    """One text's answer. ``confidence`` and ``top_k`` are softmax
    probabilities, ``top_k`` highest first; ``model_version`` says
    which version answered, so a swap is visible in the output stream."""

    intent: str
    confidence: float
    top_k: list[tuple[str, float]]
    model_version: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "intent": self.intent,
            "confidence": self.confidence,
            "top_k": [{"intent": name, "confidence": p} for name, p in self.top_k],
            "model_version": self.model_version,
        }


def _softmax(logits: np.ndarray) -> np.ndarray:
    # float64: rounding in float32 can make probabilities sum to slightly more than 1.
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class LoadedModel:
    """One verified, probed version: an ONNX Runtime session
    plus the labels and featurizer it was trained with.

    Built by ``load``; thread-safe (ONNX Runtime sessions allow concurrent ``run``).
    ``close`` releases the session; a later ``predict`` raises ``ModelClosed``.
    ``active_at_close`` records how many ``predict`` calls were running at that
    moment, which must be 0 when a server retires it (tests check this).
    """

    def __init__(
        self,
        version: str,
        labels: list[str],
        featurizer: Featurizer,
        session: ort.InferenceSession,
        created_at: float | None = None,
    ) -> None:
        self.version = version
        # the manifest's publication time (Unix s): how old the served model is
        self.created_at = created_at
        self.labels = labels
        self.featurizer = featurizer
        self._session: ort.InferenceSession | None = session
        self._input = session.get_inputs()[0].name
        self._lock = threading.Lock()
        self._active = 0
        self.closed = False
        self.active_at_close: int | None = None
        # requests holding this model through a ModelServer; guarded by that server's lock
        self.in_flight = 0

    # --- loading -------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, registry: Registry, version: str, *, threads: int = 1, probe_atol: float = 1e-4
    ) -> LoadedModel:
        """Verify, load and parity-check ``version``; raises
        ``ModelRejected`` saying why it cannot serve.

        Blocking (hashing, session build, probe run): run it off the request path.
        ``verify`` checks the manifest and every file's size; the files served are
        hashed once, as they are read, so a file changed after the manifest was
        written is caught. The training-only files (model.pt, the FP32 model) are
        left to whoever uses them: hashing them on every swap would double its cost.

        The weights file is hashed in chunks and then mapped by ONNX Runtime, not read
        into this process: copying 4 MB twice (into a bytes object, then into the session)
        on every swap showed in the request path's tail (docs/architecture.md, "Hot swaps
        under load"). A file replaced or rewritten between the hash and the mapping is
        caught by comparing its identity (device, inode, size, mtime) before and after.
        """
        manifest = _verified_manifest(registry, version)

        def read(name: str) -> bytes:
            return _read_hashed(registry, version, manifest, name)

        labels = _parse_labels(version, read(LABELS))
        featurizer = _parse_featurizer(version, read(FEATURIZER))
        probe = _parse_probe(version, read(PROBE))
        session = _served_session(registry, version, manifest, read(SERVED_MODEL), threads)
        model = cls(version, labels, featurizer, session, created_at=manifest.created_at)
        model._probe(probe, probe_atol)
        return model

    def _probe(self, probe: Probe, atol: float) -> None:
        """The parity probe (also the session's warm-up, see above); a model that fails it is
        closed."""
        try:
            self._check_probe(_probe_ids(self.version, self.featurizer, probe), probe.logits, atol)
        except ModelRejected:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise ModelRejected(self.version, f"{SERVED_MODEL} fails to run ({exc})") from exc

    def _check_probe(self, probe_ids: np.ndarray, expected: np.ndarray, atol: float) -> None:
        want = (len(probe_ids), len(self.labels))
        if expected.shape != want:
            raise ModelRejected(
                self.version,
                f"{PROBE} logits have shape {expected.shape}, expected {want} "
                f"({len(self.labels)} labels)",
            )
        got = self._run(probe_ids)
        if got.shape != want:
            raise ModelRejected(
                self.version,
                f"{SERVED_MODEL} gives logits of shape {got.shape}, expected {want} "
                f"({len(self.labels)} labels)",
            )
        diff = float(np.abs(got.astype(np.float64) - expected).max())
        if not diff <= atol:  # written this way so that NaN fails
            raise ModelRejected(
                self.version, f"probe parity failed: max abs logit difference {diff:.3g} > {atol:g}"
            )

    # --- serving -------------------------------------------------------------------------------

    def _logits(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) <= _ROWS_PER_RUN:
            return self._run(self.featurizer.batch(texts))
        chunks = [
            self._run(self.featurizer.batch(texts[i : i + _ROWS_PER_RUN]))
            for i in range(0, len(texts), _ROWS_PER_RUN)
        ]
        return np.concatenate(chunks)

    def _run(self, ids: np.ndarray) -> np.ndarray:
        with self._lock:
            session = self._session
            if session is None:
                raise ModelClosed(f"model {self.version} is closed")
            self._active += 1
        try:
            logits: np.ndarray = session.run(None, {self._input: ids})[0]
            return logits
        finally:
            with self._lock:
                self._active -= 1

    def predict(self, texts: Sequence[str], top_k: int = 3) -> list[Prediction]:
        """One ``Prediction`` per text, in order; ``top_k`` is clamped to the number of labels."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not texts:
            return []
        probs = _softmax(self._logits(texts))
        k = min(top_k, len(self.labels))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out: list[Prediction] = []
        for row, idx in zip(probs, order, strict=True):
            ranked = [(self.labels[i], float(row[i])) for i in idx]
            out.append(Prediction(ranked[0][0], ranked[0][1], ranked, self.version))
        return out

    def close(self) -> None:
        """Release the session (idempotent). Only the retiring
        server should call it, after its requests drain."""
        with self._lock:
            if self.closed:
                return
            self.active_at_close = self._active
            self.closed = True
            self._session = None

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.version!r}, {len(self.labels)} "
            f"labels{', closed' if self.closed else ''})"
        )


def _verified_manifest(registry: Registry, version: str) -> Manifest:
    """The version's manifest once every file it lists is there at its size."""
    try:
        return registry.verify(version, hash_only=())
    except CorruptVersion as exc:
        raise ModelRejected(version, "; ".join(exc.problems)) from exc
    except ValueError as exc:  # no such version, or not a version name
        raise ModelRejected(version, str(exc)) from exc


def _read_hashed(registry: Registry, version: str, manifest: Manifest, name: str) -> bytes:
    """A file of the version, read once and checked against the manifest's sha256."""
    entry = manifest.files.get(name)
    if entry is None:
        raise ModelRejected(version, f"{name} is not in the manifest")
    try:
        data = registry.path(version, name).read_bytes()
    except OSError as exc:
        raise ModelRejected(version, f"cannot read {name} ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ModelRejected(version, f"{name} has a sha256 that does not match the manifest")
    return data


def _parse_featurizer(version: str, data: bytes) -> Featurizer:
    try:
        return featurizer_from_json(data.decode("utf-8"))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise ModelRejected(version, f"{FEATURIZER} is unusable ({exc})") from exc


def _served_session(
    registry: Registry, version: str, manifest: Manifest, graph: bytes, threads: int
) -> ort.InferenceSession:
    """The served graph's session, its weights file (when the version has one) hashed in
    place and mapped by ONNX Runtime; refused if the file changed in between."""
    weights, hashed = None, None  # no weights file: a version from before the split
    if SERVED_WEIGHTS in manifest.files:
        weights = registry.path(version, SERVED_WEIGHTS)
        hashed = _hash_file(version, weights, manifest.files[SERVED_WEIGHTS]["sha256"])
    try:
        session = cpu_session(graph, threads=threads, weights=weights)
    except ModelRejected:
        raise
    # onnxruntime raises its own types (InvalidProtobuf, Fail, ...), none exported
    except Exception as exc:
        raise ModelRejected(version, f"{SERVED_MODEL} does not load ({exc})") from exc
    if weights is not None and _identity(weights) != hashed:
        raise ModelRejected(version, f"{SERVED_WEIGHTS} changed while it was loading")
    return session


def _hash_file(version: str, path: Path, sha256: str) -> tuple[int, ...]:
    """Check ``path`` against ``sha256`` without holding
    its bytes; returns its identity as hashed."""
    try:
        with path.open("rb") as file:
            identity = _identity(file.fileno())
            digest = hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as exc:
        raise ModelRejected(version, f"cannot read {path.name} ({exc})") from exc
    if digest != sha256:
        raise ModelRejected(version, f"{path.name} has a sha256 that does not match the manifest")
    return identity


def _identity(file: Path | int) -> tuple[int, ...]:
    """What changes when a file is replaced or rewritten: device, inode, size, mtime (ns)."""
    try:
        st = os.stat(file)
    except OSError:
        return ()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _parse_labels(version: str, data: bytes) -> list[str]:
    try:
        labels = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelRejected(version, f"{LABELS} is not valid JSON ({exc})") from exc
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelRejected(version, f"{LABELS} is not a non-empty list of strings")
    if len(set(labels)) != len(labels):
        raise ModelRejected(version, f"{LABELS} has duplicate labels")
    return labels


def _parse_probe(version: str, data: bytes) -> Probe:
    try:
        return decode_probe(data)
    except ValueError as exc:
        raise ModelRejected(version, f"{PROBE}: {exc}") from exc


def _probe_ids(version: str, featurizer: Featurizer, probe: Probe) -> np.ndarray:
    """The probe texts' ids: stored ones once a few texts show the featuriser still gives them."""
    if probe.ids is None:  # a probe written before ids were stored
        return featurizer.batch(probe.texts)
    fresh = featurizer.batch(probe.texts[:_FEATURIZER_CHECK])
    stored = probe.ids[:_FEATURIZER_CHECK]
    width = fresh.shape[1]
    if width > stored.shape[1] or not (
        np.array_equal(fresh, stored[:, :width]) and not stored[:, width:].any()
    ):
        raise ModelRejected(
            version,
            f"the featuriser does not give the ids stored in {PROBE} for its first "
            f"{len(fresh)} texts",
        )
    return probe.ids


class ModelServer:
    """The live model, swapped atomically. ``predict`` is safe from
    any thread, the event loop included (the lock is held only to
    take or return a reference, never during inference or loading)."""

    def __init__(self, on_retired: Callable[[], object] | None = None) -> None:
        # called after a replaced model is closed (the daemon hands freed heap back to the OS)
        self._on_retired = on_retired
        self._cond = threading.Condition()
        self._current: LoadedModel | None = None
        self._retiring: list[LoadedModel] = []
        # (time.monotonic() of the switch, version switched to)
        self.history: list[tuple[float, str]] = []

    @property
    def version(self) -> str | None:
        model = self._current
        return None if model is None else model.version

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def model(self) -> LoadedModel | None:
        """The live model (for its labels and featurizer);
        predict through the server, not on this."""
        return self._current

    def predict(self, texts: Sequence[str], top_k: int = 3) -> list[Prediction]:
        """Predict with the model live when the call starts;
        a swap meanwhile does not affect this call."""
        with self._cond:
            model = self._current
            if model is None:
                raise NoModel("no model loaded yet")
            model.in_flight += 1
        try:
            return model.predict(texts, top_k)
        finally:
            with self._cond:
                model.in_flight -= 1
                if model.in_flight == 0 and model is not self._current:
                    self._cond.notify_all()  # a retiring model may now be closed

    def swap(self, new: LoadedModel) -> str | None:
        """Make ``new`` live at once and return the previous version; the previous
        model is closed in the background when its last in-flight request returns."""
        if new.closed:
            raise ValueError(f"cannot serve {new!r}")
        with self._cond:
            old = self._current
            if old is new:
                return old.version
            if new in self._retiring:
                raise ValueError(
                    f"{new!r} is being retired and will be closed: load the version again"
                )
            self._current = new
            self.history.append((time.monotonic(), new.version))
            if old is not None:
                self._retiring.append(old)
        if old is None:
            return None
        threading.Thread(
            target=self._retire, args=(old,), name=f"retire-{old.version}", daemon=True
        ).start()
        return old.version

    def load_and_swap(self, registry: Registry, version: str, **load_kwargs: Any) -> str | None:
        """Load (verify, probe) then swap; blocking, so callers run it in a thread.
        A ``ModelRejected`` propagates and the current model keeps serving."""
        new = LoadedModel.load(registry, version, **load_kwargs)
        try:
            return self.swap(new)
        except BaseException:
            new.close()
            raise

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every replaced model is closed; False
        if some still have requests after ``timeout`` s."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._retiring, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Stop serving (later ``predict`` calls raise
        ``NoModel``) and wait for the last model to be closed."""
        with self._cond:
            old, self._current = self._current, None
            if old is not None:
                self._retiring.append(old)
        if old is not None:
            threading.Thread(
                target=self._retire, args=(old,), name=f"retire-{old.version}", daemon=True
            ).start()
        return self.drain(timeout)

    def _retire(self, model: LoadedModel) -> None:
        with self._cond:
            # No new request can take ``model`` (it is no longer current), so once 0 it stays 0.
            self._cond.wait_for(lambda: model.in_flight == 0)
        model.close()
        if self._on_retired is not None:
            try:
                self._on_retired()
            except Exception:
                log.exception("on_retired callback failed")
        with self._cond:
            self._retiring.remove(model)
            self._cond.notify_all()
