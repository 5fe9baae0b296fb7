#!/usr/bin/env bash
# Where an idle ping's time goes through vmsecd (issue 15): the two-hypervisor namespace topology of e2e.sh, the
# minimal mesh file, 100 pings 20 ms apart from VM1 to VM2, captured on h1 with nanosecond timestamps; prints the
# medians of: h1 from the TUN to the ESP datagram leaving, the peer's whole turn (ESP out to the reply's ESP in),
# h1 from the reply's ESP to the VM. Run as root; not a test.
# Uses only 198.18.0.0/15 inside namespaces it creates (names end in its PID); removes them on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/vmsecd}
P="lat$$"; DIR=$(mktemp -d); PIDS=()
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
ip netns exec "$P-h$i" "$BIN" run --config $DIR/mesh$i.toml --host h$i > $DIR/v$i.log 2>&1 & PIDS+=($!)
done
for _ in $(seq 100); do ip netns exec "$P-vm1" ping -c1 -W0.2 198.19.2.10 >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "$P-h1" tcpdump -i any -nn -j adapter_unsynced --time-stamp-precision=nano -w $DIR/h1.pcap 'icmp or udp port 4500' >/dev/null 2>&1 & PIDS+=($!)
sleep 1
ip netns exec "$P-vm1" ping -c 100 -i 0.02 198.19.2.10 | tail -1
sleep 0.5; kill ${PIDS[-1]}; sleep 0.5
tcpdump -nn -r $DIR/h1.pcap --nano -tt 2>/dev/null | python3 -c '
import sys, statistics as st
rows=[l.split() for l in sys.stdin]
tx=[];peer=[];rx=[];tot=[]
i=0
while i < len(rows):
    r=rows[i]
    if r[2]=="In" and r[4]=="198.19.1.10":
        t0=float(r[0]); j=i+1; tun=out=inn=fin=None
        while j < len(rows) and j < i+12:
            x=rows[j]
            if x[2]=="Out" and x[4]=="198.19.1.10" and tun is None: tun=float(x[0])
            if x[4].startswith("198.18.0.1.4500") and out is None: out=float(x[0])
            if x[4].startswith("198.18.0.2.4500") and inn is None: inn=float(x[0])
            if x[2]=="Out" and x[4]=="198.19.2.10": fin=float(x[0])
            j+=1
        if None not in (tun,out,inn,fin):
            tx.append((out-tun)*1e6); peer.append((inn-out)*1e6); rx.append((fin-inn)*1e6); tot.append((fin-t0)*1e6)
        i=j
    else: i+=1
m=lambda v: "%.0f" % st.median(v) if v else "-"
print("pings", len(tot), "median us: h1 TUN->ESP out", m(tx), " ESP out->reply ESP in (h2)", m(peer), " h1 ESP in->VM", m(rx), " total at h1", m(tot))
'
