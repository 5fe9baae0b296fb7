#!/usr/bin/env bash
# Where an idle ping's time goes through vmsecd (issue 15): the two-hypervisor namespace topology of e2e.sh, the
# minimal mesh file, 100 pings 20 ms apart from VM1 to VM2, captured on h1 with nanosecond timestamps; prints the
# medians of: h1 from the TUN to the ESP datagram leaving, the peer's whole turn (ESP out to the reply's ESP in),
# h1 from the reply's ESP to the VM. Run as root; not a test.
# Uses only 198.18.0.0/15 inside namespaces it creates (names end in its PID); removes them on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/vmsecd}
PREFIX=lat
# The topology, the daemons and their removal on exit.
. "$ROOT/benches/two_hosts.sh"
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
