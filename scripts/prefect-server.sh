#!/usr/bin/env bash
# The Prefect server of the server profile and its worker (started by servers.sh in a process group
# of their own, with PREFECT_* in the environment): migrate the database, serve the API, create
# the process work pool `conveyor`, then run a worker on it with the profile's settings.
set -u
bin=$1 dir=$2 port=$3 profile=$4
"$bin/prefect" server database upgrade -y >"$dir/upgrade.log" 2>&1 || { echo "prefect: database upgrade failed (see $dir/upgrade.log)" >&2; exit 1; }
"$bin/prefect" server start --host 127.0.0.1 --port "$port" >"$dir/log" 2>&1 &
server=$!
until curl -sf "$PREFECT_API_URL/health" >/dev/null; do
  kill -0 $server 2>/dev/null || { echo "prefect: the server stopped (see $dir/log)" >&2; exit 1; }
  sleep 0.5
done
"$bin/prefect" work-pool create conveyor --type process --overwrite >"$dir/pool.log" 2>&1
(set -a; . "$profile"; set +a; exec "$bin/prefect" worker start --pool conveyor --type process --limit 2) >"$dir/worker.log" 2>&1 &
wait
