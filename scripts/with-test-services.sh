#!/usr/bin/env bash
# Run a command with the servers the tests use, then stop them.
#
# The server profile's servers (scripts/servers.sh: PostgreSQL, Redis, an S3 object store, an
# MLflow server and a Prefect server with a worker), on 127.0.0.1 only, in a temporary folder
# (the MLflow and Prefect servers only while the server profile's tests run: python-servers.sh);
# root installs the missing ones from Debian's packages. PostgreSQL alone serves the ledger tests
# (TEST_POSTGRES_URL); the whole set, the server profile's tests (CONVEYOR_TEST_SERVERS_ENV names
# its settings). Where a server cannot be had, the command still runs and those tests skip,
# saying why.
#
# promtool (Debian's prometheus package, installed here if missing and we are root, its service
# never started) checks the alert rules and the dashboard's queries; without it, those tests skip.
#
# Chromium (Debian's package, installed here if missing and we are root) draws the lineage page
# in a headless browser test; without it, that test skips, saying why.
set -u
export SERVERS_DIR
SERVERS_DIR=$(mktemp -d /tmp/conveyor-test-servers.XXXXXX)
. "$(dirname "$0")/servers.sh"
venv_bin=${CONVEYOR_VENV_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin}

install_chromium() {
  command -v chromium >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Chromium from Debian's packages (headless browser test)"
    [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock)" ] || apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }
  fi
  command -v chromium >/dev/null || say "Chromium is not installed; the browser test will be skipped"
}

install_promtool() {
  command -v promtool >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing promtool from Debian's prometheus package (its service is not started)"
    apt_install prometheus
  fi
  command -v promtool >/dev/null || say "promtool is not installed; the alert rule tests will be skipped"
}

trap 'stop_servers; rm -rf "$SERVERS_DIR"' EXIT
start_servers "$venv_bin" later
install_chromium
install_promtool
"$@"
