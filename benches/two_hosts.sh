# Sourced by benches/ping_path.sh and benches/ping_trace.sh: the two-hypervisor namespace topology of e2e.sh
# (h1 and h2 on a veth underlay, 198.18.0.1-2; a bridge virbr0 on each with a VM namespace behind it,
# 198.19.N.10), the README's minimal mesh file, one vmsecd per host, and a wait for the first echo through the
# tunnel. Sets P (namespace prefix, from the caller's PREFIX and PID), DIR and PIDS, and removes everything on
# exit. Needs BIN; VMSECD_ENV="K=V ..." is passed to the daemons. Uses only 198.18.0.0/15 inside namespaces it
# creates.
P="${PREFIX:-th}$$"; DIR=$(mktemp -d); PIDS=()
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
