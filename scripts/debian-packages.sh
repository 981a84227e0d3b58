#!/usr/bin/env bash
# Installs the system packages the tests need: Debian's prometheus (prometheus + promtool) for the
# alert-rule tests and the real-Prometheus integration test. A quick no-op when promtool is there.
set -euo pipefail
command -v promtool >/dev/null 2>&1 && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
install() { $sudo apt-get install -y -qq --no-install-recommends prometheus; }
echo "driftd: installing the Debian package prometheus (promtool, prometheus)" >&2
if ! install; then
    # The postinst may fail to start the service (no init system here); the binaries are then in
    # place and the tests run their own prometheus. Otherwise the package lists may be missing.
    command -v promtool >/dev/null 2>&1 || { $sudo apt-get update -qq; install || true; }
fi
command -v promtool >/dev/null 2>&1 || { echo "driftd: promtool still missing after installing prometheus" >&2; exit 1; }
