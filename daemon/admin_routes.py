"""The token-protected admin routes under /admin/v1: the registry's versions, activation and
rollback, a manual retrain, the learning loop's and the daemon's status.

They need ``Authorization: Bearer <web.admin_token>`` (compared in constant time), checked by
one middleware on the admin sub-application; with no token configured they do not exist (404).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

from models.registry import CorruptVersion, Manifest, Registry
from models.serving import ModelRejected, ModelServer
from streams.jsonsafe import json_safe

from .http_routes import json_error
from .model_loader import model_loader

__all__ = ["AdminRoutes", "LearningControl"]

log = logging.getLogger("driftd.api")


class LearningControl(Protocol):
    """What the admin routes ask of the learning loop (daemon.learning.LearningLoop)."""

    def request(self, trigger: str = "manual") -> tuple[bool, str]: ...

    def status(self) -> dict[str, Any]: ...


class AdminRoutes:
    """``learning`` and ``daemon_status``: None where this process runs no learning
    loop or daemon (their routes answer 409)."""

    def __init__(
        self,
        token: SecretStr | None,
        server: ModelServer,
        registry: Registry,
        metrics: CollectorRegistry,
        swap_lock: asyncio.Lock,
        learning: LearningControl | None = None,
        daemon_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._token = token.get_secret_value().encode() if token else None
        self.server = server
        self.registry = registry
        self._swap_lock = swap_lock  # one activation at a time (shared with the learning loop)
        self.learning = learning
        self.daemon_status = daemon_status
        self.swaps = Counter(
            "driftd_model_swaps_total",
            "Model activations through the admin API, by result.",
            ["result"],
            registry=metrics,
        )

    def add_routes(self, app: web.Application) -> None:
        admin = web.Application(middlewares=[self._authorise])
        admin.router.add_get("/v1/models", self.list_models)
        admin.router.add_post("/v1/models/{version}/activate", self.activate)
        admin.router.add_post("/v1/rollback", self.rollback)
        admin.router.add_post("/v1/retrain", self.retrain)
        admin.router.add_get("/v1/learning", self.learning_status)
        admin.router.add_get("/v1/status", self.status)
        app.add_subapp("/admin", admin)

    @web.middleware
    async def _authorise(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None:
            return await handler(request)  # no such admin route or method: aiohttp's 404 or 405
        if self._token is None:
            return json_error(404, "admin routes are disabled; set web.admin_token to enable them")
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
        return await handler(request)

    async def list_models(self, request: web.Request) -> web.Response:
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
        return await self._activate(request.match_info["version"])

    async def rollback(self, request: web.Request) -> web.Response:
        current, parent = await asyncio.get_running_loop().run_in_executor(
            None, self._current_and_parent
        )
        if current is None:
            return json_error(409, "there is no current version to roll back from")
        if parent is None:
            return json_error(409, f"{current} has no parent version to roll back to")
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
        if self.learning is None:
            return json_error(409, "the learning loop is not running in this process")
        started, message = self.learning.request("manual")
        return web.json_response(
            {"started": started, "message": message}, status=202 if started else 409
        )

    async def learning_status(self, request: web.Request) -> web.Response:
        if self.learning is None:
            return json_error(409, "the learning loop is not running in this process")
        return web.json_response(self.learning.status())

    async def status(self, request: web.Request) -> web.Response:
        """Everything ``driftd status`` prints, as JSON."""
        if self.daemon_status is None:
            return json_error(409, "no daemon status in this process")
        return web.json_response(json_safe(self.daemon_status()))

    async def _activate(self, version: str) -> web.Response:
        loop = asyncio.get_running_loop()
        if version not in await loop.run_in_executor(None, self.registry.versions):
            return json_error(404, f"no version {version!r} in the registry")
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
                return json_error(
                    409, f"{version} refused: {exc}; {self.server.version} keeps serving"
                )
            # the load hashed what it serves
            await loop.run_in_executor(
                None, lambda: self.registry.set_current(version, hash_only=())
            )
        self.swaps.labels("ok").inc()
        log.info("activated model %s (was %s)", version, previous)
        return web.json_response({"version": version, "previous": previous})
