#!/usr/bin/env bash
# Run a command in Conveyor's server profile on this machine, then stop the servers:
#
#   bash scripts/with-servers.sh .venv/bin/conveyor doctor
#   bash scripts/with-servers.sh .venv/bin/conveyor demo
#
# The servers (scripts/servers.sh) start on 127.0.0.1 in a temporary folder, which goes with them;
# the command gets the profile's settings (CONVEYOR_PROFILE=servers and the servers' URLs). A team
# with its own servers sets the same settings to point at them instead (README: "Server profile").
set -u
export SERVERS_DIR
SERVERS_DIR=$(mktemp -d /tmp/conveyor-servers.XXXXXX)
. "$(dirname "$0")/servers.sh"
venv_bin=${CONVEYOR_VENV_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin}
trap 'stop_servers; rm -rf "$SERVERS_DIR"' EXIT
start_servers "$venv_bin"
[ -n "${CONVEYOR_TEST_SERVERS_ENV:-}" ] || { say "the server profile needs every server; see above"; exit 2; }
say "waiting for the MLflow and Prefect servers"
wait_for 180 curl -sf "http://127.0.0.1:$SERVERS_MLFLOW_PORT/health" && wait_for 180 curl -sf "http://127.0.0.1:$SERVERS_PREFECT_PORT/api/health" \
  || { say "the MLflow or Prefect server did not start (logs in $SERVERS_DIR)"; exit 2; }
set -a; . "$SERVERS_DIR/servers.env"; set +a
"$@"
