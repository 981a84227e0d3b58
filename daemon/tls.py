"""TLS for the HTTP endpoint: the server's context
(daemon/web) and the CLI's client context (daemon/cli)."""

from __future__ import annotations

import ssl

from .config import ConfigError, WebSettings

__all__ = ["client_context", "server_context"]

_BEGIN, _END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def server_context(web: WebSettings) -> ssl.SSLContext | None:
    """The endpoint's context (TLS 1.2 at least, Python's
    default secure ciphers), or None for plain http.

    Raises ConfigError when the certificate and key
    do not load (unreadable, not PEM, not a pair)."""
    if web.tls_certfile is None or web.tls_keyfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[web.tls_min_version]
    try:
        # an encrypted key fails instead of prompting
        context.load_cert_chain(web.tls_certfile, web.tls_keyfile, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"web.tls_certfile = {str(web.tls_certfile)!r} and web.tls_keyfile = "
            f"{str(web.tls_keyfile)!r} do not load as a certificate and its "
            f"unencrypted key: {exc}"
        ) from None
    return context


def client_context(web: WebSettings) -> ssl.SSLContext | None:
    """What the CLI verifies the endpoint with: web.tls_cafile (host
    name checked), or else the endpoint's own certificate as the only
    trust anchor (pinned: only the holder of its key can answer)."""
    if not web.tls:
        return None
    if web.tls_cafile is not None:
        return ssl.create_default_context(cafile=str(web.tls_cafile))
    assert web.tls_certfile is not None
    pem = web.tls_certfile.read_text()
    start = pem.find(_BEGIN)
    end = pem.find(_END, start)
    if start < 0 or end < 0:
        raise ConfigError(f"web.tls_certfile = {str(web.tls_certfile)!r} holds no PEM certificate")
    # The first certificate only (the endpoint's own): trusting an intermediate of its chain as well
    # would accept any certificate that intermediate signed, and the host name is not checked here.
    context = ssl.create_default_context(cadata=pem[start : end + len(_END)])
    # the leaf itself may be the anchor (a CA-issued certificate)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    # the pin is the identity; the CLI may reach 0.0.0.0's loopback under another name
    context.check_hostname = False
    return context
