#!/usr/bin/env bash
# Run a command with the servers the tests use, then stop them.
#
# PostgreSQL (Debian's package, installed here if missing and we are root) runs as a private
# instance on 127.0.0.1 only, in a temporary folder, for the ledger tests. Where it cannot be
# had, the command still runs and those tests skip, saying why.
#
# promtool (Debian's prometheus package, installed here if missing and we are root, its service
# never started) checks the alert rules and the dashboard's queries; without it, those tests skip.
#
# Chromium (Debian's package, installed here if missing and we are root) draws the lineage page
# in a headless browser test; without it, that test skips, saying why.
set -u
PORT=${TEST_POSTGRES_PORT:-55432}
DATA=$(mktemp -d /tmp/conveyor-test-pg.XXXXXX)
started=""

say() { printf 'test services: %s\n' "$*" >&2; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

start_postgres() {
  if [ -z "$(pg_bin)" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing PostgreSQL from Debian's packages"
    apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1
  fi
  local bin; bin=$(pg_bin)
  [ -n "$bin" ] || { say "PostgreSQL is not installed; its tests will be skipped"; return 1; }
  local run=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { say "no postgres user; PostgreSQL tests will be skipped"; return 1; }
    chown postgres "$DATA"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$bin/initdb" -D "$DATA/db" -A trust -U postgres >/dev/null 2>&1 || { say "initdb failed"; return 1; }
  "${run[@]}" "$bin/pg_ctl" -D "$DATA/db" -l "$DATA/log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c fsync=off" start >/dev/null 2>&1 \
    || { say "PostgreSQL did not start (see $DATA/log)"; return 1; }
  started="$bin"
  export TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
  say "PostgreSQL on 127.0.0.1:$PORT"
}

stop_postgres() {
  if [ -n "$started" ]; then
    local run=()
    [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
    "${run[@]}" "$started/pg_ctl" -D "$DATA/db" -m fast -w stop >/dev/null 2>&1
  fi
  rm -rf "$DATA"
}

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
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # no daemon may start, nor listen beyond 127.0.0.1
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
    fi
    [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock)" ] || apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; }
    [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
  fi
  command -v promtool >/dev/null || say "promtool is not installed; the alert rule tests will be skipped"
}

trap stop_postgres EXIT
start_postgres || true
install_chromium
install_promtool
"$@"
