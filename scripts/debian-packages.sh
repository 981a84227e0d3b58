#!/usr/bin/env bash
# Installs the Debian packages a command needs, each given as <command>:<package>; a quick no-op for those
# already there. Default (make test): promtool:prometheus, for the alert-rule tests and the real-Prometheus
# integration test. bench/serve.py's wrk section: `bash scripts/debian-packages.sh wrk:wrk`.
set -euo pipefail
[ "$#" -gt 0 ] || set -- promtool:prometheus
missing=()
for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
install() { $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
echo "driftd: installing the Debian packages ${missing[*]}" >&2
if ! install; then
    # A postinst may fail to start its service (no init system here) with the binaries in place;
    # otherwise the package lists may be missing.
    $sudo apt-get update -qq
    install || true
fi
for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || { echo "driftd: ${pair%%:*} still missing after installing ${pair#*:}" >&2; exit 1; }
done
