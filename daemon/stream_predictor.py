"""Stream prediction, in a child process by default.

Every utterance ingest stores is predicted: featurising it (tokens, hashed n-grams), the softmax and
the top-k take Python time, and in the daemon's process that time comes out of the one GIL the
event loop needs for ingest. Here a spawned child does it on the second core: it is sent the
texts and the version to use, and returns the prediction dicts.

The child loads a version from the registry's local directory the first time it is asked for it
(``LoadedModel.load``: verified and probed, as the server's own copy was) and keeps the last two,
so the batches in flight across a hot swap are answered by the version they were sent with. The
version is read from the ``ModelServer`` per batch, so the stream follows the swaps the server
makes. If the child fails (it died, cannot load the version, or gave no answer within
``timeout_s``: it is then killed) the batch is predicted in the daemon's process instead, and a new
child serves the next batch.
``models.stream_prediction = "thread"`` predicts in the daemon's process always.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import mode

from models.registry import Registry
from models.serving import LoadedModel, ModelServer, NoModel

from .broker import die_with_parent

__all__ = ["StreamPredictor"]

log = logging.getLogger("driftd.serving")


class StreamPredictor(mode.Service):
    """``predict(texts)`` for ingest: prediction dicts, or None while no model serves. As a
    service it starts the child with the daemon (its imports take a second or two) and stops it."""

    def __init__(
        self,
        server: ModelServer,
        registry_root: Path,
        top_k: int,
        *,
        in_child: bool = True,
        timeout_s: float = 120.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.server, self.registry_root, self.top_k = server, registry_root, top_k
        self.in_child, self.timeout_s = in_child, timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()  # batches are predicted from more than one worker thread

    async def on_start(self) -> None:
        if self.in_child:
            self._child().submit(_ready)

    async def on_stop(self) -> None:
        self.close()

    @property
    def child_pid(self) -> int | None:
        """The child's process id, once it runs (``driftd status``, tests)."""
        processes = getattr(self._pool, "_processes", None) or {}
        return next(iter(processes), None)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Stop using ``pool`` (failed or hung); its child is killed, the next batch starts a new
        one. A newer pool another thread started meanwhile is kept."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        for process in list(getattr(pool, "_processes", {}).values()):  # no public kill
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def predict(self, texts: list[str]) -> list[dict[str, Any]] | None:
        """Blocking: ingest calls it in a worker thread."""
        version = self.server.version
        if version is None:
            return None
        if self.in_child:
            pool = self._child()
            try:
                future = pool.submit(_predict, self.registry_root, version, texts, self.top_k)
                return future.result(timeout=self.timeout_s)
            except BrokenProcessPool:
                log.warning("the stream prediction child died; this batch is predicted here")
                self._discard(pool)
            except TimeoutError:
                log.warning(
                    "the stream prediction child gave no answer in %.0f s; it is replaced, "
                    "this batch is predicted here",
                    self.timeout_s,
                )
                self._discard(pool)
            except Exception as exc:  # noqa: BLE001 - whatever failed there, the server's copy serves
                log.warning("stream prediction in the child failed (%s); predicted here", exc)
        try:
            return [p.to_dict() for p in self.server.predict(texts, top_k=self.top_k)]
        except NoModel:
            return None

    def _child(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=die_with_parent,
                )
            return self._pool


# --- in the child ---------------------------------------------------------------------------------

_loaded: dict[str, LoadedModel] = {}  # version -> model, the newest last
_KEEP = 2


def _ready() -> None:
    """Nothing: the first call imports this module (and ONNX Runtime) in the child."""


def _predict(root: Path, version: str, texts: list[str], top_k: int) -> list[dict[str, Any]]:
    model = _loaded.get(version)
    if model is None:
        model = _loaded[version] = LoadedModel.load(Registry(root), version)
        while len(_loaded) > _KEEP:
            _loaded.pop(next(iter(_loaded))).close()
    return [p.to_dict() for p in model.predict(texts, top_k)]
