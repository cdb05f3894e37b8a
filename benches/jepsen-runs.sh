#!/usr/bin/env bash
# Many `acre jepsen` runs over a matrix of workloads and nemeses, one after the other, and the
# table of what they found: per workload and nemesis, the runs, how many were valid, the
# anomalies by type, the acknowledged writes lost, the operations ok / fail / info, the
# availability during faults (ok over everything that completed in the fault windows) and the
# time from each heal to the first ok operation invoked after it (median and max).
#
#   benches/jepsen-runs.sh [--runs 100] [--time-limit 60s] [--nodes 5]
#       [--workloads bank,list-append,register]
#       [--nemeses kill,pause,clock,bitflip,truncate,partition]
#       [--rate 500] [--concurrency 10] [--seed 1] [--out target/jepsen-runs] [--acre PATH]
#       [--first 0]
#
# Run i takes the (i mod combinations)-th workload and nemesis and seed SEED+i; partition runs
# go over tcp (they need root, `ip` and `nft`: without them they are left out, and the table
# says so), the others over shm. Each run's directory (history, results, report) is kept in
# OUT/run-<i>-<workload>-<nemesis>; the table is printed and written to OUT/table.md. A run
# that could not be done (exit 2) is counted apart, with its message. Exits 1 if any run found
# anomalies or lost writes, 2 if a run could not be done, else 0. --first I starts at run I (to
# go on with a batch that was stopped: the table covers every run directory in OUT).
set -euo pipefail

runs=100
time_limit=60s
nodes=5
workloads=bank,list-append,register
nemeses=kill,pause,clock,bitflip,truncate,partition
rate=500
concurrency=10
seed=1
out=target/jepsen-runs
acre=target/release/acre
first=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --time-limit) time_limit=$2; shift 2 ;;
        --nodes) nodes=$2; shift 2 ;;
        --workloads) workloads=$2; shift 2 ;;
        --nemeses) nemeses=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --acre) acre=$2; shift 2 ;;
        --first) first=$2; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "jepsen-runs.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ ! -x $acre ]]; then
    echo "jepsen-runs.sh: no acre binary at $acre: cargo build --release first" >&2
    exit 2
fi
if ! command -v python3 >/dev/null; then
    echo "jepsen-runs.sh: python3 is needed to write the table" >&2
    exit 2
fi
if [[ ! $runs =~ ^[1-9][0-9]*$ ]]; then
    echo "jepsen-runs.sh: --runs $runs: give a positive number of runs" >&2
    exit 2
fi
if [[ ! $first =~ ^[0-9]+$ ]] || ((first >= runs)); then
    echo "jepsen-runs.sh: --first $first: give a run number below --runs $runs" >&2
    exit 2
fi
IFS=, read -r -a workload_list <<< "$workloads"
IFS=, read -r -a nemesis_list <<< "$nemeses"
can_partition=1
if [[ $(id -u) != 0 ]] || ! command -v ip >/dev/null || ! command -v nft >/dev/null; then
    can_partition=0
fi
combos=()
for w in "${workload_list[@]}"; do
    for n in "${nemesis_list[@]}"; do
        if [[ $n == partition && $can_partition == 0 ]]; then
            continue
        fi
        combos+=("$w:$n")
    done
done
if [[ ${#combos[@]} == 0 ]]; then
    echo "jepsen-runs.sh: no workload and nemesis to run (partition needs root, ip and nft)" >&2
    exit 2
fi
mkdir -p "$out"
for ((i = first; i < runs; i++)); do
    combo=${combos[i % ${#combos[@]}]}
    workload=${combo%%:*}
    nemesis=${combo##*:}
    transport=shm
    if [[ $nemesis == partition ]]; then transport=tcp; fi
    dir="$out/run-$i-$workload-$nemesis"
    rm -rf "$dir"
    status=0
    "$acre" jepsen --workload "$workload" --nemesis "$nemesis" --transport "$transport" \
        --nodes "$nodes" --time-limit "$time_limit" --rate "$rate" \
        --concurrency "$concurrency" --seed $((seed + i)) --out "$dir" \
        > "$dir.out" 2> "$dir.err" || status=$?
    echo "$status" > "$dir.status"
    printf 'run %d/%d: %s with %s over %s: exit %d\n' $((i + 1)) "$runs" "$workload" \
        "$nemesis" "$transport" "$status" >&2
done
python3 - "$out" "$runs" "${workloads//,/ }" "$can_partition" <<'PY'
import json, os, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
rows, failed = {}, []
for name in sorted(os.listdir(out)):
    if not name.endswith(".status"):
        continue
    run = name[:-len(".status")]
    status = int(open(os.path.join(out, name)).read().strip() or 2)
    results_path = os.path.join(out, run, "results.json")
    if status == 2 or not os.path.exists(results_path):
        err = open(os.path.join(out, run + ".err")).read().strip().splitlines()
        failed.append((run, err[-1] if err else "no message"))
        continue
    r = json.load(open(results_path))
    key = (r["workload"], ",".join(r["nemesis"]) or "none")
    row = rows.setdefault(key, dict(runs=0, valid=0, anomalies={}, lost=0, ok=0, fail=0,
                                    info=0, avail=[], recovered=[]))
    row["runs"] += 1
    row["valid"] += r["valid"]
    for cls, n in r["anomalies"].items():
        row["anomalies"][cls] = row["anomalies"].get(cls, 0) + n
    row["lost"] += len(r["lost_writes"])
    for k in ("ok", "fail", "info"):
        row[k] += r["counts"][k]
    for f in r["faults"]:
        if f.get("availability") is not None:
            row["avail"].append(f["availability"])
        if f.get("recovered_after_s") is not None:
            row["recovered"].append(f["recovered_after_s"])
lines = ["| workload | nemesis | runs | valid | anomalies | lost writes | ok / fail / info | availability in faults (mean, min) | recovered after heal, s (median, max) |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for (w, n), row in sorted(rows.items()):
    anomalies = ", ".join(f"{c} {k}" for c, k in sorted(row["anomalies"].items())) or "none"
    avail = (f"{100 * statistics.mean(row['avail']):.0f}%, {100 * min(row['avail']):.0f}%"
             if row["avail"] else "-")
    rec = (f"{statistics.median(row['recovered']):.2f}, {max(row['recovered']):.2f}"
           if row["recovered"] else "-")
    lines.append(f"| {w} | {n} | {row['runs']} | {row['valid']} | {anomalies} | {row['lost']} "
                 f"| {row['ok']} / {row['fail']} / {row['info']} | {avail} | {rec} |")
total = sum(r["runs"] for r in rows.values())
lines.append("")
lines.append(f"{total} runs checked, {sum(r['valid'] for r in rows.values())} valid; "
             f"{len(failed)} could not be done.")
if sys.argv[4] == "0":
    lines.append("Partition runs left out: they need root, `ip` and `nft`.")
for run, message in failed:
    lines.append(f"- {run}: {message}")
table = "\n".join(lines)
print(table)
open(os.path.join(out, "table.md"), "w").write(table + "\n")
bad = any(r["valid"] < r["runs"] for r in rows.values())
sys.exit(2 if failed else (1 if bad else 0))
PY
