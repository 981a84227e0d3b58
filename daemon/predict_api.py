"""HTTP routes of the model: POST /v1/predict, POST
/v1/feedback, and the token-protected admin routes.

Every malformed or oversized request gets a 4xx with a message saying what was wrong; a well-formed
request before any model is loaded gets 503. Admin routes need ``Authorization:
Bearer <web.admin_token>`` (compared in constant time); with no token configured
they do not exist (404). Every prediction carries a ``prediction_id``; feedback
on it becomes events on the input topic (daemon.feedback).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from models.registry import CorruptVersion, Manifest, Registry
from models.serving import ModelRejected, ModelServer, NoModel
from streams.jsonsafe import json_safe

from .config import Settings
from .feedback import (
    FeedbackRefused,
    PendingPredictions,
    Send,
    encode_events,
    feedback_events,
    parse_feedback,
    publish_feedback,
)
from .model_loader import model_loader

__all__ = ["PredictApi"]

log = logging.getLogger("driftd.api")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class PredictApi:
    def __init__(
        self,
        settings: Settings,
        server: ModelServer,
        registry: Registry,
        metrics: CollectorRegistry,
        swap_lock: asyncio.Lock | None = None,
        publish: Send | None = None,
    ) -> None:
        self.settings = settings
        self.pending = PendingPredictions(
            settings.web.feedback_horizon_s, settings.web.feedback_max_pending
        )
        self._publish = publish  # (topic, key, value) -> the broker's ack: the daemon's producer
        self.server = server
        self.registry = registry
        token = settings.web.admin_token
        self._token = token.get_secret_value().encode() if token else None
        # the model sees what ingest would store, as it was trained on
        self._redact = settings.privacy.redactor().text
        # one activation at a time (shared with the learning loop)
        self._swap_lock = swap_lock or asyncio.Lock()
        self.learning: Any = None  # daemon.learning.LearningLoop, when the daemon runs one
        self.daemon_status: Callable[[], dict[str, Any]] | None = None  # daemon.app.Daemon.status
        self.requests = Counter(
            "driftd_predict_requests_total",
            "HTTP prediction requests, by status code.",
            ["status"],
            registry=metrics,
        )
        self.latency = Histogram(
            "driftd_predict_latency_seconds",
            "Time to answer a /v1/predict request.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=metrics,
        )
        self.swaps = Counter(
            "driftd_model_swaps_total",
            "Model activations through the admin API, by result.",
            ["result"],
            registry=metrics,
        )
        self.feedback_requests = Counter(
            "driftd_feedback_requests_total",
            "HTTP feedback reports (POST /v1/feedback), by status code.",
            ["status"],
            registry=metrics,
        )
        pending = Gauge(
            "driftd_feedback_pending_predictions",
            "Predictions served over HTTP that feedback may still name "
            "(web.feedback_horizon_s, web.feedback_max_pending).",
            registry=metrics,
        )
        pending.set_function(lambda: len(self.pending))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/predict", self.predict)
        app.router.add_post("/v1/feedback", self.feedback)
        app.router.add_get("/admin/v1/models", self.list_models)
        app.router.add_post("/admin/v1/models/{version}/activate", self.activate)
        app.router.add_post("/admin/v1/rollback", self.rollback)
        app.router.add_post("/admin/v1/retrain", self.retrain)
        app.router.add_get("/admin/v1/learning", self.learning_status)
        app.router.add_get("/admin/v1/status", self.status)

    # -- prediction ------------------------------------------------------------------------------

    async def predict(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        response = await self._predict(request)
        self.requests.labels(str(response.status)).inc()
        self.latency.observe(time.perf_counter() - started)
        return response

    @staticmethod
    async def _read_json(request: web.Request) -> Any:
        """The parsed body, or the 4xx response that says why there is none."""
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body over {request.app._client_max_size} bytes")
        # e.g. a body that does not decode per its Content-Encoding
        except (web.RequestPayloadError, HttpProcessingError) as exc:
            return _error(
                400, f"the request body cannot be read: {str(exc).strip() or type(exc).__name__}"
            )
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            return _error(400, "body is not valid JSON")

    async def _predict(self, request: web.Request) -> web.Response:
        limits = self.settings.models
        payload = await self._read_json(request)
        if isinstance(payload, web.Response):
            return payload
        if not isinstance(payload, dict):
            return _error(
                422,
                'body must be a JSON object with "text" (a string) or "texts" (a list of strings)',
            )
        single = "text" in payload
        if single == ("texts" in payload):
            return _error(422, 'give exactly one of "text" or "texts"')
        texts = [payload["text"]] if single else payload["texts"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return _error(
                422,
                '"texts" must be a non-empty list of strings'
                if not single
                else '"text" must be a string',
            )
        if len(texts) > limits.max_batch:
            return _error(
                413, f"{len(texts)} texts in one request; the limit is {limits.max_batch}"
            )
        for i, text in enumerate(texts):
            if not text.strip():
                return _error(422, f"text {i} is empty")
            if len(text) > limits.max_text_chars:
                return _error(
                    413,
                    f"text {i} has {len(text)} characters; the limit is {limits.max_text_chars}",
                )
        top_k = payload.get("top_k", limits.top_k)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 20:
            return _error(422, '"top_k" must be an integer from 1 to 20')
        redacted = [self._redact(t) for t in texts]
        try:
            predictions = self.server.predict(redacted, top_k=top_k)
        except NoModel:
            return _error(503, "no model is loaded yet; see /readyz")
        answers = [
            {
                **p.to_dict(),
                "prediction_id": self.pending.add(text, p.intent, p.confidence, p.model_version),
            }
            for text, p in zip(redacted, predictions, strict=True)
        ]
        if single:
            return web.json_response(answers[0])
        return web.json_response(
            {"predictions": answers, "model_version": predictions[0].model_version}
        )

    # -- feedback --------------------------------------------------------------------------------

    async def feedback(self, request: web.Request) -> web.Response:
        """A report on a served prediction: 202 with the
        event ids once the broker acknowledged them."""
        payload = await self._read_json(request)
        if isinstance(payload, web.Response):
            self.feedback_requests.labels(str(payload.status)).inc()
            return payload
        try:
            prediction_id, correct, intent = parse_feedback(payload)
            served = self.pending.get(prediction_id)
            if self._publish is None:
                raise FeedbackRefused(
                    503, "feedback cannot be published: this process has no Kafka producer"
                )
            events = feedback_events(
                prediction_id, served, correct=correct, intent=intent, now=time.time()
            )
            encoded = encode_events(events, self.settings.ingest.max_event_bytes)
            await publish_feedback(
                self._publish,
                self.settings.topics.input,
                prediction_id,
                served,
                events,
                encoded,
                self.settings.web.feedback_publish_timeout_s,
            )
        except FeedbackRefused as refused:
            if refused.status == 503:
                log.warning(
                    "feedback on %s not taken: %s", payload.get("prediction_id"), refused.message
                )
            self.feedback_requests.labels(str(refused.status)).inc()
            return _error(refused.status, refused.message)
        event_ids = {event["type"]: event["event_id"] for event in events}
        self.feedback_requests.labels("202").inc()
        return web.json_response(
            {"prediction_id": prediction_id, "event_ids": event_ids}, status=202
        )

    # -- admin -----------------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> web.Response | None:
        if self._token is None:
            return _error(404, "admin routes are disabled; set web.admin_token to enable them")
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), self._token
        ):
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="driftd-admin"'},
            )
        return None

    async def list_models(self, request: web.Request) -> web.Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        # In a worker thread: on a shared registry
        # (models.registry_url) both are object-store requests.
        entries, current = await asyncio.get_running_loop().run_in_executor(
            None, lambda: (self.registry.entries(), self.registry.current())
        )
        listing = []
        for version, entry in entries:
            item: dict[str, Any] = {
                "version": version,
                "current": version == current,
                "serving": version == self.server.version,
            }
            if isinstance(entry, Manifest):
                item.update(
                    status="ok", parent=entry.parent, created_at=entry.created_at, info=entry.info
                )
            else:
                item.update(status="corrupt", reason=str(entry))
            listing.append(item)
        return web.json_response({"models": listing})

    async def activate(self, request: web.Request) -> web.Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        return await self._activate(request.match_info["version"])

    async def rollback(self, request: web.Request) -> web.Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        current, parent = await asyncio.get_running_loop().run_in_executor(
            None, self._current_and_parent
        )
        if current is None:
            return _error(409, "there is no current version to roll back from")
        if parent is None:
            return _error(409, f"{current} has no parent version to roll back to")
        return await self._activate(parent)

    def _current_and_parent(self) -> tuple[str | None, str | None]:
        current = self.registry.current()
        if current is None:
            return None, None
        try:
            return current, self.registry.verify(current).parent
        except CorruptVersion as exc:
            return current, exc.manifest.parent if exc.manifest else None

    async def retrain(self, request: web.Request) -> web.Response:
        """Manual fine-tune trigger: 202 when one starts, 409 when one is already running."""
        if (denied := self._authorised(request)) is not None:
            return denied
        if self.learning is None:
            return _error(409, "the learning loop is not running in this process")
        started, message = self.learning.request("manual")
        return web.json_response(
            {"started": started, "message": message}, status=202 if started else 409
        )

    async def learning_status(self, request: web.Request) -> web.Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        if self.learning is None:
            return _error(409, "the learning loop is not running in this process")
        return web.json_response(self.learning.status())

    async def status(self, request: web.Request) -> web.Response:
        """Everything ``driftd status`` prints, as JSON."""
        if (denied := self._authorised(request)) is not None:
            return denied
        if self.daemon_status is None:
            return _error(409, "no daemon status in this process")
        return web.json_response(json_safe(self.daemon_status()))

    async def _activate(self, version: str) -> web.Response:
        loop = asyncio.get_running_loop()
        if version not in await loop.run_in_executor(None, self.registry.versions):
            return _error(404, f"no version {version!r} in the registry")
        async with self._swap_lock:
            try:
                previous = await loop.run_in_executor(
                    model_loader(), self.server.load_and_swap, self.registry, version
                )
            except (ModelRejected, CorruptVersion) as exc:
                self.swaps.labels("refused").inc()
                log.error(
                    "refused to activate %s: %s; %s keeps serving",
                    version,
                    exc,
                    self.server.version,
                )
                return _error(409, f"{version} refused: {exc}; {self.server.version} keeps serving")
            # the load hashed what it serves
            await loop.run_in_executor(
                None, lambda: self.registry.set_current(version, hash_only=())
            )
        self.swaps.labels("ok").inc()
        log.info("activated model %s (was %s)", version, previous)
        return web.json_response({"version": version, "previous": previous})
