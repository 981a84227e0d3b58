"""The daemon's HTTP surface: /metrics, /healthz, /readyz,
plus the route sets the daemon adds (daemon.http_routes, daemon.admin_routes).

Runs on aiohttp inside the daemon's event loop, bound to 127.0.0.1 unless configured
otherwise; https only (TLS 1.2 at least) when web.tls_certfile and web.tls_keyfile are set.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import mode
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["RouteSet", "WebService"]

log = logging.getLogger(__name__)


class RouteSet(Protocol):
    def add_routes(self, app: web.Application) -> None: ...


class WebService(mode.Service):
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        readiness: Callable[[], dict[str, bool]],
        routes: Sequence[RouteSet] = (),
        ssl_context: ssl.SSLContext | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.routes = routes
        self.host = host
        self.port = port
        self.registry = registry
        self.readiness = readiness
        self.ssl_context = ssl_context  # https only when set (daemon.tls.server_context)
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    def build(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        for routes in self.routes:
            routes.add_routes(app)
        return app

    async def on_start(self) -> None:
        self._runner = web.AppRunner(self.build(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        if not isinstance(server, asyncio.Server):
            raise RuntimeError(f"{site.name} did not start a listening server")
        self.bound_port = server.sockets[0].getsockname()[1]  # the real port when 0 was asked
        scheme = "https" if self.ssl_context is not None else "http"
        log.info(
            "HTTP endpoint on %s://%s:%d (/metrics /healthz /readyz)",
            scheme,
            self.host,
            self.bound_port,
        )

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = self.readiness()
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)
