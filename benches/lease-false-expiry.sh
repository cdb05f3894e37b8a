#!/usr/bin/env bash
# False lease expiries per lease length: one shm cluster of 3 node processes (with the
# configuration manager) per lease length, all at once, first idle for --idle seconds, then under
# the bank load (one `acre bank` per cluster, 2 transfer threads) for --load seconds. No node is
# killed, so every reconfiguration that removes a node is a false expiry: a healthy node whose
# lease lapsed. Prints, per lease, the reconfigurations seen in each phase and the nodes removed.
#
#   benches/lease-false-expiry.sh [--leases 50,100,250] [--idle 600] [--load 600] [--acre PATH] [--keep]
#
# --keep stops the clusters but keeps their directories (/dev/shm/acre-lease-*: the node logs
# say when and why each suspicion happened).
#
# The shortest lease with none in both phases, with a margin, is the default of `acre cluster
# up --lease-ms` (docs/failures.md#leases).
set -euo pipefail

leases=50,100,250
idle=600
load=600
acre=target/release/acre
keep=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --leases) leases=$2; shift 2 ;;
        --idle) idle=$2; shift 2 ;;
        --load) load=$2; shift 2 ;;
        --acre) acre=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "lease-false-expiry.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ ! -x $acre ]]; then
    echo "lease-false-expiry.sh: no acre binary at $acre: cargo build --release first" >&2
    exit 2
fi
IFS=, read -r -a lease_list <<< "$leases"

dirs=()
cleanup() {
    for dir in "${dirs[@]}"; do
        if [[ $keep = 1 ]]; then
            "$acre" cluster down --dir "$dir" > /dev/null 2>&1 || true
        else
            "$acre" cluster down --dir "$dir" --purge > /dev/null 2>&1 || true
        fi
    done
}
trap cleanup EXIT

# The number of reconfigurations the CM recorded that removed a node, and which nodes.
removals() {
    local status=$1/cm-status.toml
    if [[ ! -f $status ]]; then echo "? (no status)"; return; fi
    local count nodes
    count=$(grep -c '^cause = "failure of' "$status" || true)
    nodes=$(grep '^cause = "failure of' "$status" | sed 's/cause = "failure of //; s/"//' | tr '\n' ' ')
    echo "$count ${nodes:-}"
}

for lease in "${lease_list[@]}"; do
    dir=/dev/shm/acre-lease-$lease-$$
    dirs+=("$dir")
    "$acre" cluster up --dir "$dir" --lease-ms "$lease" --ring-bytes 4194304 > /dev/null
done
echo "idle for ${idle} s with leases of ${leases} ms..." >&2
sleep "$idle"
declare -A idle_seen
for i in "${!lease_list[@]}"; do
    idle_seen[$i]=$(removals "${dirs[$i]}")
done

echo "bank load for ${load} s..." >&2
pids=()
for dir in "${dirs[@]}"; do
    "$acre" bank --dir "$dir" --seconds "$load" --threads 2 > "$dir.bank" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || true; done

printf '%-10s %-28s %-28s %s\n' "lease ms" "removals idle (nodes)" "removals idle+load (nodes)" "bank"
for i in "${!lease_list[@]}"; do
    dir=${dirs[$i]}
    bank=$(grep -m1 '^transfers:' "$dir.bank" || echo "failed: $(tail -1 "$dir.bank")")
    printf '%-10s %-28s %-28s %s\n' "${lease_list[$i]}" "${idle_seen[$i]}" "$(removals "$dir")" "$bank"
    rm -f "$dir.bank"
done
