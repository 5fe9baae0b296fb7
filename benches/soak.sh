#!/usr/bin/env bash
# Soak test (issue 12): long iperf3 load between two VMs through two vmsecd with short lifetimes (Child SA 60 s,
# IKE SA 180 s, so it rekeys all the time) and a bounded background flood of spoofed IKE_SA_INIT requests and
# garbage ESP at both daemons. Run as root; a script, not a test, not run in CI.
#
# Every 10 s it samples, for both daemons, VmRSS and VmHWM (/proc/PID/status), the open file descriptors
# (/proc/PID/fd), and the tunnel's IKE and inbound Child SA SPIs (`vmsecd status --json`) into a CSV. At the end
# it prints min/max RSS and fd counts and whether they stayed flat (last-quarter max <= first-quarter max +
# 10 %, and fds at most one above), and iperf3's TCP retransmits and UDP loss, split into the 10-second
# intervals that saw a rekey and those that did not.
#
# Usage: benches/soak.sh [--minutes N] [--bin PATH] [--tcp-rate R] [--udp-rate R] [--flood-pps N] [--out DIR]
#   --minutes N     load duration (default 30)
#   --bin PATH      the vmsecd binary (default target/release/vmsecd, else target/debug/vmsecd)
#   --tcp-rate R    iperf3 TCP VM1 -> VM2, e.g. 200M (default 100M; 0 = unlimited)
#   --udp-rate R    iperf3 UDP VM2 -> VM1, 1200-byte datagrams (default 10M)
#   --flood-pps N   flood datagrams per second, both daemons together (default 200): half IKE_SA_INIT
#                   requests (valid x25519 proposals, fresh SPIs) from 16,384 spoofed addresses in
#                   198.18.64.0/18 and 1 in 50 from the other daemon's own address, 40 % ESP in UDP 4500 and
#                   10 % raw ESP with random SPIs. Bounded: it stops with the load, at most N x duration.
#   --out DIR       keep the CSV, logs and iperf3 JSON there (default: a temporary directory, printed)
#
# Topology (shared/conventions.md): an underlay switch namespace with h1 (198.18.0.1), h2 (198.18.0.2) and the
# flood source atk (198.18.0.100); VM namespaces vm1 (198.19.1.10) behind h1 and vm2 (198.19.2.10) behind h2.
# h1 and h2 route 198.18.0.0/15 via atk, which does not forward: answers to spoofed addresses end there.
# Uses only 198.18.0.0/15 inside namespaces it creates (names end in its PID); removes them, and ends the
# processes it started (by PID), on every exit path.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MINUTES=30
BIN=""
TCP_RATE=100M
UDP_RATE=10M
FLOOD_PPS=200
OUT=""
usage() { sed -n '2,21p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift ;;
    --bin) BIN="$2"; shift ;;
    --tcp-rate) TCP_RATE="$2"; shift ;;
    --udp-rate) UDP_RATE="$2"; shift ;;
    --flood-pps) FLOOD_PPS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) usage ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for t in iperf3 python3 ip; do command -v "$t" >/dev/null || { echo "$t is missing" >&2; exit 1; }; done
if [ -z "$BIN" ]; then
  BIN=$ROOT/target/release/vmsecd
  [ -x "$BIN" ] || BIN=$ROOT/target/debug/vmsecd
fi
[ -x "$BIN" ] || { echo "no vmsecd binary at $BIN: cargo build --release -p vmsecd" >&2; exit 1; }
case "$MINUTES" in ''|*[!0-9]*) echo "--minutes takes a whole number" >&2; exit 2 ;; esac
SECS=$((MINUTES * 60))

P="soak$$"
if [ -n "$OUT" ]; then mkdir -p "$OUT"; DIR=$(cd "$OUT" && pwd); else DIR=$(mktemp -d); fi
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$ns"; done
  echo "# results in $DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- topology -------------------------------------------------------------------------------------------
for n in ul h1 h2 atk vm1 vm2; do ip netns add "$P-$n"; ip -n "$P-$n" link set lo up; done
ip -n "$P-ul" link add br0 type bridge; ip -n "$P-ul" link set br0 up
i=0
for n in h1 h2 atk; do
  i=$((i + 1)); addr=198.18.0.$i; [ "$n" = atk ] && addr=198.18.0.100
  ip -n "$P-ul" link add "p$i" type veth peer name u0 netns "$P-$n"
  ip -n "$P-ul" link set "p$i" master br0 up
  ip -n "$P-$n" addr add "$addr/24" dev u0; ip -n "$P-$n" link set u0 up
done
for i in 1 2; do
  ip -n "$P-h$i" route add 198.18.0.0/15 via 198.18.0.100
  ip -n "$P-h$i" link add virbr0 type bridge; ip -n "$P-h$i" addr add "198.19.$i.1/24" dev virbr0
  ip -n "$P-h$i" link set virbr0 up
  ip -n "$P-h$i" link add vnet0 type veth peer name eth0 netns "$P-vm$i"; ip -n "$P-h$i" link set vnet0 master virbr0 up
  ip -n "$P-vm$i" addr add "198.19.$i.10/24" dev eth0; ip -n "$P-vm$i" link set eth0 up
  ip -n "$P-vm$i" route add default via "198.19.$i.1"
  ip netns exec "$P-h$i" sysctl -qw net.ipv4.ip_forward=1
done

# --- vmsecd -----------------------------------------------------------------------------------------------
( umask 077; head -c 32 /dev/urandom | base64 > "$DIR/psk" )
cat > "$DIR/mesh.toml" <<EOT
[mesh]
psk_file = "psk"
encap = "udp"
child_lifetime = "60s"
ike_lifetime = "180s"
rekey_margin = "20s"
[[host]]
name = "h1"
address = "198.18.0.1"
subnets = ["198.19.1.0/24"]
[[host]]
name = "h2"
address = "198.18.0.2"
subnets = ["198.19.2.0/24"]
EOT
declare -A VPID
for i in 1 2; do
  ip netns exec "$P-h$i" env RUST_LOG=info "$BIN" run --config "$DIR/mesh.toml" --host "h$i" > "$DIR/vmsecd-h$i.log" 2>&1 &
  VPID[$i]=$!; PIDS+=($!)
done
status() { ip netns exec "$P-h$1" "$BIN" status --json 2>/dev/null; }
for _ in $(seq 300); do
  up=0
  for i in 1 2; do status "$i" | grep -q '"established"' && up=$((up + 1)); done
  [ "$up" = 2 ] && break
  sleep 0.1
done
[ "$up" = 2 ] || { echo "the tunnel did not come up; logs in $DIR" >&2; exit 1; }
ip netns exec "$P-vm1" ping -c 3 -i 0.2 -W 1 198.19.2.10 >/dev/null || { echo "VM1 cannot reach VM2" >&2; exit 1; }
echo "# vmsecd up ($BIN); load for $MINUTES min; TCP $TCP_RATE, UDP $UDP_RATE, flood $FLOOD_PPS/s; in $DIR"

# --- load -------------------------------------------------------------------------------------------------
ip netns exec "$P-vm2" iperf3 -s -J -p 5201 -B 198.19.2.10 > /dev/null 2>&1 & PIDS+=($!)
ip netns exec "$P-vm1" iperf3 -s -J -p 5202 -B 198.19.1.10 > /dev/null 2>&1 & PIDS+=($!)
sleep 1
T0=$(date +%s.%N)
ip netns exec "$P-vm1" iperf3 -c 198.19.2.10 -p 5201 -t "$SECS" -i 10 -b "$TCP_RATE" --json \
  --logfile "$DIR/iperf-tcp.json" & TCP_PID=$!; PIDS+=($!)
ip netns exec "$P-vm2" iperf3 -c 198.19.1.10 -p 5202 -u -l 1200 -t "$SECS" -i 10 -b "$UDP_RATE" --json --get-server-output \
  --logfile "$DIR/iperf-udp.json" & UDP_PID=$!; PIDS+=($!)

# --- flood ------------------------------------------------------------------------------------------------
cat > "$DIR/flood.py" <<'EOF'
# Bounded flood at both daemons from one namespace: spoofed IKE_SA_INIT requests and garbage ESP.
import os, random, socket, struct, sys, time
pps, secs = int(sys.argv[1]), float(sys.argv[2])
targets = [("198.18.0.1", "198.18.0.2"), ("198.18.0.2", "198.18.0.1")]  # (daemon, its peer)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def ip4(src, dst, proto, payload):
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload
def udp(sport, dport, data):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
def transform(last, ttype, tid, attrs=b""):
    return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), ttype, 0, tid) + attrs
def ike_sa_init():
    t = (transform(False, 1, 20, struct.pack("!HH", 0x800E, 128))   # ENCR AES-GCM-16, 128-bit key
         + transform(False, 2, 5)                                    # PRF HMAC-SHA2-256
         + transform(True, 4, 31))                                   # DH Curve25519
    prop = struct.pack("!BBHBBBB", 0, 0, 8 + len(t), 1, 1, 0, 3) + t
    sa = struct.pack("!BBH", 34, 0, 4 + len(prop)) + prop
    ke = struct.pack("!BBHHH", 40, 0, 8 + 32, 31, 0) + os.urandom(32)
    nonce = struct.pack("!BBH", 0, 0, 4 + 32) + os.urandom(32)
    body = sa + ke + nonce
    hdr = os.urandom(8) + bytes(8) + struct.pack("!BBBBII", 33, 0x20, 34, 0x08, 0, 28 + len(body))
    return hdr + body
def garbage_esp():
    spi = random.randrange(1, 2**32)
    return struct.pack("!II", spi, random.randrange(1, 2**32)) + os.urandom(random.randrange(16, 1400))
end = time.monotonic() + secs
sent = {"ike_sa_init": 0, "esp_udp": 0, "esp_raw": 0}
tick = 1.0 / pps
nxt = time.monotonic()
while time.monotonic() < end:
    dst, peer = random.choice(targets)
    r = random.random()
    try:
        if r < 0.5:
            src = peer if random.random() < 0.02 else "198.18.%d.%d" % (random.randrange(64, 128), random.randrange(1, 255))
            s.sendto(ip4(src, dst, 17, udp(500, 500, ike_sa_init())), (dst, 0)); sent["ike_sa_init"] += 1
        elif r < 0.9:
            src = "198.18.%d.%d" % (random.randrange(64, 128), random.randrange(1, 255))
            s.sendto(ip4(src, dst, 17, udp(4500, 4500, garbage_esp())), (dst, 0)); sent["esp_udp"] += 1
        else:
            src = "198.18.%d.%d" % (random.randrange(64, 128), random.randrange(1, 255))
            s.sendto(ip4(src, dst, 50, garbage_esp()), (dst, 0)); sent["esp_raw"] += 1
    except OSError:
        pass
    nxt += tick
    d = nxt - time.monotonic()
    if d > 0:
        time.sleep(d)
print(" ".join("%s=%d" % kv for kv in sent.items()), flush=True)
EOF
if [ "$FLOOD_PPS" -gt 0 ]; then
  ip netns exec "$P-atk" python3 "$DIR/flood.py" "$FLOOD_PPS" "$SECS" > "$DIR/flood.out" 2>&1 & PIDS+=($!)
fi

# --- sampling ---------------------------------------------------------------------------------------------
CSV=$DIR/samples.csv
echo "t_s,host,pid,rss_kb,hwm_kb,fds,state,ike_spi_i,child_spi_in,no_sa_in" > "$CSV"
sample() {
  local t i pid rss hwm fds st
  t=$(python3 -c "import time; print(round(time.time() - $T0))")
  for i in 1 2; do
    pid=${VPID[$i]}
    if ! kill -0 "$pid" 2>/dev/null; then echo "$t,h$i,$pid,dead,dead,dead,dead,,," >> "$CSV"; continue; fi
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
    fds=$(ls "/proc/$pid/fd" | wc -l)
    st=$(status "$i" | python3 -c '
import json, sys
try:
    s = json.load(sys.stdin); p = s["peers"][0]
    ike = (p.get("ike") or {}).get("spi_i", "")
    ch = ";".join(c["spi_in"] for c in p.get("children", []))
    print("%s,%s,%s,%d" % (p["state"], ike, ch, s["drops"]["no_sa_in"]))
except Exception:
    print("no-status,,,")')
    echo "$t,h$i,$pid,$rss,$hwm,$fds,$st" >> "$CSV"
  done
}
while kill -0 "$TCP_PID" 2>/dev/null || kill -0 "$UDP_PID" 2>/dev/null; do
  sample
  for _ in $(seq 100); do
    kill -0 "$TCP_PID" 2>/dev/null || kill -0 "$UDP_PID" 2>/dev/null || break
    sleep 0.1
  done
done
sample
wait "$TCP_PID" || echo "# iperf3 TCP client failed (see $DIR/iperf-tcp.json)"
wait "$UDP_PID" || echo "# iperf3 UDP client failed (see $DIR/iperf-udp.json)"
sleep 1
echo "# flood: $(cat "$DIR/flood.out" 2>/dev/null || echo none)"

# --- report -----------------------------------------------------------------------------------------------
python3 - "$DIR" "$T0" <<'EOF'
import csv, datetime, json, sys
d, t0 = sys.argv[1], float(sys.argv[2])
rows = list(csv.DictReader(open(d + "/samples.csv")))
flat_all = True
for h in ("h1", "h2"):
    r = [x for x in rows if x["host"] == h and x["rss_kb"] not in ("dead", "")]
    dead = any(x["rss_kb"] == "dead" for x in rows if x["host"] == h)
    if not r:
        print(f"{h}: no samples"); flat_all = False; continue
    q = max(1, len(r) // 4)
    first, last = r[:q], r[-q:]
    out = [f"{h}: {len(r)} samples{' DIED' if dead else ''}"]
    for k, unit in (("rss_kb", "KiB"), ("hwm_kb", "KiB"), ("fds", "")):
        v = [int(x[k]) for x in r]
        f, l = max(int(x[k]) for x in first), max(int(x[k]) for x in last)
        flat = l <= f * 1.10 and (k != "fds" or l <= f + 1)
        flat_all &= flat
        out.append(f"{k} min {min(v)} max {max(v)} {unit} (first-quarter max {f}, last-quarter max {l}: "
                   f"{'flat' if flat else 'GROWING'})")
    states = {x["state"] for x in r}
    ikes = {x["ike_spi_i"] for x in r if x["ike_spi_i"]}
    children = {c for x in r for c in x["child_spi_in"].split(";") if c}
    out.append(f"states seen {sorted(states)}; {len(ikes)} IKE SAs and {len(children)} inbound Child SAs sampled; "
               f"no_sa_in at end {r[-1]['no_sa_in']}")
    flat_all &= not dead
    print("\n  ".join(out))

def rekey_times(log):
    ts = []
    for line in open(log, errors="replace"):
        if "SA rekeyed" in line:
            stamp = line.split()[0].rstrip("Z")
            try:
                t = datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc).timestamp()
            except ValueError:
                continue
            ts.append((t - t0, "IKE" if "IKE SA rekeyed" in line else "Child"))
    return ts
rk = rekey_times(d + "/vmsecd-h1.log")
print(f"rekeys logged by h1: {sum(1 for _, k in rk if k == 'Child')} Child SA, {sum(1 for _, k in rk if k == 'IKE')} IKE SA")

def intervals(path):
    try:
        j = json.load(open(path))
    except Exception as e:
        print(f"{path}: {e}"); return None, None
    return j, [iv["sum"] for iv in j.get("intervals", [])]
def has_rekey(s):
    return any(s["start"] - 1 <= t < s["end"] + 1 for t, _ in rk)
j, ivs = intervals(d + "/iperf-tcp.json")
if ivs:
    with_rk = [s for s in ivs if has_rekey(s)]
    without = [s for s in ivs if not has_rekey(s)]
    retr = lambda xs: sum(s.get("retransmits", 0) for s in xs)
    mbps = [s["bits_per_second"] / 1e6 for s in ivs]
    print(f"TCP VM1->VM2: {j['end']['sum_received']['bytes'] / 1e9:.2f} GB, {len(ivs)} intervals of 10 s, "
          f"{min(mbps):.0f}-{max(mbps):.0f} Mbit/s per interval; retransmits {retr(ivs)} "
          f"({retr(with_rk)} in {len(with_rk)} intervals with a rekey, {retr(without)} in {len(without)} without); "
          f"intervals with no data: {sum(1 for s in ivs if s['bytes'] == 0)}")
j, _ = intervals(d + "/iperf-udp.json")
# Loss per interval is known to the receiving server only: its report comes back with --get-server-output.
ivs = [iv["sum"] for iv in (j or {}).get("server_output_json", {}).get("intervals", [])]
if ivs:
    with_rk = [s for s in ivs if has_rekey(s)]
    without = [s for s in ivs if not has_rekey(s)]
    lost = lambda xs: sum(s.get("lost_packets", 0) for s in xs)
    tot = j["end"]["sum"]
    print(f"UDP VM2->VM1: {tot.get('packets', 0)} datagrams, lost {tot.get('lost_packets', 0)} "
          f"({tot.get('lost_percent', 0):.3f} %): {lost(with_rk)} in {len(with_rk)} intervals with a rekey, "
          f"{lost(without)} in {len(without)} without; out of order {tot.get('out_of_order', 0)}")
print("RSS and fds flat on both daemons" if flat_all else "NOT FLAT (or a daemon died): see samples.csv")
EOF
