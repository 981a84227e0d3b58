"""How a command reaches the running daemon this
configuration describes: its URL, TLS, the admin token."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from ..config import Settings, WebSettings
from .common import fail

__all__ = ["admin_call", "endpoint"]


def endpoint(web: WebSettings) -> tuple[str, ssl.SSLContext | None]:
    """The daemon's base URL, and the TLS context to reach
    it (https when the endpoint has a certificate)."""
    from ..tls import client_context

    host = "127.0.0.1" if web.host in ("0.0.0.0", "::") else web.host
    context = client_context(web)
    return f"{'https' if context is not None else 'http'}://{host}:{web.port}", context


def admin_call(settings: Settings, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of an admin API call; no daemon answering is a one-line failure."""
    token = settings.web.admin_token
    if token is None:
        fail(
            "",
            "web.admin_token is not set (env DRIFTD_WEB__ADMIN_TOKEN): the admin "
            "API is disabled, so there is nothing to call",
            2,
        )
    base, context = endpoint(settings.web)
    request = urllib.request.Request(
        base + path, method=method, headers={"Authorization": f"Bearer {token.get_secret_value()}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
    # refused, TLS refused, http to https...
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        fail("", f"no daemon answers on {base} ({getattr(error, 'reason', None) or repr(error)})")
