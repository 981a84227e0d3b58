"""The model's public HTTP routes: POST /v1/predict and POST /v1/feedback.

Every malformed or oversized request gets a 4xx with a message saying what was wrong; a well-formed
request before any model is loaded gets 503. Every prediction carries a ``prediction_id``; feedback
on it becomes events on the input topic (daemon.feedback). The admin routes are daemon.admin_routes.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from models.serving import ModelServer, NoModel

from .config import Settings
from .feedback import (
    FeedbackRefused,
    PendingPredictions,
    encode_events,
    feedback_events,
    parse_feedback,
    publish_feedback,
)
from .producer import Send

__all__ = ["PredictRoutes", "json_error", "read_json"]

log = logging.getLogger("driftd.api")


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def read_json(request: web.Request) -> Any:
    """The parsed body, or the 4xx response that says why there is none."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, f"request body over {request.app._client_max_size} bytes")
    # e.g. a body that does not decode per its Content-Encoding
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        return json_error(
            400, f"the request body cannot be read: {str(exc).strip() or type(exc).__name__}"
        )
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return json_error(400, "body is not valid JSON")


class PredictRoutes:
    """/v1/predict and /v1/feedback; ``publish`` is the daemon's producer (None: no
    Kafka in this process, and feedback is refused with 503)."""

    def __init__(
        self,
        settings: Settings,
        server: ModelServer,
        metrics: CollectorRegistry,
        publish: Send | None = None,
    ) -> None:
        self.settings = settings
        self.server = server
        self.pending = PendingPredictions(
            settings.web.feedback_horizon_s, settings.web.feedback_max_pending
        )
        self._publish = publish  # (topic, key, value) -> the broker's ack
        # the model sees what ingest would store, as it was trained on
        self._redact = settings.privacy.redactor().text
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

    # -- prediction ------------------------------------------------------------------------------

    async def predict(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        response = await self._predict(request)
        self.requests.labels(str(response.status)).inc()
        self.latency.observe(time.perf_counter() - started)
        return response

    async def _predict(self, request: web.Request) -> web.Response:
        limits = self.settings.models
        payload = await read_json(request)
        if isinstance(payload, web.Response):
            return payload
        if not isinstance(payload, dict):
            return json_error(
                422,
                'body must be a JSON object with "text" (a string) or "texts" (a list of strings)',
            )
        single = "text" in payload
        if single == ("texts" in payload):
            return json_error(422, 'give exactly one of "text" or "texts"')
        texts = [payload["text"]] if single else payload["texts"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return json_error(
                422,
                '"texts" must be a non-empty list of strings'
                if not single
                else '"text" must be a string',
            )
        if len(texts) > limits.max_batch:
            return json_error(
                413, f"{len(texts)} texts in one request; the limit is {limits.max_batch}"
            )
        for i, text in enumerate(texts):
            if not text.strip():
                return json_error(422, f"text {i} is empty")
            if len(text) > limits.max_text_chars:
                return json_error(
                    413,
                    f"text {i} has {len(text)} characters; the limit is {limits.max_text_chars}",
                )
        top_k = payload.get("top_k", limits.top_k)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 20:
            return json_error(422, '"top_k" must be an integer from 1 to 20')
        redacted = [self._redact(t) for t in texts]
        try:
            predictions = self.server.predict(redacted, top_k=top_k)
        except NoModel:
            return json_error(503, "no model is loaded yet; see /readyz")
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
        payload = await read_json(request)
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
            return json_error(refused.status, refused.message)
        event_ids = {event["type"]: event["event_id"] for event in events}
        self.feedback_requests.labels("202").inc()
        return web.json_response(
            {"prediction_id": prediction_id, "event_ids": event_ids}, status=202
        )
