"""The daemon's HTTP surface: /metrics, /healthz, /readyz,
plus the routes the daemon adds (predict, admin).

Runs on aiohttp inside the daemon's event loop, bound to 127.0.0.1 unless configured
otherwise; https only (TLS 1.2 at least) when web.tls_certfile and web.tls_keyfile are set.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

import mode
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["WebService"]

log = logging.getLogger(__name__)


class WebService(mode.Service):
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        readiness: Callable[[], dict[str, bool]],
        add_routes: Callable[[web.Application], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.add_routes = add_routes
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
        if self.add_routes is not None:
            self.add_routes(app)
        return app

    async def on_start(self) -> None:
        self._runner = web.AppRunner(self.build(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.bound_port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
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
