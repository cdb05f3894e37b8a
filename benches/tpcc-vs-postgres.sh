#!/usr/bin/env bash
# TPC-C's full mix against Acre and PostgreSQL with the same driver and the same settings
# (warehouses, threads, seconds, seed), side by side, every consistency condition checked after
# each load and each run (`acre bench tpcc` exits 1 on a violation, which stops this script).
#
# Acre runs as 3 node processes over shared memory with 3 replicas of every region (started with
# `acre cluster up` and stopped after each row), and as the embedded cluster. PostgreSQL is the
# server already on 127.0.0.1:$PG_PORT (database postgres as user postgres, trust; the bench drops
# and creates only the nine TPC-C tables), or one this script installs (apt, as root) and
# starts: initdb in a temporary directory as the postgres user, trust authentication, listening
# on 127.0.0.1 on a free port, durability settings at their defaults (fsync and
# synchronous_commit on: a commit waits for its WAL record to reach the disk); it runs at
# SERIALIZABLE and at READ COMMITTED. The script stops only what it started, and says all this
# in the table.
#
# Usage: benches/tpcc-vs-postgres.sh [--warehouses 1,2,4] [--threads 2,4] [--seconds 60]
#                                    [--warmup 10] [--seed 1] [--out DIR]
# Writes DIR/tpcc-vs-postgres.md (the table) and every run's JSON results into DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

warehouses=1,2,4
threads=2,4
seconds=60
warmup=10
seed=1
out=target/tpcc-vs-postgres
PG_PORT=${PG_PORT:-5432}
cluster_dir=/dev/shm/acre-tpcc-vs-postgres
# Every run is bounded: the load of up to 4 warehouses, warm-up, run and two checks.
run_timeout=3600

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --warehouses) warehouses=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "tpcc-vs-postgres: unknown argument $1" >&2; usage ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

script=tpcc-vs-postgres
# shellcheck source=benches/peers-lib.sh
. benches/peers-lib.sh
cleanup() {
  ./target/release/acre cluster down --dir "$cluster_dir" --purge >/dev/null 2>&1 || true
  stop_started_postgres
}
trap cleanup EXIT

if ! command -v python3 >/dev/null; then
  echo "tpcc-vs-postgres: python3 is needed to write the table" >&2; exit 2
fi

echo "== building acre (release)"
cargo build --release --quiet
acre=./target/release/acre

start_postgres "the nine TPC-C tables"

# Regions of 256 MiB hold one loaded warehouse each (about 160 MiB); a 3-node cluster gets
# enough of them for the warehouses and the orders of the run.
regions_for() {
  local w=$1
  echo $(( (w * 160 + (seconds + warmup) * 20 + 255) / 256 / 3 + 1 ))
}

IFS=, read -r -a warehouse_list <<<"$warehouses"
IFS=, read -r -a thread_list <<<"$threads"
for w in "${warehouse_list[@]}"; do
  for t in "${thread_list[@]}"; do
    common=(--warehouses "$w" --threads "$t" --duration "${seconds}s" --warmup "${warmup}s" --seed "$seed")
    echo "== acre, 3 node processes (shm, 3 replicas): $w warehouses, $t threads"
    $acre cluster down --dir "$cluster_dir" --purge >/dev/null 2>&1 || true
    $acre cluster up --dir "$cluster_dir" --transport shm --ring-bytes $((4 << 20)) \
      --region-bytes $((256 << 20)) --regions-per-node "$(regions_for "$w")" >/dev/null
    timeout "$run_timeout" $acre bench tpcc "${common[@]}" --target "acre:$cluster_dir" \
      --json "$out/acre-w$w-t$t.json"
    $acre cluster down --dir "$cluster_dir" --purge >/dev/null
    echo "== acre, embedded cluster (3 replicas): $w warehouses, $t threads"
    timeout "$run_timeout" $acre bench tpcc "${common[@]}" --target acre \
      --json "$out/acre-embedded-w$w-t$t.json"
    for isolation in serializable read-committed; do
      echo "== postgresql ($isolation): $w warehouses, $t threads"
      timeout "$run_timeout" $acre bench tpcc "${common[@]}" --flush --isolation "$isolation" \
        --target "$pg_url" --json "$out/postgres-$isolation-w$w-t$t.json"
    done
  done
done

python3 - "$out" "$pg_setup" "$warehouses" "$threads" <<'PY' > "$out/tpcc-vs-postgres.md"
import json, sys
out, pg_setup, warehouses, threads = sys.argv[1:]
targets = (("acre, 3 processes", "acre"), ("acre, embedded", "acre-embedded"),
           ("postgres SERIALIZABLE", "postgres-serializable"),
           ("postgres READ COMMITTED", "postgres-read-committed"))
print("TPC-C, full mix 45/43/4/4/4 without keying or think times; every consistency condition "
      "(clause 3.3.2, 1-12) held after every load and every run.\n")
first = None
for w in warehouses.split(","):
    for t in threads.split(","):
        rows = {}
        for name, file in targets:
            with open(f"{out}/{file}-w{w}-t{t}.json") as f:
                rows[name] = json.load(f)
        if first is None:
            first = rows
            for name, r in rows.items():
                print(f"- {name}: {r['description']}")
            print(f"- PostgreSQL setup: {pg_setup}.\n")
            print("| W | threads | target | new-order/s | tpmC | abort % | new-order p50 ms | p99 ms | load s | acre (processes) / this |")
            print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        base = rows["acre, 3 processes"]["new_order_per_second"]
        for name, r in rows.items():
            txns = r["transactions"].values()
            committed = sum(x["committed"] for x in txns)
            aborted = sum(x["aborted"] for x in txns)
            rate = 100 * aborted / (committed + aborted) if committed + aborted else 0
            no = r["transactions"]["new-order"]
            ratio = base / r["new_order_per_second"] if r["new_order_per_second"] else float("inf")
            print(f"| {w} | {t} | {name} | {r['new_order_per_second']:,.0f} | {r['tpmc']:,.0f} | "
                  f"{rate:.2f} | {no['p50_us'] / 1000:.2f} | {no['p99_us'] / 1000:.2f} | "
                  f"{r['load_seconds']:.0f} | {ratio:.1f}x |")
PY
echo
cat "$out/tpcc-vs-postgres.md"
echo "table written to $out/tpcc-vs-postgres.md"
