#!/usr/bin/env bash
# Raw ESP send methods compared (issue 15): two namespaces joined by a veth pair (198.18.0.1/.2), a receiver
# counting ESP on a raw socket with recvmmsg, a sender trying each method with COUNT packets of SIZE bytes.
# Run as root; not a test. Uses only 198.18.0.0/15 inside namespaces it creates (names end in its PID).
# Usage: benches/raw_tx.sh [COUNT] [SIZE]   (builds tunnel/examples/raw_esp_tx.rs in release first)
# Receive methods (AF_XDP measured against recvmmsg): RECV="socket xdp-native xdp-generic" SEND="ring" benches/raw_tx.sh
# runs each receiver against each send mode; "all cpu" is the whole machine's busy time over the run (from
# /proc/stat: on a veth pair the receive softirq often runs in the sender's context), so it includes other load.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNT=${1:-1000000}; SIZE=${2:-1416}
BIN=$ROOT/target/release/examples/raw_esp_tx
[ -x "$BIN" ] || { echo "build it first: cargo build --release -p vmsecd --example raw_esp_tx" >&2; exit 1; }
P="rawtx$$"; RPID=""
cleanup() { [ -n "$RPID" ] && kill "$RPID" 2>/dev/null; for n in a b; do ip netns del "$P-$n" 2>/dev/null || true; done; }
trap cleanup EXIT
for n in a b; do ip netns add "$P-$n"; ip -n "$P-$n" link set lo up; done
ip -n "$P-a" link add u0 type veth peer name u0 netns "$P-b"
ip -n "$P-a" addr add 198.18.0.1/24 dev u0; ip -n "$P-b" addr add 198.18.0.2/24 dev u0
ip -n "$P-a" link set u0 up; ip -n "$P-b" link set u0 up
MAC=$(ip netns exec "$P-b" cat /sys/class/net/u0/address)
ip -n "$P-a" neigh add 198.18.0.2 lladdr "$MAC" dev u0
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
SEND=${SEND:-"mmsg:64 mmsg:1024 ring ring-bypass"}; RECV=${RECV:-socket}
for round in 1 2; do for recv in $RECV; do for mode in $SEND; do
  out=$(mktemp)
  case $recv in
    socket) ip netns exec "$P-b" "$BIN" recv 1 > "$out" & RPID=$! ;;
    xdp-*) ip netns exec "$P-b" "$BIN" recv-xdp 1 "${recv#xdp-}" u0 198.18.0.2 > "$out" & RPID=$! ;;
  esac
  for _ in $(seq 100); do grep -q ready "$out" && break; sleep 0.05; done
  b0=$(busy)
  s=$(ip netns exec "$P-a" "$BIN" send "$mode" "$COUNT" "$SIZE" 198.18.0.1 198.18.0.2 u0 "$MAC")
  wait "$RPID"; RPID=""
  b1=$(busy)
  printf '%-12s %-12s sender: %s\n%-25s receiver: %s\n%-25s all cpu: %.2f us/packet (includes the 1 s idle wait)\n' "$recv" "$mode" "$s" "" \
    "$(grep received "$out")" "" "$(echo "($b1 - $b0) * 10000 / $COUNT" | bc -l)"
  grep xsk "$out" | sed 's/^/                          /' || true
  rm -f "$out"
done; done; done
