#!/usr/bin/env bash
# End-to-end datapath benchmark (issue 6). Run as root; not a test, not run in CI.
#
# Builds the two-hypervisor namespace topology of shared/conventions.md once (underlay veth 198.18.0.1/.2,
# bridges virbr0 at 198.19.N.1, one VM namespace at 198.19.N.10 behind each) and measures, one configuration
# after another on that topology:
#   plain       plain routing, no encryption (the ceiling)
#   swan        strongSwan 5.9 <-> strongSwan, userspace ESP (kernel-libipsec), aes128gcm16, ESP in UDP
#   vmsecd-mesh vmsecd <-> vmsecd with the README's minimal mesh file (no `encap` key: `auto`), what a new user
#               gets: ESP in UDP 4500 agreed by vmsecd's Vendor ID (raw ESP before that existed)
#   vmsecd      vmsecd <-> vmsecd, aes128gcm16, ESP in UDP 4500
#   vmsecd-2w   as vmsecd, with `workers = 2`: two TUN queues, a transmit thread for the second
#   vmsecd-chacha  vmsecd <-> vmsecd, chacha20poly1305, ESP in UDP 4500
#   vmsecd-raw  vmsecd <-> vmsecd, aes128gcm16, raw ESP (IP protocol 50), sent through the AF_PACKET ring
#   vmsecd-raw-socket  as vmsecd-raw with raw_tx = "socket": raw ESP sent with sendmmsg (before issue 15)
#   vmsecd-raw-xdp  as vmsecd-raw with raw_rx = "xdp": raw ESP received through AF_XDP (generic XDP)
#   vmsecd-raw-xdpn as vmsecd-raw with raw_rx = "xdp-native": the XDP program in the veth driver
#   vmsecd-udp-xdp  as vmsecd (ESP in UDP) with raw_rx = "xdp": what the generic XDP program costs other traffic
#   vmsecd-swan vmsecd (h1) <-> strongSwan (h2), aes128gcm16
#   boringtun   boringtun-cli <-> boringtun-cli, WG_THREADS=1 (its fastest setting here)
#   wggo        wireguard-go <-> wireguard-go (Debian's)
# For each: iperf3 TCP VM1->VM2 single stream, VM2->VM1 single stream (-R), 4 streams; ping RTT p50 at idle;
# CPU seconds per GB moved (utime+stime of the tunnel processes from /proc/PID/task/*/stat, all threads, over
# the three iperf3 runs; kernel forwarding work in softirq is not attributed, so plain routing shows "-"), and
# the tunnel processes' CPU in % of one
# core over 3 s without traffic ("idle CPU") and during the 50 pings ("ping CPU").
#
# Usage: benches/e2e.sh [--seconds N] [--only a,b,...] [--json FILE] [--bin PATH] [--runs N] [--allocs]
#   --runs N   repeat every iperf3 measurement N times and report the median (default 1)
#   --allocs   for the vmsecd configurations, count the heap allocations (libc malloc and realloc, through perf
#              uprobes) of the datapath threads (`vmsecd`, `vmsecd-tx*`; not the blocking pool that runs the
#              firewall checks) over the three iperf3 runs; the datapath promises none per packet
# Uses only 198.18.0.0/15 inside namespaces it creates (names end in its PID); removes them, and ends the
# processes it started (by PID), on every exit path.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/vmsecd
SECS=10
RUNS=1
ONLY=""
JSON=""
ALLOCS=0
BORINGTUN=${BORINGTUN:-$(command -v boringtun-cli || echo /tmp/bt-root/bin/boringtun-cli)}
usage() { echo "usage: $0 [--seconds N] [--runs N] [--only plain,swan,vmsecd-mesh,vmsecd,vmsecd-2w,vmsecd-chacha,vmsecd-raw,vmsecd-raw-socket,vmsecd-raw-xdp,vmsecd-raw-xdpn,vmsecd-udp-xdp,vmsecd-swan,boringtun,wggo] [--json FILE] [--bin PATH] [--allocs]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift ;;
    --seconds) SECS="$2"; shift ;;
    --runs) RUNS="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --json) JSON="$2"; shift ;;
    --allocs) ALLOCS=1 ;;
    *) usage ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "iperf3 is missing: apt-get install iperf3" >&2; exit 1; }
ADDED_PROBES=()
if [ "$ALLOCS" = 1 ]; then
  command -v perf >/dev/null || { echo "--allocs needs perf: apt-get install linux-perf" >&2; exit 1; }
  LIBC=$(ldd "$BIN" | awk '/libc\.so\.6/ {print $3}')
  for fn in malloc realloc; do
    if ! perf probe -l 2>/dev/null | grep -q "probe_libc:$fn "; then
      perf probe -q -x "$LIBC" "$fn" && ADDED_PROBES+=("probe_libc:$fn")
    fi
  done
fi
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

P="e2e$$"; DIR=$(mktemp -d); PIDS=(); RES="$DIR/results.tsv"; : > "$RES"
stop_pids() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
cleanup() {
  stop_pids
  for p in "${ADDED_PROBES[@]}"; do perf probe -q -d "$p" || true; done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$ns"; done
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- topology -------------------------------------------------------------------------------------------
for n in h1 h2 vm1 vm2; do ip netns add "$P-$n"; ip -n "$P-$n" link set lo up; done
ip -n "$P-h1" link add u0 type veth peer name u0 netns "$P-h2"
for i in 1 2; do
  ip -n "$P-h$i" addr add "198.18.0.$i/24" dev u0; ip -n "$P-h$i" link set u0 up
  ip -n "$P-h$i" link add virbr0 type bridge; ip -n "$P-h$i" addr add "198.19.$i.1/24" dev virbr0
  ip -n "$P-h$i" link set virbr0 up
  ip -n "$P-h$i" link add vnet0 type veth peer name eth0 netns "$P-vm$i"; ip -n "$P-h$i" link set vnet0 master virbr0 up
  ip -n "$P-vm$i" addr add "198.19.$i.10/24" dev eth0; ip -n "$P-vm$i" link set eth0 up
  ip -n "$P-vm$i" route add default via "198.19.$i.1"
  ip netns exec "$P-h$i" sysctl -qw net.ipv4.ip_forward=1
done
PSK=$(head -c 32 /dev/urandom | base64)
( umask 077; echo "$PSK" > "$DIR/psk" )
# Never start a background process through these functions: $! would be a subshell, not the process.
h() { ip netns exec "$P-h$1" "${@:2}"; }
vm() { ip netns exec "$P-vm$1" "${@:2}"; }

# --- tunnels ----------------------------------------------------------------------------------------------
start_vmsecd() { # HOSTNUM ESP ENCAP [WORKERS]; ESP and ENCAP empty: the key is left out (vmsecd's default);
  # RAW_TX and RAW_RX in the environment: the mesh keys raw_tx and raw_rx
  cat > "$DIR/mesh$1.toml" <<EOT
[mesh]
psk_file = "psk"
${3:+encap = \"$3\"}
${2:+esp_proposals = [\"$2\"]}
${2:+dpd_delay = 0}
${4:+workers = $4}
${RAW_TX:+raw_tx = \"$RAW_TX\"}
${RAW_RX:+raw_rx = \"$RAW_RX\"}
[[host]]
name = "h1"
address = "198.18.0.1"
subnets = ["198.19.1.0/24"]
[[host]]
name = "h2"
address = "198.18.0.2"
subnets = ["198.19.2.0/24"]
EOT
  ip netns exec "$P-h$1" "$BIN" run --config "$DIR/mesh$1.toml" --host "h$1" > "$DIR/vmsecd-h$1.log" 2>&1 & PIDS+=($!)
}

start_charon() { # HOSTNUM (h1 initiates towards h2 when both run charon)
  local i=$1 o=$((3 - $1)) d="$DIR/charon$1"
  # A fresh directory each time: charon refuses to start over a stale run/charon.pid.
  rm -rf "$d"; mkdir -p "$d/run" "$d/swanctl"
  cat > "$d/strongswan.conf" <<EOT
charon {
  load_modular = no
  load = random nonce openssl pem pkcs1 pkcs8 pubkey x509 revocation constraints kdf hmac sha1 sha2 aes gcm chapoly curve25519 kernel-libipsec kernel-netlink socket-default vici
  install_routes = yes
  plugins { vici { socket = unix://$d/charon.vici } }
  filelog { charon { path = $d/charon.log
    default = 1 } }
  syslog { daemon { default = -1 } }
}
swanctl { socket = unix://$d/charon.vici }
EOT
  cat > "$d/swanctl/swanctl.conf" <<EOT
connections {
  h$o {
    version = 2
    local_addrs = 198.18.0.$i
    remote_addrs = 198.18.0.$o
    encap = yes
    proposals = aes128gcm16-prfsha256-x25519
    dpd_delay = 0s
    local { auth = psk
      id = 198.18.0.$i }
    remote { auth = psk
      id = 198.18.0.$o }
    children {
      net {
        mode = tunnel
        local_ts = 198.19.$i.0/24
        remote_ts = 198.19.$o.0/24
        esp_proposals = aes128gcm16
        start_action = none
      }
    }
  }
}
secrets { ike-1 { id-local = 198.18.0.$i
    id-remote = 198.18.0.$o
    secret = "$PSK" } }
EOT
  chmod 600 "$d/swanctl/swanctl.conf"
  # Every step execs, so $! is charon's own PID.
  ip netns exec "$P-h$i" env STRONGSWAN_CONF="$d/strongswan.conf" unshare -m --propagation private \
    sh -c "mount --bind $d/run /run && exec /usr/lib/ipsec/charon" > "$d/charon.out" 2>&1 & PIDS+=($!)
  for _ in $(seq 100); do
    [ -S "$d/charon.vici" ] && STRONGSWAN_CONF="$d/strongswan.conf" swanctl --stats >/dev/null 2>&1 && break
    sleep 0.1
  done
  STRONGSWAN_CONF="$d/strongswan.conf" SWANCTL_DIR="$d/swanctl" swanctl --load-all --noprompt >/dev/null 2>&1 \
    || echo "# charon on h$i did not load its configuration (see $d/charon.log)"
}
swan_initiate() { STRONGSWAN_CONF="$DIR/charon$1/strongswan.conf" swanctl --initiate --child net >/dev/null 2>&1 || true; }

WGPORT=51820
start_wg() { # KIND(boringtun|wggo)
  local kind=$1 i o
  for i in 1 2; do (umask 077; wg genkey > "$DIR/wg$i.key"); wg pubkey < "$DIR/wg$i.key" > "$DIR/wg$i.pub"; done
  for i in 1 2; do
    o=$((3 - i)); local ifn="wg${P#e2e}$i"
    if [ "$kind" = boringtun ]; then
      ip netns exec "$P-h$i" env WG_THREADS=1 WG_LOG_LEVEL=error "$BORINGTUN" "$ifn" --foreground --disable-drop-privileges \
        > "$DIR/$kind$i.log" 2>&1 & PIDS+=($!)
    else
      ip netns exec "$P-h$i" env LOG_LEVEL=error wireguard-go -f "$ifn" > "$DIR/$kind$i.log" 2>&1 & PIDS+=($!)
    fi
    for _ in $(seq 50); do h "$i" ip link show "$ifn" >/dev/null 2>&1 && [ -S "/var/run/wireguard/$ifn.sock" ] && break; sleep 0.1; done
    h "$i" wg set "$ifn" private-key "$DIR/wg$i.key" listen-port $WGPORT \
      peer "$(cat "$DIR/wg$o.pub")" allowed-ips "198.19.$o.0/24" endpoint "198.18.0.$o:$WGPORT"
    h "$i" ip link set "$ifn" mtu 1420 up
    h "$i" ip route add "198.19.$o.0/24" dev "$ifn"
  done
}

start_config() {
  case "$1" in
    plain) h 1 ip route add 198.19.2.0/24 via 198.18.0.2; h 2 ip route add 198.19.1.0/24 via 198.18.0.1 ;;
    swan) start_charon 1; start_charon 2; swan_initiate 1 ;;
    vmsecd-mesh) start_vmsecd 1 "" ""; start_vmsecd 2 "" "" ;;
    vmsecd) start_vmsecd 1 aes128gcm16 udp; start_vmsecd 2 aes128gcm16 udp ;;
    vmsecd-2w) start_vmsecd 1 aes128gcm16 udp 2; start_vmsecd 2 aes128gcm16 udp 2 ;;
    vmsecd-chacha) start_vmsecd 1 chacha20poly1305 udp; start_vmsecd 2 chacha20poly1305 udp ;;
    vmsecd-raw) start_vmsecd 1 aes128gcm16 raw; start_vmsecd 2 aes128gcm16 raw ;;
    vmsecd-raw-socket) RAW_TX=socket; start_vmsecd 1 aes128gcm16 raw; start_vmsecd 2 aes128gcm16 raw
      unset RAW_TX ;;
    vmsecd-raw-xdp) RAW_RX=xdp; start_vmsecd 1 aes128gcm16 raw; start_vmsecd 2 aes128gcm16 raw; unset RAW_RX ;;
    vmsecd-udp-xdp) RAW_RX=xdp; start_vmsecd 1 aes128gcm16 udp; start_vmsecd 2 aes128gcm16 udp; unset RAW_RX ;;
    vmsecd-raw-xdpn) RAW_RX=xdp-native; start_vmsecd 1 aes128gcm16 raw; start_vmsecd 2 aes128gcm16 raw
      unset RAW_RX ;;
    vmsecd-swan) start_charon 2; start_vmsecd 1 aes128gcm16 udp ;;
    boringtun) start_wg boringtun ;;
    wggo) start_wg wggo ;;
  esac
}
stop_config() {
  stop_pids
  case "$1" in
    plain) h 1 ip route del 198.19.2.0/24; h 2 ip route del 198.19.1.0/24 ;;
  esac
}

cpu_ticks() { # sum of utime+stime of PIDS (all threads), in clock ticks
  local t=0 pid task s
  for pid in "${PIDS[@]}"; do
    for task in /proc/"$pid"/task/*; do
      s=$(cat "$task/stat" 2>/dev/null) || continue
      s=${s##*) }
      t=$((t + $(echo "$s" | awk '{print $12 + $13}')))
    done
  done
  echo $t
}

iperf() { # ARGS... -> prints "bits_per_second bytes"
  vm 1 iperf3 -c 198.19.2.10 -p 5201 -t "$SECS" -J "$@" 2>/dev/null | python3 -c '
import json, sys
try:
    e = json.load(sys.stdin)["end"]["sum_received"]
    print(e["bits_per_second"], e["bytes"])
except Exception:
    print(0, 0)'
}

median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(statistics.median(v) if v else 0)' "$@"; }

TICK=$(getconf CLK_TCK)
echo "# vmsecd e2e benchmark, $SECS s per iperf3 run x $RUNS, $(nproc) cores, $(date -u +%FT%TZ)"
echo "# load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for cfg in plain swan vmsecd-mesh vmsecd vmsecd-2w vmsecd-chacha vmsecd-raw vmsecd-raw-socket vmsecd-raw-xdp vmsecd-raw-xdpn vmsecd-udp-xdp vmsecd-swan boringtun wggo; do
  want "$cfg" || continue
  case "$cfg" in
    swan|vmsecd-swan) [ -x /usr/lib/ipsec/charon ] || { echo "# $cfg: skipped, no charon (apt-get install strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins)"; continue; } ;;
    boringtun) [ -x "$BORINGTUN" ] && command -v wg >/dev/null || { echo "# boringtun: skipped, no boringtun-cli ($BORINGTUN; cargo install boringtun-cli) or no wg (apt-get install wireguard-tools)"; continue; } ;;
    wggo) command -v wireguard-go >/dev/null && command -v wg >/dev/null || { echo "# wggo: skipped, apt-get install wireguard-go wireguard-tools"; continue; } ;;
    vmsecd*) [ -x "$BIN" ] || { echo "# $cfg: skipped, no $BIN (cargo build --release -p vmsecd)"; continue; } ;;
  esac
  start_config "$cfg"
  up=0
  for _ in $(seq 150); do
    if vm 1 ping -c1 -W0.2 198.19.2.10 >/dev/null 2>&1; then up=1; break; fi
    [ "$cfg" = swan ] && swan_initiate 1
    sleep 0.1
  done
  if [ $up = 0 ]; then echo "# $cfg: tunnel did not come up in 15 s; skipped"; stop_config "$cfg"; continue; fi
  ip netns exec "$P-vm2" iperf3 -s -p 5201 > /dev/null 2>&1 & IPERF_PID=$!
  sleep 0.3
  # The tunnel processes' CPU at idle: 3 s without traffic, in % of one core.
  i0=$(cpu_ticks); sleep 3; i1=$(cpu_ticks)
  idle_cpu=$(python3 -c "print('%.1f' % (($i1-$i0)/$TICK/3*100))")
  # ping at idle: 50 echoes 20 ms apart, p50 of the RTTs; and the tunnel processes' CPU meanwhile (% of a core).
  vm 1 ping -c 50 -i 0.02 -q 198.19.2.10 >/dev/null 2>&1
  p0=$(cpu_ticks); pt0=$(date +%s.%N)
  rtt=$(vm 1 ping -c 50 -i 0.02 198.19.2.10 2>/dev/null \
    | sed -n 's/.*time=\([0-9.]*\).*/\1/p' | sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}')
  p1=$(cpu_ticks); pt1=$(date +%s.%N)
  ping_cpu=$(python3 -c "print('%.1f' % (($p1-$p0)/$TICK/($pt1-$pt0)*100))")
  PERF_PID=""
  if [ "$ALLOCS" = 1 ] && [[ "$cfg" == vmsecd* ]]; then
    pids=$(IFS=,; echo "${PIDS[*]}")
    perf stat --per-thread -x, -o "$DIR/allocs.csv" -e probe_libc:malloc,probe_libc:realloc -p "$pids" & PERF_PID=$!
    sleep 0.5
  fi
  t0=$(cpu_ticks); bytes=0
  declare -a f=() r=() m=()
  for _ in $(seq "$RUNS"); do
    read -r bps b < <(iperf); f+=("$bps"); bytes=$((bytes + ${b%.*}))
    read -r bps b < <(iperf -R); r+=("$bps"); bytes=$((bytes + ${b%.*}))
    read -r bps b < <(iperf -P 4); m+=("$bps"); bytes=$((bytes + ${b%.*}))
  done
  t1=$(cpu_ticks)
  allocs="-"
  if [ -n "$PERF_PID" ]; then
    kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true
    # Lines are "comm-tid,count,,event,...": the datapath threads are the daemons' main threads and workers.
    allocs=$(awk -F, '$1 ~ /^vmsecd(-tx[0-9]+)?-[0-9]+$/ && $4 ~ /probe_libc/ {n += $2} END {print n + 0}' "$DIR/allocs.csv")
  fi
  kill -TERM "$IPERF_PID" 2>/dev/null || true; wait "$IPERF_PID" 2>/dev/null || true
  cpu=$(python3 -c "t=($t1-$t0)/$TICK; b=$bytes/1e9; print('%.2f' % (t/b) if b > 0 and t > 0 else '-')")
  if [ "$cfg" = plain ]; then cpu="-"; idle_cpu="-"; ping_cpu="-"; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$cfg" "$(median "${f[@]}")" "$(median "${r[@]}")" "$(median "${m[@]}")" "$rtt" "$cpu" "$allocs" \
    "$idle_cpu" "$ping_cpu" >> "$RES"
  echo "# $cfg done: $(tail -1 "$RES") (cpu ticks $t0 -> $t1, $bytes bytes)"
  stop_config "$cfg"
  unset f r m
done

python3 - "$RES" "$JSON" "$SECS" "$RUNS" <<'EOF'
import json, sys, datetime, os
res, out, secs, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = []
for line in open(res):
    c, f, r, m, rtt, cpu, allocs, idle, pcpu = line.rstrip("\n").split("\t")
    num = lambda v: None if v == "-" else float(v)
    rows.append({"config": c, "tcp_1_fwd_gbps": round(float(f) / 1e9, 3), "tcp_1_rev_gbps": round(float(r) / 1e9, 3),
                 "tcp_4_gbps": round(float(m) / 1e9, 3), "ping_p50_ms": float(rtt),
                 "cpu_s_per_gb": num(cpu),
                 "idle_cpu_pct": num(idle), "ping_cpu_pct": num(pcpu),
                 "datapath_allocs": None if allocs == "-" else int(allocs)})
dash = lambda v, f="%.2f": "-" if v is None else f % v
print("%-14s %8s %8s %8s %9s %9s %9s %9s %9s" % ("config", "1x fwd", "1x rev", "4x", "ping p50", "CPU s/GB", "idle CPU", "ping CPU", "allocs"))
print("%-14s %8s %8s %8s %9s %9s %9s %9s %9s" % ("", "Gbit/s", "Gbit/s", "Gbit/s", "ms", "", "%", "%", "datapath"))
for x in rows:
    print("%-14s %8.2f %8.2f %8.2f %9.3f %9s %9s %9s %9s" % (x["config"], x["tcp_1_fwd_gbps"], x["tcp_1_rev_gbps"], x["tcp_4_gbps"],
          x["ping_p50_ms"], dash(x["cpu_s_per_gb"]), dash(x["idle_cpu_pct"], "%.1f"),
          dash(x["ping_cpu_pct"], "%.1f"), "-" if x["datapath_allocs"] is None else x["datapath_allocs"]))
if out:
    json.dump({"date": datetime.datetime.utcnow().isoformat() + "Z", "seconds": secs, "runs": runs,
               "cores": os.cpu_count(), "results": rows}, open(out, "w"), indent=2)
    print("# JSON written to", out)
EOF
