#!/usr/bin/env bash
# The bank benchmark against Acre, Redis and PostgreSQL with the same driver and the same
# settings (accounts, initial balance, seed, thread counts, seconds per row), side by side.
#
# Acre runs as 3 node processes over shared memory with 3 replicas of every region (started with
# `acre cluster up` and stopped at the end). Redis is the server already on 127.0.0.1:$REDIS_PORT
# (its database 15, emptied), or one this script installs (apt, as root) and starts on loopback
# without persistence (--save '' --appendonly no). PostgreSQL is the server already on
# 127.0.0.1:$PG_PORT (database postgres as user postgres, trust; the bench drops and creates only
# its own table acre_bank), or one this script installs (apt, as root) and starts: initdb in a
# temporary directory as the postgres user, trust authentication, listening on 127.0.0.1 on a
# free port, fsync and synchronous_commit left at their defaults (on: a commit waits for its WAL
# record to reach the disk). The script stops only what it started, and says all this in the table.
#
# Usage: benches/bank-vs-peers.sh [--seconds 5] [--threads 1,2,4] [--accounts 4000] [--seed 1]
#                                 [--out DIR]
# Writes DIR/bank-vs-peers.md (the tables) and every target's JSON results into DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=5
threads=1,2,4
accounts=4000
seed=1
out=target/bank-vs-peers
REDIS_PORT=${REDIS_PORT:-6379}
PG_PORT=${PG_PORT:-5432}
cluster_dir=/dev/shm/acre-bank-vs-peers
# Every run is bounded: rows x (seconds + 1 s warm-up) plus setup, with a wide margin.
run_timeout=1800

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --accounts) accounts=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "bank-vs-peers: unknown argument $1" >&2; usage ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

script=bank-vs-peers
# shellcheck source=benches/peers-lib.sh
. benches/peers-lib.sh
started_redis=""
cleanup() {
  ./target/release/acre cluster down --dir "$cluster_dir" --purge >/dev/null 2>&1 || true
  if [ -n "$started_redis" ]; then
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$started_redis" 2>/dev/null || true
  fi
  stop_started_postgres
}
trap cleanup EXIT

if ! command -v python3 >/dev/null; then
  echo "bank-vs-peers: python3 is needed to write the table" >&2; exit 2
fi

echo "== building acre (release)"
cargo build --release --quiet
acre=./target/release/acre

# Redis.
redis_db=0
if command -v redis-cli >/dev/null && redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "== using the redis server already on port $REDIS_PORT (database 15, emptied)"
  redis_db=15
  redis_setup="the server already running on 127.0.0.1:$REDIS_PORT, as configured"
else
  command -v redis-server >/dev/null || apt_install redis-server
  echo "== starting redis-server on 127.0.0.1:$REDIS_PORT (no persistence)"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize no --logfile "$out/redis.log" &
  started_redis=$!
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$REDIS_PORT" ping >/dev/null
  redis_setup="started by this script on loopback without persistence (--save '' --appendonly no)"
fi

start_postgres "its table acre_bank"

common=(--threads "$threads" --seconds "$seconds" --accounts "$accounts" --seed "$seed")

# Both commit modes: one-sided (the default, the base of the ratios) and FaRM's messages.
for mode in one-sided messages; do
  echo "== acre (3 node processes, shm, 3 replicas, $mode commits)"
  $acre cluster down --dir "$cluster_dir" --purge >/dev/null 2>&1 || true
  $acre cluster up --dir "$cluster_dir" --transport shm --ring-bytes $((4 << 20)) --commit "$mode" >/dev/null
  json="$out/acre.json"
  [ "$mode" = messages ] && json="$out/acre-messages.json"
  timeout "$run_timeout" $acre bench bank "${common[@]}" --target "acre:$cluster_dir" --json "$json"
  $acre cluster down --dir "$cluster_dir" --purge >/dev/null
done

echo "== redis"
timeout "$run_timeout" $acre bench bank "${common[@]}" --flush \
  --target "redis://127.0.0.1:$REDIS_PORT/$redis_db" --json "$out/redis.json"

echo "== postgresql"
timeout "$run_timeout" $acre bench bank "${common[@]}" --flush --target "$pg_url" --json "$out/postgres.json"

python3 - "$out" "$redis_setup" "$pg_setup" <<'EOF' > "$out/bank-vs-peers.md"
import json, sys
out, redis_setup, pg_setup = sys.argv[1:]
reports = {}
for target, file in (("acre", "acre"), ("acre, messages", "acre-messages"),
                     ("redis", "redis"), ("postgres", "postgres")):
    with open(f"{out}/{file}.json") as f:
        reports[target] = json.load(f)
a = reports["acre"]
print(f'Bank transfers, {a["accounts"]} accounts of {a["initial_balance"]}, seed {a["seed"]}, '
      f'{a["duration_s"]:g} s per row after {a["warmup_s"]:g} s of warm-up; every target '
      f'draws the same transfers and its total was checked after every row.\n')
print(f'- Acre: {a["description"]} (the base of the ratios), and {reports["acre, messages"]["description"]}; '
      'the logs are in /dev/shm (memory).')
print(f'- Redis: {reports["redis"]["description"]}; {redis_setup}.')
print(f'- PostgreSQL: {reports["postgres"]["description"]}; {pg_setup}. '
      'fsync and synchronous_commit are at their defaults: each commit waits for its WAL flush.')
print('\nLatency runs from a transaction\'s first attempt to its commit, retries included; '
      '"aborted/s" counts attempts that aborted and were retried. '
      '"acre / this" is Acre\'s committed/s over the row\'s.\n')
def rows(report, work):
    return [r for r in report["rows"] if r["transaction"].startswith(work)]
for title, work in (("Transfers", "transfer"), ("Read-only transactions of 4 accounts", "read-only 4")):
    print(f'### {title}\n')
    print('| threads | target | committed/s | aborted/s | p50 µs | p99 µs | p99.9 µs | acre / this |')
    print('| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |')
    acre_rows = {r["threads"]: r for r in rows(a, work)}
    threads = sorted(acre_rows)
    for t in threads:
        base = acre_rows[t]["committed_per_s"]
        for target, report in reports.items():
            for r in rows(report, work):
                if r["threads"] != t:
                    continue
                name = target if r["transaction"] == work else f'{target} ({r["transaction"][len(work):].strip()})'
                ratio = base / r["committed_per_s"] if r["committed_per_s"] > 0 else float("inf")
                print(f'| {t} | {name} | {r["committed_per_s"]:,.0f} | {r["aborted_per_s"]:,.0f} | '
                      f'{r["p50_us"]:,.1f} | {r["p99_us"]:,.1f} | {r["p999_us"]:,.1f} | {ratio:.2f}x |')
    print()
EOF
echo
cat "$out/bank-vs-peers.md"
echo "table written to $out/bank-vs-peers.md"
