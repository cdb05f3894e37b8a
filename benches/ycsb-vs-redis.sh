#!/usr/bin/env bash
# YCSB workloads against Acre and Redis with the same driver and the same settings, side by side.
#
# Acre runs as 3 node processes over shared memory with 3 replicas of every region (started with
# `acre cluster up` for each workload and stopped after it); Redis is the server already listening
# on 127.0.0.1:$REDIS_PORT, or one this script installs (apt, as root) and starts on loopback
# without persistence (--save '' --appendonly no), and stops at the end. With a server that was
# already running, the script uses database 15 and empties it.
#
# Usage: benches/ycsb-vs-redis.sh [--records N] [--threads T] [--duration 30s] [--warmup 2s]
#                                 [--workloads "a b c f"] [--out DIR]
# Writes DIR/ycsb-vs-redis.md (the table) and every run's JSON results into DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

records=100000
threads=2
duration=30s
warmup=2s
workloads="a b c f"
out=target/ycsb-vs-redis
REDIS_PORT=${REDIS_PORT:-6379}
cluster_dir=/dev/shm/acre-ycsb

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --records) records=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --workloads) workloads=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "ycsb-vs-redis: unknown argument $1" >&2; usage ;;
  esac
done
mkdir -p "$out"

started_redis=""
cleanup() {
  ./target/release/acre cluster down --dir "$cluster_dir" --purge >/dev/null 2>&1 || true
  if [ -n "$started_redis" ]; then
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$started_redis" 2>/dev/null || true
  fi
}
trap cleanup EXIT

echo "== building acre (release)"
cargo build --release --quiet
acre=./target/release/acre

if ! command -v python3 >/dev/null; then
  echo "ycsb-vs-redis: python3 is needed to write the table" >&2; exit 2
fi

redis_db=0
if command -v redis-cli >/dev/null && redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "== using the redis server already on port $REDIS_PORT (database 15, emptied)"
  redis_db=15
else
  if ! command -v redis-server >/dev/null; then
    echo "== installing redis-server"
    if [ "$(id -u)" != 0 ]; then
      echo "ycsb-vs-redis: redis-server is not installed; install it (apt-get install redis-server) or run as root" >&2
      exit 2
    fi
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null
  fi
  echo "== starting redis-server on 127.0.0.1:$REDIS_PORT (no persistence)"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize no --logfile "$out/redis.log" &
  started_redis=$!
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$REDIS_PORT" ping >/dev/null
fi
redis_version=$(redis-cli -p "$REDIS_PORT" info server | sed -n 's/^redis_version:\([^\r]*\).*/\1/p')

common=(--records "$records" --threads "$threads" --duration "$duration" --warmup "$warmup")
for w in $workloads; do
  echo "== workload $w: acre (3 node processes, shm, 3 replicas)"
  $acre cluster down --dir "$cluster_dir" --purge >/dev/null 2>&1 || true
  $acre cluster up --dir "$cluster_dir" --transport shm --region-bytes $((256 << 20)) \
    --ring-bytes $((4 << 20)) >/dev/null
  $acre bench ycsb --workload "$w" "${common[@]}" --target "acre:$cluster_dir" \
    --json "$out/acre-$w.json"
  $acre cluster down --dir "$cluster_dir" --purge >/dev/null
  echo "== workload $w: redis $redis_version"
  $acre bench ycsb --workload "$w" "${common[@]}" --flush \
    --target "redis://127.0.0.1:$REDIS_PORT/$redis_db" --json "$out/redis-$w.json"
done

python3 - "$out" "$redis_version" "$records" "$threads" "$duration" $workloads <<'EOF' > "$out/ycsb-vs-redis.md"
import json, sys
out, redis_version, records, threads, duration, *workloads = sys.argv[1:]
print(f"YCSB, {records} records, {threads} client threads, {duration} per workload after warm-up.")
print(f"Acre: 3 node processes over shm, 3 replicas. Redis {redis_version}: one server on loopback, no persistence.\n")
print("| workload | acre ops/s | redis ops/s | acre / redis | acre p50 / p99 µs | redis p50 / p99 µs |")
print("| --- | ---: | ---: | ---: | --- | --- |")
def load(target, w):
    with open(f"{out}/{target}-{w}.json") as f:
        return json.load(f)["run"]
def latency(run):
    ops = [o for o in run["operations"] if o["count"] > 0]
    return ", ".join(f'{o["name"].lower()} {o["p50_us"]:.0f} / {o["p99_us"]:.0f}' for o in ops)
for w in workloads:
    a, r = load("acre", w), load("redis", w)
    ratio = a["throughput_ops_per_s"] / r["throughput_ops_per_s"]
    print(f'| {w.upper()} | {a["throughput_ops_per_s"]:,.0f} | {r["throughput_ops_per_s"]:,.0f} | {ratio:.2f}x | {latency(a)} | {latency(r)} |')
EOF
echo
cat "$out/ycsb-vs-redis.md"
echo
echo "table written to $out/ycsb-vs-redis.md"
