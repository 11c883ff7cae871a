#!/usr/bin/env bash
# The server profile's MLflow and Prefect servers (and the Prefect worker), for as long as this
# script runs; TERM or INT stops them. The server profile's tests start it when they begin, so the
# rest of the suite runs without them (with-test-services.sh has started the others and set
# SERVERS_DIR). Usage: python-servers.sh VENV_BIN
set -u
. "$(dirname "$0")/servers.sh"
trap 'stop_groups; exit 0' TERM INT
start_mlflow "$1"
start_prefect "$1"
while :; do sleep 1 & wait $!; done
