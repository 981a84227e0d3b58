"""Settings: defaults, the documented config.toml,
environment overrides and operator-facing errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from daemon.config import ENV_PREFIX, ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
CONFIG_TOML = REPO / "config.toml"
SECRET = "hunter2-s3cr3t-pw"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the DRIFTD_* variables they set themselves."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    return str(info.value)


# --- defaults and the shipped config.toml -------------------------------------------------------


def test_defaults_load_without_a_file() -> None:
    settings = load_settings(None)
    assert settings.kafka.bootstrap == "embedded"
    assert settings.topics.input == "conversations" and settings.topics.dlq == "conversations.dlq"
    assert settings.ingest.max_event_bytes == 65536
    assert settings.ingest.store_user_id == "pseudonymised"
    assert [r.priority for r in settings.tiers.rules] == ["high"]


def test_shipped_config_toml_equals_the_defaults() -> None:
    from_file = load_settings(CONFIG_TOML).model_dump(mode="json")
    defaults = load_settings(None).model_dump(mode="json")
    differing = {
        f"{section}.{key}": (defaults[section][key], value)
        for section, fields in from_file.items()
        for key, value in fields.items()
        if defaults[section][key] != value
    }
    assert differing == {}
    # SecretStr dumps masked: compare the secret values themselves too.
    assert (
        load_settings(CONFIG_TOML).ingest.user_id_salt.get_secret_value()
        == load_settings(None).ingest.user_id_salt.get_secret_value()
    )


def _toml_blocks(text: str) -> dict[str, str]:
    """config.toml split by table header: {"kafka": "...", "tiers.rules": "...", ...}."""
    blocks: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        header = re.fullmatch(r"\[\[?([\w.]+)\]\]?\s*", line)
        if header:
            current = header.group(1)
            blocks.setdefault(current, "")
        else:
            blocks[current] = blocks.get(current, "") + line + "\n"
    return blocks


def _list_item_model(annotation: object) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _documented_keys() -> list[tuple[str, str, type[BaseModel]]]:
    """(table, key, model) for every setting, with
    list-of-table settings expanded to their fields."""
    keys = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for key, sub in model.model_fields.items():
            item = _list_item_model(sub.annotation)
            if item is None:
                keys.append((section, key, model))
            else:
                keys.extend((f"{section}.{key}", item_key, item) for item_key in item.model_fields)
    return keys


@pytest.mark.parametrize(
    ("table", "key"),
    [(t, k) for t, k, _ in _documented_keys()],
    ids=[f"{t}.{k}" for t, k, _ in _documented_keys()],
)
def test_config_toml_documents_every_setting(table: str, key: str) -> None:
    blocks = _toml_blocks(CONFIG_TOML.read_text())
    assert table in blocks, f"config.toml has no [{table}] table"
    assert re.search(rf"^(# )?{re.escape(key)} =", blocks[table], flags=re.M), (
        f"config.toml does not document {table}.{key}"
    )


def test_every_setting_has_a_description() -> None:
    missing = [
        f"{t}.{k}" for t, k, model in _documented_keys() if not model.model_fields[k].description
    ]
    assert missing == []


# --- environment overrides
# --------------------------------------------------------------------------


def test_env_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTD_KAFKA__GROUP_ID", "from-env")
    assert load_settings(None).kafka.group_id == "from-env"


def test_env_beats_the_file_and_merges_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[kafka]\ngroup_id = "from-file"\nembedded_port = 19999\n')
    assert load_settings(path).kafka.group_id == "from-file"
    monkeypatch.setenv("DRIFTD_KAFKA__GROUP_ID", "from-env")
    settings = load_settings(path)
    assert settings.kafka.group_id == "from-env"
    # the rest of the file's [kafka] table still applies
    assert settings.kafka.embedded_port == 19999


def test_explicit_overrides_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTD_WEB__PORT", "9000")
    assert load_settings(None).web.port == 9000
    assert load_settings(None, web={"port": 9001}).web.port == 9001


# --- invalid values
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[tiers]\nhot_max_events = -1\n",
            [
                "tiers.hot_max_events",
                "-1",
                "greater than or equal to 1",
                "DRIFTD_TIERS__HOT_MAX_EVENTS",
            ],
        ),
        ("[web]\nport = 70000\n", ["web.port", "70000", "less than or equal to 65535"]),
        (
            "[kafka]\nembedded_port = 0\n",
            ["kafka.embedded_port", "0", "greater than or equal to 1"],
        ),
        (
            '[daemon]\nlog_level = "LOUD"\n',
            ["daemon.log_level", "'LOUD'", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"],
        ),
        (
            '[kafka]\nsecurity_protocol = "SASL_SSL"\n',
            [
                "kafka.security_protocol",
                "'SASL_SSL'",
                "needs kafka.sasl_username and kafka.sasl_password",
            ],
        ),
        (
            '[[tiers.rules]]\npriority = "high"\n[[tiers.rules]]\npriority = "high"\n',
            ["tiers.rules", "'priority': 'high'", "more than one rule for priority high"],
        ),
        (
            '[[tiers.rules]]\npriority = "urgent"\n',
            ["tiers.rules.0.priority", "'urgent'", "'low', 'normal' or 'high'"],
        ),
        (
            '[ingest]\nstore_user_id = "hashed"\n',
            ["ingest.store_user_id", "'hashed'", "'pseudonymised', 'clear' or 'drop'"],
        ),
        (
            "[replay]\nlabel_fraction = 1.5\n",
            ["replay.label_fraction", "1.5", "less than or equal to 1"],
        ),
    ],
    ids=[
        "negative hot_max_events",
        "port 70000",
        "embedded port 0",
        "log_level literal",
        "SASL_SSL without credentials",
        "duplicate rule priority",
        "bad rule priority",
        "store_user_id literal",
        "label_fraction > 1",
    ],
)
def test_bad_value_names_key_value_and_expectation(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    message = config_error(tmp_path, text)
    for part in expected:
        assert part in message, f"{part!r} missing from: {message}"


def test_non_numeric_port_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTD_WEB__PORT", "http")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    message = str(info.value)
    for part in ("web.port", "'http'", "valid integer", "DRIFTD_WEB__PORT"):
        assert part in message, message


def test_env_value_that_is_not_json_for_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTD_TIERS__RULES", "high")
    with pytest.raises(ConfigError) as info:
        load_settings(CONFIG_TOML)
    message = str(info.value)
    assert "environment" in message and "not valid TOML" not in message, message


def test_unknown_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[kafka]\nbootstrapp = "broker:9092"\n')
    assert "kafka.bootstrapp" in message and "unknown setting" in message
    # an unknown key's value may be a misplaced secret: never echoed
    assert "broker:9092" not in message


def test_unknown_section(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[kafak]\ngroup_id = "x"\n')
    assert "kafak" in message and "unknown setting" in message


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[web]\nport = 70000\n[tiers]\nhot_max_events = 0\n")
    assert "web.port" in message and "tiers.hot_max_events" in message


def test_invalid_toml_syntax(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[web\nport = 1\n")
    assert "not valid TOML" in message and "line 1" in message and "config.toml" in message


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(f"config file {missing} does not exist")):
        load_settings(missing)


# --- secrets never leak
# ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # the model validator sees the whole table
        f'[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_password = "{SECRET}"\n',
        '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_username = '
        f'"u"\nsasl_password = "{SECRET}"\nembedded_port = -5\n',
        f'[kafak]\nsasl_password = "{SECRET}"\n',  # a typo in the section name
        f'[web]\nsasl_password = "{SECRET}"\n',  # the right key in the wrong table
        f'[ingest]\nuser_id_salt = "{SECRET}"\nbatch_size = 0\n',
    ],
    ids=[
        "sasl without username",
        "other error in kafka",
        "unknown section",
        "unknown key",
        "salt next to an error",
    ],
)
def test_secret_never_in_error_message(tmp_path: Path, text: str) -> None:
    message = config_error(tmp_path, text)
    assert SECRET not in message, message


def test_secret_from_env_never_in_error_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTD_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("DRIFTD_KAFKA__SASL_PASSWORD", SECRET)
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert SECRET not in str(info.value)
    monkeypatch.setenv("DRIFTD_KAFKA__SASL_USERNAME", "driftd")
    settings = load_settings(None)
    assert (
        settings.kafka.sasl_password is not None
        and settings.kafka.sasl_password.get_secret_value() == SECRET
    )
    assert SECRET not in repr(settings) and SECRET not in settings.model_dump_json()


# --- the CLI: driftd config check
# ------------------------------------------------------------------------


def driftd_config_check(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "daemon", "config", "check", "-c", str(config)],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_config_check_rejects_a_bad_file_with_exit_code_2(tmp_path: Path) -> None:
    result = driftd_config_check(write(tmp_path, "[web]\nport = 70000\n"))
    assert result.returncode == 2, result
    assert "web.port" in result.stderr and "70000" in result.stderr
    assert result.stdout == ""


def test_config_check_missing_file_exits_2(tmp_path: Path) -> None:
    result = driftd_config_check(tmp_path / "nope.toml")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_config_check_accepts_the_shipped_file() -> None:
    result = driftd_config_check(CONFIG_TOML)
    assert result.returncode == 0, result.stderr
    assert '"group_id": "driftd"' in result.stdout


def test_config_check_never_prints_the_password(tmp_path: Path) -> None:
    good = write(
        tmp_path,
        '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_username = '
        f'"driftd"\nsasl_password = "{SECRET}"\n',
    )
    result = driftd_config_check(good)
    assert result.returncode == 0, result.stderr
    assert '"sasl_username": "driftd"' in result.stdout
    assert SECRET not in result.stdout + result.stderr

    bad = write(
        tmp_path,
        f'[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_password = "{SECRET}"\n',
        name="bad.toml",
    )
    result = driftd_config_check(bad)
    assert result.returncode == 2
    assert "kafka.security_protocol" in result.stderr
    assert SECRET not in result.stdout + result.stderr

    result = driftd_config_check(
        CONFIG_TOML,
        DRIFTD_KAFKA__SECURITY_PROTOCOL="SASL_SSL",
        DRIFTD_KAFKA__SASL_USERNAME="driftd",
        DRIFTD_KAFKA__SASL_PASSWORD=SECRET,
    )
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_cold_url_with_an_unknown_scheme_is_a_config_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[tiers]\ncold_url = "nosuchfs://bucket/cold"\n')
    assert "tiers.cold_url" in message and "nosuchfs://" in message


def test_driftd_run_with_a_bad_value_stops_with_exit_code_2_before_starting_anything(
    tmp_path: Path,
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env = {
        **clean,
        "DRIFTD_TIERS__HOT_MAX_EVENTS": "lots",
        "DRIFTD_DAEMON__DATA_DIR": str(tmp_path / "state"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "run", "-c", str(CONFIG_TOML)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result
    assert (
        "tiers.hot_max_events" in result.stderr
        and "'lots'" in result.stderr
        and "DRIFTD_TIERS__HOT_MAX_EVENTS" in result.stderr
    )
    assert not (tmp_path / "state").exists()  # failed before touching any state


# --- one source per setting and per name ---------------------------------------------------------


def _choices(section: type[BaseModel], key: str) -> set[object]:
    return set(typing.get_args(section.model_fields[key].annotation))


def test_the_config_offers_exactly_the_registered_names() -> None:
    """The Literals of the settings are the registries' names (registries load torch/numpy, the
    settings must not, so the names are declared apart and checked here)."""
    from daemon.config import LearningSettings, ModelSettings, PriorityRule
    from models.architectures import ARCHITECTURES
    from models.distributed import BACKENDS
    from models.hygiene import CONFLICT_POLICIES
    from models.train import PRECISIONS
    from streams.monitor import DETECTORS, LABEL_FREE_SIGNALS, POOR_QUALITY_TRIGGERS, SIGNALS
    from streams.monitor.config import DetectorName, LabelFreeSignalName, SignalName, TriggerName
    from streams.replay import PRIORITIES

    assert _choices(ModelSettings, "architecture") == set(ARCHITECTURES)
    assert _choices(LearningSettings, "label_conflicts") == set(CONFLICT_POLICIES)
    assert _choices(LearningSettings, "distributed_backend") == set(BACKENDS)
    assert _choices(LearningSettings, "precision") == set(PRECISIONS)
    assert _choices(PriorityRule, "priority") == set(PRIORITIES)
    assert set(typing.get_args(DetectorName)) == set(DETECTORS)
    assert set(typing.get_args(LabelFreeSignalName)) == set(LABEL_FREE_SIGNALS)
    assert set(typing.get_args(SignalName)) == set(SIGNALS)
    assert set(typing.get_args(TriggerName)) == set(POOR_QUALITY_TRIGGERS)


def test_the_monitor_section_is_the_policys_config() -> None:
    from streams.monitor import MonitorConfig

    monitor = load_settings(None).monitor
    assert isinstance(monitor, MonitorConfig)
    assert monitor.to_config() == MonitorConfig()  # the same defaults: one declaration
    assert set(type(monitor).model_fields) - set(MonitorConfig.model_fields) == {"label_horizon_s"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[monitor]\nmin_samples = -1\n", ["min_samples must be an int >= 0", "-1"]),
        ("[monitor]\newma_alpha = 0.0\n", ["ewma_alpha must be in (0, 1]", "0.0"]),
        ('[monitor]\nsignals = ["ewma", "cusum"]\n', ["signals must be distinct names among"]),
        ('[monitor]\nmode = "most"\n', ["mode must be one of any, all", "'most'"]),
        ("[monitor]\nlabel_horizon_s = 0\n", ["label_horizon_s must be a finite number > 0"]),
    ],
    ids=["min_samples", "ewma_alpha", "signals", "mode", "label_horizon_s"],
)
def test_a_bad_monitor_value_names_key_and_expectation(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    message = config_error(tmp_path, text)
    key = text.split("\n")[1].split(" =")[0]
    for part in [f"monitor.{key}", f"DRIFTD_MONITOR__{key.upper()}", *expected]:
        assert part in message, f"{part!r} missing from: {message}"


def test_an_unknown_monitor_key_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[monitor]\ncooldown = 5\n")
    assert "monitor.cooldown" in message and "unknown setting" in message


def test_monitor_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTD_MONITOR__COOLDOWN_S", "5")
    monkeypatch.setenv("DRIFTD_MONITOR__SIGNALS", '["ewma", "adwin"]')
    monitor = load_settings(None).monitor
    assert monitor.cooldown_s == 5.0 and monitor.signals == ("ewma", "adwin")


def test_loading_the_settings_imports_neither_torch_nor_numpy() -> None:
    code = "import sys, daemon.config; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
