#!/usr/bin/env bash
# Per-hop breakdown of an idle ping through vmsecd (issue 15): the two-hypervisor namespace topology of e2e.sh
# with the minimal mesh file, 100 pings 20 ms apart from VM1 to VM2, recorded with `perf record -a` on the
# scheduler, syscall and network tracepoints; benches/ping_trace.py turns the record into per-hop medians
# (wake-up latency, work, syscalls). Run as root; not a test. Extra daemon environment: VMSECD_ENV="K=V ...";
# BIN=path of the vmsecd binary; COUNT=pings; OUT=file to keep the perf script text in; PERF_EXTRA=more events
# to record (e.g. uprobes added with `perf probe -x BIN`); PROFILE=1 records a flat CPU profile instead.
# Uses only 198.18.0.0/15 inside namespaces it creates (names end in its PID); removes them on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/vmsecd}
COUNT=${COUNT:-100}
OUT=${OUT:-}
PREFIX=lt
# The topology, the daemons and their removal on exit.
. "$ROOT/benches/two_hosts.sh"
sleep 1
if [ -n "${PROFILE:-}" ]; then
  # A flat profile of the daemons instead of the trace: where their time goes while they handle the pings.
  perf record -q -F max -e cpu-clock -p "${PIDS[0]},${PIDS[1]}" -o $DIR/prof.data -- ip netns exec "$P-vm1" ping -c "$COUNT" -i 0.02 198.19.2.10 | tail -1
  perf report -i $DIR/prof.data --stdio --sort ${PROFILE_SORT:-sym} 2>/dev/null | grep -v '^#' | grep -v '^$' | head -${PROFILE_LINES:-40}
  exit 0
fi
perf record -q -a -m 2048 -o $DIR/perf.data \
  -e ${PERF_EXTRA:-sched:sched_wakeup},sched:sched_wakeup,sched:sched_switch,sched:sched_waking,raw_syscalls:sys_enter,raw_syscalls:sys_exit,net:net_dev_start_xmit,net:netif_rx,irq:softirq_entry,irq:softirq_exit \
  -- ip netns exec "$P-vm1" ping -c "$COUNT" -i 0.02 198.19.2.10 > $DIR/ping.txt 2>&1 || true
tail -1 $DIR/ping.txt
perf script --ns -i $DIR/perf.data -F comm,pid,tid,cpu,time,event,trace 2>/dev/null > $DIR/trace.txt
[ -n "$OUT" ] && cp $DIR/trace.txt "$OUT"
python3 "$ROOT/benches/ping_trace.py" $DIR/trace.txt "${PIDS[0]}" "${PIDS[1]}"
