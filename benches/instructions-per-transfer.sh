#!/usr/bin/env bash
# Instructions per committed bank transfer on an embedded 3-node cluster (local transport, 3
# replicas), counted by callgrind: the figure that does not drift with the machine's noise.
#
# For each commit mode it runs `acre bench bank --transport local --threads 1 --transfers N`
# under `valgrind --tool=callgrind` twice, with N = BASE and N = BASE + EXTRA, and prints
# (Ir(BASE + EXTRA) - Ir(BASE)) / EXTRA: the instructions of every thread of the process (the
# client's and the three nodes' workers) per committed transfer, the setup (the cluster, the
# accounts, the total read after the row) cancelling out. The headline leaves out waiting (the
# polls of an empty inbox or reply area before the doorbell sleep, whose count follows the
# threads' timing, not the work: tens of thousands of instructions per transfer that differ
# from run to run); the count with waiting is printed next to it. Then the functions that take
# the most of those instructions, exclusive (in the function itself) and inclusive (with what
# it calls), also as differences of the two runs per transfer, waiting included. The
# coordinator column is the client thread's share of the work (its Bank::transfer, without
# ReplyArea::wait): the steadiest number (within 0.2% from run to run here), where the work
# column moves by a few per cent (how many records a worker's wake-up finds changes its loop's
# turns).
#
# Usage: benches/instructions-per-transfer.sh [--transfers EXTRA] [--base BASE]
#                                             [--commit one-sided|messages] [--top 10] [--keep]
# Defaults: EXTRA 10000, BASE 2000, both commit modes, 10 functions: about 1.5 minutes here
# (--transfers 1000 --base 200 gives the same figures within 1% in half a minute, a smoke run).
# Builds the release binary first. The callgrind files go to target/instructions-per-transfer/
# and are removed at the end unless --keep.
set -euo pipefail
cd "$(dirname "$0")/.."

extra=10000
base=2000
modes="one-sided messages"
top=10
keep=""
out=target/instructions-per-transfer
# One callgrind run: ~1 minute for 12,000 transfers on this 2-core machine; the bound is wide.
run_timeout=900

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --transfers) extra=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --commit) modes=$2; shift 2 ;;
    --top) top=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage ;;
    *) echo "instructions-per-transfer: unknown argument $1" >&2; usage ;;
  esac
done
for n in "$extra" "$base" "$top"; do
  case "$n" in
    ''|*[!0-9]*|0) echo "instructions-per-transfer: $n is not a positive count" >&2; exit 2 ;;
  esac
done
for mode in $modes; do
  case "$mode" in
    one-sided|messages) ;;
    *) echo "instructions-per-transfer: --commit $mode: expected one-sided or messages" >&2; exit 2 ;;
  esac
done
for tool in valgrind callgrind_annotate; do
  if ! command -v "$tool" >/dev/null; then
    echo "instructions-per-transfer: $tool is not installed (apt-get install valgrind)" >&2
    exit 2
  fi
done

mkdir -p "$out"
cleanup() {
  if [ -z "$keep" ]; then rm -f "$out"/*.callgrind "$out"/*.log "$out"/*.annotate; fi
}
trap cleanup EXIT

echo "== building the release binary"
cargo build --release -q -p acre --bin acre

# Runs the fixed-count bank under callgrind: $1 mode, $2 transfers. Prints the file's Ir total.
count() {
  local mode=$1 transfers=$2
  local file="$out/$mode-$transfers.callgrind" log="$out/$mode-$transfers.log"
  # --fair-sched: threads take turns in a fixed order, so the workers' polling between two
  # transfers is the same from run to run.
  if ! timeout "$run_timeout" valgrind --tool=callgrind --fair-sched=yes \
      --callgrind-out-file="$file" \
      ./target/release/acre bench bank --transport local --threads 1 \
      --transfers "$transfers" --commit "$mode" >"$log" 2>&1; then
    echo "instructions-per-transfer: the run of $transfers $mode transfers failed:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  if ! grep -q "transfer with 1 threads: $transfers committed" "$log"; then
    echo "instructions-per-transfer: the run did not commit $transfers transfers:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  awk '/^(summary|totals):/ { print $2; exit }' "$file"
}

# Every function's Ir in a callgrind file, as "Ir<TAB>function" lines; $2 is yes for inclusive.
# callgrind_annotate lists a function once per source file its code came from (inlined code)
# and, inclusive, once more under the path its callers' debug info names: exclusive counts of
# one function are summed, inclusive ones are the largest of its lines (they overlap).
functions() {
  # The function table follows the sixth rule of dashes; its lines are "Ir (percent)
  # file:function [object]", and a function's name is kept without its file and object.
  callgrind_annotate --inclusive="$2" --threshold=100 --auto=no "$1" 2>/dev/null |
    awk -v inclusive="$2" '
      /^-+$/ { rule++; next }
      rule >= 6 && $1 ~ /^[0-9,]+$/ {
        ir = $1; gsub(",", "", ir)
        sub(/^ *[0-9,]+ +\([^)]*\) +/, "")
        sub(/ +\[[^]]*\]$/, "")
        sub(/^[^:]*:/, "")
        if (inclusive == "yes") { if (ir + 0 > ir_of[$0] + 0) ir_of[$0] = ir }
        else ir_of[$0] += ir
      }
      END { for (f in ir_of) print ir_of[f] "\t" f }'
}

# What a file spent in three places, inclusive, as "waiting coordinator": waiting is polling an
# empty inbox or reply area, spinning, then sleeping on the doorbell until a record or a reply
# arrives (the worker's Inbox::wait, the coordinator's ReplyArea::wait); how many polls a wait
# takes depends on the threads' timing, not on the work, so this part of the count varies from
# run to run. The coordinator is the client thread's Bank::transfer without its waiting.
parts() {
  functions "$1" yes |
    awk -F '\t' '$2 == "acre_engine::channel::Inbox::wait" { inbox = $1 }
                 $2 == "acre_txn::reply::ReplyArea::wait" { reply = $1 }
                 $2 == "acre_benches::bank::Bank::transfer" { transfer = $1 }
                 END { printf "%.0f %.0f\n", inbox + reply, transfer - reply }'
}

# The top functions of the difference of two files per transfer: $1 small, $2 large, $3 yes|no.
difference() {
  local small=$1 large=$2 inclusive=$3
  functions "$small" "$inclusive" >"$out/small.annotate"
  functions "$large" "$inclusive" >"$out/large.annotate"
  awk -F '\t' -v extra="$extra" -v top="$top" '
    FNR == NR { small[$2] += $1; next }
    { large[$2] += $1 }
    END {
      for (f in large) {
        # Every thread starts in these: inclusive, they only say how much ran in all threads.
        if (f ~ /^(start_thread|clone3?|std::sys::backtrace::__rust_begin_short_backtrace|core::ops::function::FnOnce::call_once\{\{vtable.shim\}\}|<std::sys::thread::unix::Thread>::new::thread_start)$/) continue
        d = (large[f] - small[f]) / extra
        if (d > 0) print d "\t" f
      }
    }' "$out/small.annotate" "$out/large.annotate" |
    sort -t "$(printf '\t')" -k1,1 -g -r |
    awk -F '\t' -v top="$top" 'NR <= top { printf "  %10.1f  %s\n", $1, $2 }'
}

summary=""
for mode in $modes; do
  echo "== $mode commits: $base and $((base + extra)) transfers under callgrind"
  started=$SECONDS
  small=$(count "$mode" "$base")
  large=$(count "$mode" "$((base + extra))")
  read -r small_wait small_coordinator < <(parts "$out/$mode-$base.callgrind")
  read -r large_wait large_coordinator < <(parts "$out/$mode-$((base + extra)).callgrind")
  per() { awk -v s="$1" -v l="$2" -v e="$extra" 'BEGIN { printf "%.0f", (l - s) / e }'; }
  all=$(per "$small" "$large")
  waits=$(per "$small_wait" "$large_wait")
  coordinator=$(per "$small_coordinator" "$large_coordinator")
  work=$((all - waits))
  echo "Ir($base) = $small, Ir($((base + extra))) = $large ($((SECONDS - started)) s)"
  echo "$mode: $work instructions per committed transfer, not counting waiting"
  echo "  ($all with waiting: $waits per transfer in Inbox::wait and ReplyArea::wait polls, which vary with timing;"
  echo "  $coordinator of them in the coordinator's Bank::transfer, the rest in the nodes' workers)"
  echo "top $top functions, exclusive instructions per transfer:"
  difference "$out/$mode-$base.callgrind" "$out/$mode-$((base + extra)).callgrind" no
  echo "top $top functions, inclusive instructions per transfer:"
  difference "$out/$mode-$base.callgrind" "$out/$mode-$((base + extra)).callgrind" yes
  summary="$summary$(printf '%-10s %8s %12s %14s %8s' "$mode" "$work" "$coordinator" "$all" "$waits")"$'\n'
done
echo "== instructions per committed transfer (local transport, 1 thread, 3 replicas)"
printf '%-10s %8s %12s %14s %8s\n' mode work coordinator "with waiting" waiting
printf '%s' "$summary"
