# The servers of Conveyor's server profile, on 127.0.0.1 only, each in a folder under $SERVERS_DIR.
# Sourced by with-test-services.sh and with-servers.sh; not run on its own.
#
#   PostgreSQL     the ledger, MLflow's and Prefect's databases, Feast's registry (Debian's package)
#   Redis          Feast's online store, the serving replicas' shared state (Debian's package)
#   Swift + S3 API the object store: MLflow's artifacts, the DVC remote (Debian's OpenStack Swift,
#                  with its s3api middleware and memcached; a real object store, not a mock)
#   mlflow server  tracking and registry on PostgreSQL, artifacts proxied to the object store
#   prefect server on PostgreSQL, and a process worker on the work pool `conveyor`
#
# Root installs what is missing from Debian's packages, with no Debian service started. Each
# start_* returns non-zero when its server cannot be had, and says why; the tests that need it then
# skip. `servers_env` writes the server profile's settings (CONVEYOR_*, AWS_*) for a command.

: "${SERVERS_DIR:?}"
# Fixed ports below Linux's ephemeral range (32768-60999): no client connection and no server a test
# started on a free port can hold one of them when a server here binds it, however late that is.
SERVERS_PG_PORT=${TEST_POSTGRES_PORT:-25432}
SERVERS_REDIS_PORT=${CONVEYOR_TEST_REDIS_PORT:-26379}
SERVERS_S3_PORT=${CONVEYOR_TEST_S3_PORT:-28080}      # the Swift proxy; +1..+3 its storage servers, +4 memcached
SERVERS_MLFLOW_PORT=${CONVEYOR_TEST_MLFLOW_PORT:-25000}
SERVERS_PREFECT_PORT=${CONVEYOR_TEST_PREFECT_PORT:-24200}
SERVERS_BUCKET=conveyor
SERVERS_S3_KEY="conveyor:conveyor"   # tempauth's account:user is the S3 access key
SERVERS_S3_SECRET=conveyor-test-secret
SERVERS_PIDS=()

say() { printf 'servers: %s\n' "$*" >&2; }

apt_install() {  # apt_install PACKAGE... (root only; no service of theirs may start)
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
  fi
  [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock)" ] || apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; }
  local rc=$?
  [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
  return $rc
}

wait_for() {  # wait_for SECONDS COMMAND...: until the command succeeds
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || return 1
    sleep 0.3
  done
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
PG_STARTED=""

start_postgres() {
  [ -n "$(pg_bin)" ] || { say "installing PostgreSQL from Debian's packages"; apt_install postgresql; }
  local bin; bin=$(pg_bin)
  [ -n "$bin" ] || { say "PostgreSQL is not installed; its tests will be skipped"; return 1; }
  local data=$SERVERS_DIR/pg run=()
  mkdir -p "$data"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { say "no postgres user; PostgreSQL tests will be skipped"; return 1; }
    chown postgres "$data"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$bin/initdb" -D "$data/db" -A trust -U postgres >/dev/null 2>&1 || { say "initdb failed"; return 1; }
  "${run[@]}" "$bin/pg_ctl" -D "$data/db" -l "$data/log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $SERVERS_PG_PORT -k $data -c fsync=off -c max_connections=200" start >/dev/null 2>&1 \
    || { say "PostgreSQL did not start (see $data/log)"; return 1; }
  PG_STARTED="$bin"
  local db
  for db in mlflow prefect features; do
    "$bin/psql" -q -h 127.0.0.1 -p "$SERVERS_PG_PORT" -U postgres -c "CREATE DATABASE $db" >/dev/null 2>&1
  done
  export TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$SERVERS_PG_PORT/postgres"
  say "PostgreSQL on 127.0.0.1:$SERVERS_PG_PORT"
}

stop_postgres() {
  [ -n "$PG_STARTED" ] || return 0
  local run=()
  [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
  "${run[@]}" "$PG_STARTED/pg_ctl" -D "$SERVERS_DIR/pg/db" -m fast -w stop >/dev/null 2>&1
  PG_STARTED=""
}

start_redis() {
  command -v redis-server >/dev/null || { say "installing Redis from Debian's packages"; apt_install redis-server; }
  command -v redis-server >/dev/null || { say "Redis is not installed; the server profile's tests will be skipped"; return 1; }
  mkdir -p "$SERVERS_DIR/redis"
  redis-server --bind 127.0.0.1 --port "$SERVERS_REDIS_PORT" --save '' --appendonly no --dir "$SERVERS_DIR/redis" \
    --daemonize yes --pidfile "$SERVERS_DIR/redis/pid" --logfile "$SERVERS_DIR/redis/log" >/dev/null 2>&1 \
    && wait_for 10 redis-cli -h 127.0.0.1 -p "$SERVERS_REDIS_PORT" ping \
    || { say "Redis did not start (see $SERVERS_DIR/redis/log)"; return 1; }
  say "Redis on 127.0.0.1:$SERVERS_REDIS_PORT"
}

stop_redis() {
  [ -f "$SERVERS_DIR/redis/pid" ] && kill "$(cat "$SERVERS_DIR/redis/pid")" 2>/dev/null
  rm -f "$SERVERS_DIR/redis/pid"
}

# OpenStack Swift, one replica of everything: rings, four servers, tempauth (whose users are the S3
# API's access keys), the s3api middleware in the proxy. The bucket is a Swift container.
start_object_store() {
  command -v swift-proxy-server >/dev/null && command -v memcached >/dev/null \
    || { say "installing OpenStack Swift (its S3 API) and memcached from Debian's packages"
         apt_install swift-proxy swift-account swift-container swift-object memcached; }
  command -v swift-proxy-server >/dev/null && command -v memcached >/dev/null \
    || { say "Swift is not installed; the server profile's tests will be skipped"; return 1; }
  local d=$SERVERS_DIR/swift p=$SERVERS_S3_PORT user; user=$(id -un)
  mkdir -p "$d/srv/d1" "$d/log"
  printf '[swift-hash]\nswift_hash_path_suffix = conveyor\nswift_hash_path_prefix = conveyor\n[storage-policy:0]\nname = default\ndefault = yes\n' >"$d/swift.conf"
  common() {
    printf '[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = %s\nswift_dir = %s\ndevices = %s/srv\nmount_check = false\nworkers = 1\nuser = %s\nlog_level = WARNING\n' \
      "$1" "$d" "$d" "$user"
  }
  local name port offset=1
  for name in object container account; do
    port=$((p + offset)); offset=$((offset + 1))
    { common "$port"; printf '[pipeline:main]\npipeline = %s-server\n[app:%s-server]\nuse = egg:swift#%s\n' "$name" "$name" "$name"
      printf '[%s-replicator]\n[%s-auditor]\n' "$name" "$name"; } >"$d/$name-server.conf"
    (cd "$d" && swift-ring-builder "$name.builder" create 8 1 1 && swift-ring-builder "$name.builder" add "r1z1-127.0.0.1:$port/d1" 1 \
      && swift-ring-builder "$name.builder" rebalance) >/dev/null 2>&1 || { say "Swift's $name ring could not be built"; return 1; }
  done
  local filters="catch_errors gatekeeper healthcheck proxy_logging cache listing_formats s3api tempauth copy slo dlo"
  { common "$p"
    printf '[pipeline:main]\npipeline = %s proxy_logging proxy-server\n' "$filters"
    printf '[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n'
    for name in $filters; do
      printf '[filter:%s]\nuse = egg:swift#%s\n' "$name" "${name/cache/memcache}"
      case $name in
        tempauth) printf 'user_%s = %s .admin\n' "${SERVERS_S3_KEY/:/_}" "$SERVERS_S3_SECRET" ;;
        cache) printf 'memcache_servers = 127.0.0.1:%s\n' $((p + 4)) ;;
      esac
    done
  } >"$d/proxy-server.conf"
  memcached -l 127.0.0.1 -p $((p + 4)) -U 0 -u "$user" -d -P "$d/memcached.pid" || { say "memcached did not start"; return 1; }
  for name in object container account proxy; do
    setsid "swift-$name-server" "$d/$name-server.conf" >"$d/log/$name.log" 2>&1 &
    SERVERS_PIDS+=($!)
  done
  wait_for 30 curl -sf "http://127.0.0.1:$p/healthcheck" || { say "Swift did not start (see $d/log)"; return 1; }
  # The proxy answers its health check before the account and container servers take requests:
  # the bucket is asked for until they do.
  wait_for 30 swift_bucket "$p" || { say "the bucket $SERVERS_BUCKET could not be created (see $d/log)"; return 1; }
  say "object store (Swift, S3 API) on 127.0.0.1:$p, bucket $SERVERS_BUCKET"
}

swift_bucket() {  # swift_bucket PORT: a token from tempauth, then the bucket (a Swift container)
  local token
  token=$(curl -s -D - -o /dev/null -H "X-Auth-User: $SERVERS_S3_KEY" -H "X-Auth-Key: $SERVERS_S3_SECRET" \
    "http://127.0.0.1:$1/auth/v1.0" | tr -d '\r' | sed -n 's/^X-Auth-Token: //ip')
  [ -n "$token" ] && curl -sf -X PUT -H "X-Auth-Token: $token" \
    "http://127.0.0.1:$1/v1/AUTH_${SERVERS_S3_KEY%%:*}/$SERVERS_BUCKET" >/dev/null
}

stop_object_store() {
  [ -f "$SERVERS_DIR/swift/memcached.pid" ] && kill "$(cat "$SERVERS_DIR/swift/memcached.pid")" 2>/dev/null
  rm -f "$SERVERS_DIR/swift/memcached.pid"
}

# The Python servers (MLflow, Prefect) start in the background, each in its own process group
# (stopped as a group); their tests wait for them.
start_mlflow() {  # start_mlflow VENV_BIN
  local bin=$1 d=$SERVERS_DIR/mlflow
  mkdir -p "$d"
  setsid env AWS_ACCESS_KEY_ID="$SERVERS_S3_KEY" AWS_SECRET_ACCESS_KEY="$SERVERS_S3_SECRET" AWS_DEFAULT_REGION=us-east-1 \
      MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$SERVERS_S3_PORT" MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
    "$bin/mlflow" server --host 127.0.0.1 --port "$SERVERS_MLFLOW_PORT" --workers 1 \
      --backend-store-uri "postgresql+psycopg://postgres@127.0.0.1:$SERVERS_PG_PORT/mlflow" \
      --artifacts-destination "s3://$SERVERS_BUCKET/mlflow" >"$d/log" 2>&1 &
  SERVERS_PIDS+=($!)
  say "MLflow server starting on 127.0.0.1:$SERVERS_MLFLOW_PORT (log: $d/log)"
}

start_prefect() {  # start_prefect VENV_BIN: the API, then a process worker on the pool `conveyor`
  local bin=$1 d=$SERVERS_DIR/prefect
  mkdir -p "$d/home"
  setsid env PREFECT_HOME="$d/home" DO_NOT_TRACK=true PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=false \
      PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://postgres@127.0.0.1:$SERVERS_PG_PORT/prefect" \
      PREFECT_API_URL="http://127.0.0.1:$SERVERS_PREFECT_PORT/api" \
    bash "$(dirname "${BASH_SOURCE[0]}")/prefect-server.sh" "$bin" "$d" "$SERVERS_PREFECT_PORT" "$SERVERS_DIR/servers.env" &
  SERVERS_PIDS+=($!)
  say "Prefect server starting on 127.0.0.1:$SERVERS_PREFECT_PORT, with a worker on pool conveyor (logs: $d)"
}

servers_env() {  # the server profile's settings, as a file of NAME=value lines
  cat <<ENV
CONVEYOR_PROFILE=servers
CONVEYOR_LEDGER_URL=postgresql+psycopg://postgres@127.0.0.1:$SERVERS_PG_PORT/postgres
CONVEYOR_MLFLOW_TRACKING_URI=http://127.0.0.1:$SERVERS_MLFLOW_PORT
CONVEYOR_PREFECT_API_URL=http://127.0.0.1:$SERVERS_PREFECT_PORT/api
CONVEYOR_WORK_POOL=conveyor
CONVEYOR_REDIS_URL=redis://127.0.0.1:$SERVERS_REDIS_PORT/0
CONVEYOR_OBJECT_STORE_URL=http://127.0.0.1:$SERVERS_S3_PORT
CONVEYOR_BUCKET=$SERVERS_BUCKET
CONVEYOR_FEATURE_REGISTRY_URL=postgresql+psycopg://postgres@127.0.0.1:$SERVERS_PG_PORT/features
AWS_ACCESS_KEY_ID=$SERVERS_S3_KEY
AWS_SECRET_ACCESS_KEY=$SERVERS_S3_SECRET
AWS_DEFAULT_REGION=us-east-1
ENV
}

start_servers() {  # start_servers VENV_BIN [later]: every server it can; the profile's settings in servers.env
  # With `later`, the Python servers (MLflow, Prefect) are left to python-servers.sh, which the
  # server profile's tests start for as long as they run: the rest of the suite runs without them.
  local bin=$1 when=${2:-now} all=1
  mkdir -p "$SERVERS_DIR" && chmod 755 "$SERVERS_DIR"  # PostgreSQL's user reaches its folder in it
  servers_env >"$SERVERS_DIR/servers.env"
  start_postgres || all=""
  start_redis || all=""
  start_object_store || all=""
  if [ -n "$all" ] && [ -x "$bin/mlflow" ] && [ -x "$bin/prefect" ]; then
    export CONVEYOR_TEST_SERVERS_ENV=$SERVERS_DIR/servers.env
    if [ "$when" = later ]; then
      export CONVEYOR_TEST_SERVERS_BIN=$bin
    else
      start_mlflow "$bin"
      start_prefect "$bin"
    fi
  else
    say "not every server could start: the server profile's tests will be skipped"
  fi
}

stop_servers() {
  stop_groups
  stop_object_store
  stop_redis
  stop_postgres
}

stop_groups() {  # the servers started in process groups of their own (Swift's, MLflow, Prefect)
  local pid
  for pid in "${SERVERS_PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  local until=$((SECONDS + 5))  # each group's every process, not only its leader; then by force (none keeps state: PostgreSQL does)
  for pid in "${SERVERS_PIDS[@]}"; do
    while kill -0 -- "-$pid" 2>/dev/null && [ $SECONDS -lt $until ]; do sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null
  done
  for pid in "${SERVERS_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  SERVERS_PIDS=()
}
