# Sourced by the scripts that run a peer (Redis, PostgreSQL) beside Acre: installing a package,
# a free port on loopback, and a PostgreSQL of the script's own when none is running. Not run
# by itself.
#
# The sourcing script sets `script` (its name, for messages) and `out` (a directory for
# initdb's log), and calls `stop_started_postgres` from its EXIT trap.

started_pg=""   # the data directory of the PostgreSQL this script started
pg_tmp=""
pg_bin=""

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "$script: $1 is not installed; install it (apt-get install $1) or run as root" >&2
    exit 2
  fi
  echo "== installing $1"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$1" >/dev/null
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Sets pg_url and pg_setup: the server already on 127.0.0.1:$PG_PORT, or one started here
# (installed first if need be): initdb in a temporary directory as the postgres user, trust
# authentication, listening on 127.0.0.1 on a free port, durability settings at their defaults
# (fsync and synchronous_commit on: a commit waits for its WAL record to reach the disk).
# $1 says what the bench drops and creates in an existing server's database postgres.
start_postgres() {
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
    echo "== using the postgresql server already on port $PG_PORT (database postgres, $1 dropped and created)"
    pg_url="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    pg_setup="the server already running on 127.0.0.1:$PG_PORT, as configured"
    return
  fi
  if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
    local clusters_before
    clusters_before=$(pg_lsclusters -h 2>/dev/null || true)
    apt_install postgresql
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    # Debian's package creates and may start a cluster of its own ("main" on port 5432): this
    # script started it by installing, so it stops it; the bench uses a cluster of its own.
    pg_lsclusters -h 2>/dev/null | while read -r version name _port status _rest; do
      if [ "$status" = online ] && ! grep -q "^$version $name " <<<"$clusters_before"; then
        echo "== stopping the cluster $version/$name the postgresql package started"
        pg_ctlcluster "$version" "$name" stop || true
      fi
    done
  fi
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "$script: there is no postgres user to run initdb as" >&2; exit 2
  fi
  pg_tmp=$(mktemp -d "/tmp/$script-pg.XXXXXX")
  if [ "$(id -u)" = 0 ]; then chown postgres "$pg_tmp"; fi
  local pg_port
  pg_port=$(free_port)
  echo "== starting postgresql ($pg_bin) on 127.0.0.1:$pg_port, data in $pg_tmp (durability settings at their defaults)"
  as_postgres "$pg_bin/initdb" -D "$pg_tmp/data" -U postgres --auth-local=trust --auth-host=trust \
    >"$out/initdb.log" 2>&1
  as_postgres "$pg_bin/pg_ctl" -D "$pg_tmp/data" -l "$pg_tmp/postgres.log" -w -t 60 \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $pg_tmp" start >/dev/null
  started_pg="$pg_tmp/data"
  pg_url="postgres://postgres@127.0.0.1:$pg_port/postgres"
  pg_setup="started by this script: initdb in a temporary directory, trust authentication on loopback, default configuration"
}

# Stops the PostgreSQL start_postgres started, if any, and removes its directory.
stop_started_postgres() {
  if [ -n "$started_pg" ]; then
    as_postgres "$pg_bin/pg_ctl" -D "$started_pg" -m fast -w stop >/dev/null 2>&1 || true
  fi
  if [ -n "$pg_tmp" ]; then rm -rf "$pg_tmp"; fi
}
