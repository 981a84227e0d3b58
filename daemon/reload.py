"""What SIGHUP may change: the settings that take
effect without a restart, and the diff that says so.

Thresholds and the learning loop's knobs ([monitor], [learning]) and logging are read where they are
used, so a new value applies from the next event. Everything else (broker, topics, ports, paths,
tiers) is wired into running clients and files; a change there is reported as needing a restart
and not applied, so a reload never half-applies a configuration.
"""

from __future__ import annotations

from typing import Any

from .config import Settings

__all__ = ["RUNTIME_KEYS", "SettingsDiff", "diff_settings"]

RUNTIME_KEYS = ("daemon.log_level", "daemon.log_format", "monitor.", "learning.")


class SettingsDiff:
    def __init__(self, changed: dict[str, tuple[Any, Any]]) -> None:
        self.changed = changed

    @property
    def runtime(self) -> dict[str, tuple[Any, Any]]:
        return {k: v for k, v in self.changed.items() if _is_runtime(k)}

    @property
    def needs_restart(self) -> list[str]:
        return sorted(k for k in self.changed if not _is_runtime(k))

    def describe(self) -> str:
        """One line for the log: runtime keys with old ->
        new values; others by name only (may be secrets)."""
        parts = [f"{k} {old!r} -> {new!r}" for k, (old, new) in sorted(self.runtime.items())]
        return ", ".join(parts) or "no run-time setting changed"


def _is_runtime(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RUNTIME_KEYS)


def diff_settings(old: Settings, new: Settings) -> SettingsDiff:
    """Every leaf setting whose value differs, keyed by its dotted config.toml name."""
    before, after = _flatten(old.model_dump()), _flatten(new.model_dump())
    return SettingsDiff(
        {
            k: (before.get(k), after.get(k))
            for k in sorted(before.keys() | after.keys())
            if before.get(k) != after.get(k)
        }
    )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
