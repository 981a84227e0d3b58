"""TLS for the HTTP endpoint: settings (both files or neither, files exist), the
server and CLI contexts, and the real aiohttp service answering https only."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.config import ENV_PREFIX, ConfigError, load_settings
from daemon.tls import client_context, server_context
from daemon.web import WebService
from tests.tlscerts import self_signed


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


def test_no_tls_by_default() -> None:
    web = load_settings(None).web
    assert not web.tls and web.tls_min_version == "TLSv1.2"
    assert server_context(web) is None and client_context(web) is None


@pytest.mark.parametrize(
    ("given", "missing"), [("tls_certfile", "tls_keyfile"), ("tls_keyfile", "tls_certfile")]
)
def test_cert_and_key_go_together(cert, given: str, missing: str) -> None:
    path = cert[0] if given == "tls_certfile" else cert[1]
    with pytest.raises(ConfigError) as info:
        load_settings(None, web={given: path})
    assert f"web.{given} is set but web.{missing} is not" in str(info.value)


def test_tls_files_must_exist(cert, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"web.tls_keyfile = '.*nope.key': no such file"):
        load_settings(None, web={"tls_certfile": cert[0], "tls_keyfile": tmp_path / "nope.key"})


def test_a_certificate_without_its_key_is_a_config_error(cert, tmp_path: Path) -> None:
    other_cert, _ = self_signed(tmp_path, "other")
    web = load_settings(None, web={"tls_certfile": other_cert, "tls_keyfile": cert[1]}).web
    with pytest.raises(ConfigError, match="do not load as a certificate and its unencrypted key"):
        server_context(web)


def test_server_context_is_tls12_at_least_and_tls13_when_asked(cert) -> None:
    web = load_settings(None, web={"tls_certfile": cert[0], "tls_keyfile": cert[1]}).web
    context = server_context(web)
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2
    strict = load_settings(
        None, web={"tls_certfile": cert[0], "tls_keyfile": cert[1], "tls_min_version": "TLSv1.3"}
    ).web
    assert server_context(strict).minimum_version == ssl.TLSVersion.TLSv1_3


def test_cli_context_pins_the_certificate_or_checks_the_host_against_a_ca(cert) -> None:
    pinned = client_context(
        load_settings(None, web={"tls_certfile": cert[0], "tls_keyfile": cert[1]}).web
    )
    assert (
        pinned.verify_mode == ssl.CERT_REQUIRED
        and not pinned.check_hostname
        and len(pinned.get_ca_certs()) == 1
    )
    with_ca = client_context(
        load_settings(
            None, web={"tls_certfile": cert[0], "tls_keyfile": cert[1], "tls_cafile": cert[0]}
        ).web
    )
    assert with_ca.verify_mode == ssl.CERT_REQUIRED and with_ca.check_hostname


def test_web_service_answers_https_only(cert, tmp_path: Path) -> None:
    web = load_settings(None, web={"tls_certfile": cert[0], "tls_keyfile": cert[1]}).web
    strict = load_settings(
        None, web={"tls_certfile": cert[0], "tls_keyfile": cert[1], "tls_min_version": "TLSv1.3"}
    ).web
    other_cert, _ = self_signed(tmp_path, "other")

    def get(url: str, context: ssl.SSLContext | None) -> dict:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return json.load(response)

    def tls12_only() -> ssl.SSLContext:
        context = client_context(web)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        return context

    def checks(port: int, strict_port: int) -> None:
        base = f"127.0.0.1:{port}"
        assert get(f"https://{base}/healthz", client_context(web)) == {"status": "ok"}
        # chain and host name verified
        trusting_localhost = ssl.create_default_context(cafile=str(cert[0]))
        assert get(f"https://localhost:{port}/readyz", trusting_localhost)["ready"] is True
        # TLS 1.2 is the default floor
        assert get(f"https://{base}/healthz", tls12_only()) == {"status": "ok"}
        with pytest.raises((urllib.error.URLError, OSError)):
            get(f"http://{base}/healthz", None)  # plain http on the TLS port
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            get(f"https://{base}/healthz", ssl.create_default_context(cafile=str(other_cert)))
        assert get(f"https://127.0.0.1:{strict_port}/healthz", client_context(strict)) == {
            "status": "ok"
        }
        with pytest.raises((urllib.error.URLError, OSError)):
            # tls_min_version = "TLSv1.3"
            get(f"https://127.0.0.1:{strict_port}/healthz", tls12_only())

    async def scenario() -> None:
        services = [
            WebService(
                "127.0.0.1",
                0,
                CollectorRegistry(),
                lambda: {"ok": True},
                ssl_context=server_context(w),
            )
            for w in (web, strict)
        ]
        for service in services:
            await service.on_start()
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, checks, services[0].bound_port, services[1].bound_port
            )
        finally:
            for service in services:
                await service.on_stop()

    asyncio.run(scenario())
