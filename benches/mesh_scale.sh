#!/usr/bin/env bash
# A mesh of N vmsecd hosts on one machine (issue 14): N hypervisor namespaces on one underlay bridge, a VM
# namespace behind each, one mesh file, `firewall = "off"`. Run as root; a script, not a test (the small
# version in the test command is tests/tests/mesh_scale.rs).
#
# Phases (--phases, comma-separated; default all):
#   up       start every daemon; time until each has every other peer established with a Child SA; CPU seconds
#            (utime + stime of all daemons) per IKE SA (N(N-1)/2 of them); RSS per daemon, and per peer
#            (RSS at full mesh minus the RSS of a daemon with one peer configured and none up, over N - 1)
#   ping     a sample of random VM pairs (--pairs, default 20), 3 pings each
#   reload   host N+1 added to every file and `vmsecd reload` on every daemon: time until all N+1 have it;
#            then host N removed the same way: time until no daemon has it
#   restart  every daemon but h1 and h2 stopped (SIGTERM) and started again, one by one, each waited for until
#            it has its peers back, while VM1 pings VM2 every 20 ms: pings lost (want 0)
#   rekey    every file gets child_lifetime = 60s, rekey_margin = 25s (a reload re-creates the Child SAs), then
#            VM1 pings VM2 every 20 ms for 60 s, in which every Child SA of the mesh rekeys at least once: pings
#            lost (want 0) and Child SA rekeys logged
#
# Usage: benches/mesh_scale.sh [--n N] [--auth psk|pubkey] [--loss PCT] [--phases LIST] [--pairs K] [--bin PATH]
#                              [--out DIR] [--perf SECS]
#   --n N        hosts (default 100; at most 200)
#   --auth A     psk (default) or pubkey (3072-bit RSA keys from `vmsecd keygen`, RFC 7427 signatures)
#   --loss PCT   lose PCT % (an integer) of the UDP and ESP datagrams each host receives on the underlay, each
#                one independently (this kernel has no sch_netem: an nftables rule on the host's input, inside its
#                namespace, `numgen random mod 100 < PCT drop`, silent as a lossy link; on output the sender
#                would see EPERM); each datagram crosses one lossy point, as in ike/tests/mesh.rs. Tunnelled
#                traffic loses as much
#   --bin PATH   the vmsecd binary (default target/release/vmsecd)
#   --out DIR    keep the logs there (default: a temporary directory, printed)
#   --perf SECS  in the rekey phase, `perf record -g` h1's daemon for SECS seconds in the middle of the 60 s of
#                pings (perf-rekey.data in the logs directory; its top symbols in perf-rekey.txt, printed), and
#                h1's CPU time over the same window
#
# Addresses: underlay 198.18.0.I for host I (routed through 198.18.0.254 on the same bridge: see the topology
# below), VM subnet 198.19.I.0/24 (shared/conventions.md). Everything
# lives in namespaces named after this script's PID; they are removed, and the processes it started ended by
# PID, on every exit path. A 100-host run keeps both cores of a 2-core machine busy for minutes.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=100
AUTH=psk
PHASES=up,ping,reload,restart,rekey
PAIRS=20
LOSS=0
BIN=$ROOT/target/release/vmsecd
OUT=""
PERF=0
usage() { awk 'NR > 1 && /^set -euo/ {exit} NR > 1' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --n) N="$2"; shift ;;
    --auth) AUTH="$2"; shift ;;
    --loss) LOSS="$2"; shift ;;
    --phases) PHASES="$2"; shift ;;
    --pairs) PAIRS="$2"; shift ;;
    --bin) BIN="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --perf) PERF="$2"; shift ;;
    *) usage ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
case "$PERF" in ''|*[!0-9]*) usage ;; esac
[ "$PERF" -le 60 ] || { echo "--perf: at most 60 s (the rekey phase's pings last 60 s)" >&2; exit 2; }
if [ "$PERF" -gt 0 ]; then command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)" >&2; exit 1; }; fi
for t in ip ping jq; do command -v "$t" >/dev/null || { echo "$t is missing" >&2; exit 1; }; done
[ -x "$BIN" ] || { echo "no vmsecd binary at $BIN: cargo build --release -p vmsecd" >&2; exit 1; }
case "$N" in ''|*[!0-9]*) usage ;; esac
[ "$N" -ge 3 ] && [ "$N" -le 200 ] || { echo "--n: 3 to 200" >&2; exit 2; }
case "$AUTH" in psk|pubkey) ;; *) usage ;; esac
case "$LOSS" in ''|*[!0-9]*) usage ;; esac
[ "$LOSS" -le 100 ] || usage
if [ "$LOSS" != 0 ]; then command -v nft >/dev/null || { echo "nft is missing (nftables)" >&2; exit 1; }; fi
has() { case ",$PHASES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

P="msc$$"
if [ -n "$OUT" ]; then mkdir -p "$OUT"; DIR=$(cd "$OUT" && pwd); else DIR=$(mktemp -d); fi
declare -A PID
EXTRA=()
cleanup() {
  local p
  for p in "${PID[@]}" "${EXTRA[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PID[@]}" "${EXTRA[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$ns"; done
  echo "# logs in $DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say() { printf '%s %s\n' "$(date +%T)" "$*"; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l | xargs printf '%.1f'; }

# --- topology: hosts 1..N+1 (N+1 joins in the reload phase) ---------------------------------------------
say "topology: $((N + 1)) hypervisors and VMs on one bridge"
ip netns add "$P-ul"; ip -n "$P-ul" link set lo up
ip -n "$P-ul" link add br0 type bridge; ip -n "$P-ul" link set br0 up
# The kernel's ARP table is one for all namespaces (gc_thresh3, 1024 entries by default, set in the root
# namespace only): 100 hosts resolving each other on one LAN need 9,900 entries, and sends fail with "neighbor
# table overflow". So the hosts stay on one bridge but reach each other through one router on it (the
# switch's namespace, 198.18.0.254): each host resolves one neighbour, the router one per host.
ip -n "$P-ul" addr add 198.18.0.254/24 dev br0
ip netns exec "$P-ul" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
  net.ipv4.conf.br0.send_redirects=0
for i in $(seq 1 $((N + 1))); do
  h="$P-h$i"; v="$P-v$i"
  ip netns add "$h"; ip -n "$h" link set lo up
  ip netns add "$v"; ip -n "$v" link set lo up
  ip -n "$P-ul" link add "p$i" type veth peer name u0 netns "$h"
  ip -n "$P-ul" link set "p$i" master br0 up
  ip -n "$h" addr add "198.18.0.$i/32" dev u0; ip -n "$h" link set u0 up
  ip -n "$h" route add 198.18.0.254 dev u0
  ip -n "$h" route add 198.18.0.0/24 via 198.18.0.254
  if [ "$LOSS" != 0 ]; then
    ip netns exec "$h" nft -f - <<EOF
table inet msc_loss {
  chain in { type filter hook input priority 0; iifname "u0" meta l4proto { udp, esp } numgen random mod 100 < $LOSS counter drop; }
}
EOF
  fi
  ip -n "$h" link add virbr0 type bridge; ip -n "$h" addr add "198.19.$i.1/24" dev virbr0
  ip -n "$h" link set virbr0 up
  ip netns exec "$h" sysctl -qw net.ipv4.ip_forward=1
  ip -n "$h" link add vnet0 type veth peer name eth0 netns "$v"
  ip -n "$h" link set vnet0 master virbr0 up
  ip -n "$v" addr add "198.19.$i.10/24" dev eth0; ip -n "$v" link set eth0 up
  ip -n "$v" route add default via "198.19.$i.1"
done

# --- keys and mesh files --------------------------------------------------------------------------------
printf 'mesh-scale-bench-psk-0123456789abcdef\n' > "$DIR/psk"; chmod 600 "$DIR/psk"
if [ "$AUTH" = pubkey ]; then
  say "generating $((N + 1)) RSA-3072 key pairs"
  for i in $(seq 1 $((N + 1))); do
    "$BIN" keygen --out "$DIR/keys/h$i" --name "h$i" >/dev/null
  done
fi
# write_mesh FILE HOSTS... [-- EXTRA_MESH_LINES]
write_mesh() {
  local file=$1; shift
  local extra=""
  {
    echo "[mesh]"
    if [ "$AUTH" = pubkey ]; then echo 'auth = "pubkey"'; echo 'private_key = "unused"';
    else echo "psk_file = \"$DIR/psk\""; fi
    echo 'firewall = "off"'
    echo 'encap = "auto"'
    if [ -n "${MESH_EXTRA:-}" ]; then printf '%s\n' "$MESH_EXTRA"; fi
    for i in "$@"; do
      printf '[[host]]\nname = "h%s"\naddress = "198.18.0.%s"\nsubnets = ["198.19.%s.0/24"]\n' "$i" "$i" "$i"
      if [ "$AUTH" = pubkey ]; then printf 'pubkey = "%s"\n' "$DIR/keys/h$i/h$i.pub.pem"; fi
    done
  } > "$file"
}
start() { # start I FILE
  local i=$1 file=$2 key=()
  if [ "$AUTH" = pubkey ]; then key=(--private-key "$DIR/keys/h$i/private.pem"); fi
  RUST_LOG=info ip netns exec "$P-h$i" "$BIN" run --config "$file" --host "h$i" "${key[@]}" \
    >>"$DIR/h$i.log" 2>&1 &
  PID[$i]=$!
}
stop() { # stop I
  local p=${PID[$1]}
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  unset "PID[$1]"
}
up_count() { # established peers with a Child SA, as host I sees them
  ip netns exec "$P-h$1" "$BIN" status --json 2>/dev/null \
    | jq '[.peers[] | select(.state == "established" and (.children | length) > 0)] | length' 2>/dev/null \
    || echo 0
}
has_peer() { ip netns exec "$P-h$1" "$BIN" status --json 2>/dev/null | jq -e --arg p "h$2" 'any(.peers[]; .name == $p)' >/dev/null 2>&1; }
wait_up() { # wait_up WANT TIMEOUT HOSTS...: until each host has WANT peers up
  local want=$1 timeout=$2; shift 2
  local deadline; deadline=$(echo "$(now) + $timeout" | bc)
  local pending=("$@") next
  while [ ${#pending[@]} -gt 0 ]; do
    next=()
    for i in "${pending[@]}"; do [ "$(up_count "$i")" -ge "$want" ] || next+=("$i"); done
    pending=("${next[@]+"${next[@]}"}")
    [ ${#pending[@]} -eq 0 ] && return 0
    if [ "$(echo "$(now) > $deadline" | bc)" = 1 ]; then
      echo "timeout: ${#pending[@]} hosts without $want peers up (e.g. h${pending[0]}: $(up_count "${pending[0]}"))" >&2
      return 1
    fi
    sleep 0.5
  done
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
HZ=$(getconf CLK_TCK)
ALL=$(seq 1 "$N")
write_mesh "$DIR/mesh.toml" $ALL

# --- up ---------------------------------------------------------------------------------------------------
if has up || has ping || has reload || has restart || has rekey; then
  # The idle baseline: one daemon, one peer configured, none up.
  write_mesh "$DIR/idle.toml" 1 2
  start 1 "$DIR/idle.toml"; sleep 3; IDLE=$(rss_kib "${PID[1]}"); stop 1
  say "up: starting $N daemons (auth $AUTH, underlay loss $LOSS%)"
  T0=$(now)
  for i in $ALL; do start "$i" "$DIR/mesh.toml"; done
  wait_up $((N - 1)) 600 $ALL
  FULL=$(since "$T0")
  ticks=0; rss_sum=0; rss_max=0
  for i in $ALL; do
    t=$(cpu_ticks "${PID[$i]}"); ticks=$((ticks + t))
    r=$(rss_kib "${PID[$i]}"); rss_sum=$((rss_sum + r)); if [ "$r" -gt "$rss_max" ]; then rss_max=$r; fi
  done
  SAS=$((N * (N - 1) / 2))
  rss_mean=$((rss_sum / N))
  say "RESULT up: full mesh of $N ($SAS IKE SAs, auth $AUTH, loss $LOSS%) in $FULL s; CPU $(echo "$ticks / $HZ" | bc -l | xargs printf '%.1f') s in all, $(echo "$ticks / $HZ / $SAS * 1000" | bc -l | xargs printf '%.2f') ms per IKE SA (both ends together)"
  if [ "$LOSS" != 0 ]; then
    dropped=0
    for i in $ALL; do
      d=$(ip netns exec "$P-h$i" nft list table inet msc_loss | grep -o 'packets [0-9]*' | awk '{s += $2} END {print s + 0}')
      dropped=$((dropped + d))
    done
    say "RESULT loss: $dropped datagrams dropped by the loss rules until full mesh"
  fi
  say "RESULT rss: per daemon mean $rss_mean KiB, max $rss_max KiB; idle daemon $IDLE KiB; per peer $(( (rss_mean - IDLE) / (N - 1) )) KiB"
fi

# --- ping -------------------------------------------------------------------------------------------------
if has ping; then
  ok=0; bad=()
  for _ in $(seq "$PAIRS"); do
    a=$((RANDOM % N + 1)); b=$((RANDOM % N + 1)); if [ "$a" = "$b" ]; then b=$((a % N + 1)); fi
    if ip netns exec "$P-v$a" ping -n -q -c 3 -i 0.2 -W 2 "198.19.$b.10" >/dev/null; then ok=$((ok + 1)); else bad+=("$a->$b"); fi
  done
  say "RESULT ping: $ok of $PAIRS random VM pairs answered ${bad[*]+(failed: ${bad[*]})}"
fi

# --- reload -----------------------------------------------------------------------------------------------
if has reload; then
  X=$((N + 1))
  write_mesh "$DIR/mesh.toml" $ALL "$X"
  T0=$(now)
  start "$X" "$DIR/mesh.toml"
  for i in $ALL; do ip netns exec "$P-h$i" "$BIN" reload >/dev/null; done
  wait_up "$N" 600 $ALL "$X"
  say "RESULT reload add: host $X taken in by all $((N + 1)) daemons $(since "$T0") s after the first reload"
  write_mesh "$DIR/mesh.toml" $(seq 1 $((N - 1))) "$X"
  T0=$(now)
  for i in $(seq 1 $((N - 1))) "$X"; do ip netns exec "$P-h$i" "$BIN" reload >/dev/null; done
  for i in $(seq 1 $((N - 1))) "$X"; do while has_peer "$i" "$N"; do sleep 0.2; done; done
  say "RESULT reload remove: host $N dropped by all $(since "$T0") s after the first reload"
  stop "$N"
  ALL="$(seq 1 $((N - 1))) $X"
fi

# --- restart ----------------------------------------------------------------------------------------------
ping_loss() { # ping_loss LOGFILE: "lost/sent"
  awk '/packets transmitted/ {print ($1 - $4) "/" $1}' "$1"
}
if has restart; then
  cnt=$(echo $ALL | wc -w)
  ip netns exec "$P-v1" ping -n -D -O -i 0.02 198.19.2.10 >"$DIR/restart-ping.txt" 2>&1 &
  PP=$!; EXTRA+=("$PP")
  T0=$(now)
  for i in $ALL; do
    if [ "$i" = 1 ] || [ "$i" = 2 ]; then continue; fi
    stop "$i"; start "$i" "$DIR/mesh.toml"
    wait_up $((cnt - 1)) 120 "$i"
  done
  kill -INT "$PP"; wait "$PP" 2>/dev/null || true
  say "RESULT restart: $((cnt - 2)) daemons restarted one by one in $(since "$T0") s; VM1 -> VM2 pings lost: $(ping_loss "$DIR/restart-ping.txt") (the last one may be in flight when ping is stopped), answered late (over 20 ms): $(grep -c "no answer yet" "$DIR/restart-ping.txt" || true)"
fi

# --- rekey storm ------------------------------------------------------------------------------------------
if has rekey; then
  cnt=$(echo $ALL | wc -w)
  MESH_EXTRA=$'child_lifetime = "60s"\nrekey_margin = "25s"'
  write_mesh "$DIR/mesh.toml" $ALL
  for i in $ALL; do ip netns exec "$P-h$i" "$BIN" reload >/dev/null; done
  wait_up $((cnt - 1)) 600 $ALL
  before=$(cat "$DIR"/h*.log | grep -c "Child SA rekeyed" || true)
  if [ "$PERF" -gt 0 ]; then
    # Centred in the 60 s of pings; perf is ended by its own `sleep`, and the script waits for it below.
    ( sleep $(( (60 - PERF) / 2 ))
      t0=$(cpu_ticks "${PID[1]}")
      perf record -q -g -p "${PID[1]}" -o "$DIR/perf-rekey.data" -- sleep "$PERF" >/dev/null 2>&1 || true
      t1=$(cpu_ticks "${PID[1]}")
      echo "h1 CPU in the ${PERF} s window: $(echo "($t1 - $t0) / $HZ" | bc -l | xargs printf '%.2f') s" \
        >"$DIR/perf-rekey.txt"
      rep() { perf report -i "$DIR/perf-rekey.data" --no-children -g none --stdio "$@" 2>/dev/null \
        | grep -E '^ +[0-9]' | sed -E 's/[ -]*$//' || true; }
      { echo "by object:"; rep --sort dso | head -5
        echo "top symbols:"; rep --sort dso,symbol | head -25
        echo "top symbols in vmsecd itself (share of all samples):"; rep --sort symbol --dsos vmsecd | head -15
        echo "all of ike::* together: $(rep --sort symbol --dsos vmsecd | awk '/ike::/ {s += $1} END {printf "%.1f%%", s}')"
      } >>"$DIR/perf-rekey.txt" ) &
    PERFPID=$!; EXTRA+=("$PERFPID")
  fi
  ip netns exec "$P-v1" ping -n -q -i 0.02 -w 60 198.19.2.10 >"$DIR/rekey-ping.txt" 2>&1 || true
  if [ "$PERF" -gt 0 ]; then wait "$PERFPID" || true; say "perf of h1 (N = $N):"; cat "$DIR/perf-rekey.txt"; fi
  after=$(cat "$DIR"/h*.log | grep -c "Child SA rekeyed" || true)
  say "RESULT rekey: $((after - before)) Child SA rekeys logged in 60 s (lifetime 60 s, margin 25 s; $((cnt * (cnt - 1) / 2)) Child SAs, each logged by both ends); VM1 -> VM2 pings lost: $(ping_loss "$DIR/rekey-ping.txt")"
fi
