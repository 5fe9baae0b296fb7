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
P="lt$$"; DIR=$(mktemp -d); PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5; for n in h1 h2 vm1 vm2; do ip netns del "$P-$n" 2>/dev/null || true; done; rm -rf "$DIR"
}
trap cleanup EXIT
for n in h1 h2 vm1 vm2; do ip netns add "$P-$n"; ip -n "$P-$n" link set lo up; done
ip -n "$P-h1" link add u0 type veth peer name u0 netns "$P-h2"
for i in 1 2; do
  ip -n "$P-h$i" addr add "198.18.0.$i/24" dev u0; ip -n "$P-h$i" link set u0 up
  ip -n "$P-h$i" link add virbr0 type bridge; ip -n "$P-h$i" addr add "198.19.$i.1/24" dev virbr0; ip -n "$P-h$i" link set virbr0 up
  ip -n "$P-h$i" link add vnet0 type veth peer name eth0 netns "$P-vm$i"; ip -n "$P-h$i" link set vnet0 master virbr0 up
  ip -n "$P-vm$i" addr add "198.19.$i.10/24" dev eth0; ip -n "$P-vm$i" link set eth0 up; ip -n "$P-vm$i" route add default via "198.19.$i.1"
  ip netns exec "$P-h$i" sysctl -qw net.ipv4.ip_forward=1
done
(umask 077; head -c 32 /dev/urandom | base64 > $DIR/psk)
for i in 1 2; do cat > $DIR/mesh$i.toml <<EOT
[mesh]
psk_file = "psk"
[[host]]
name = "h1"
address = "198.18.0.1"
subnets = ["198.19.1.0/24"]
[[host]]
name = "h2"
address = "198.18.0.2"
subnets = ["198.19.2.0/24"]
EOT
ip netns exec "$P-h$i" env ${VMSECD_ENV:-} "$BIN" run --config $DIR/mesh$i.toml --host h$i > $DIR/v$i.log 2>&1 & PIDS+=($!)
done
for _ in $(seq 100); do ip netns exec "$P-vm1" ping -c1 -W0.2 198.19.2.10 >/dev/null 2>&1 && break; sleep 0.1; done
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
