#!/usr/bin/env python3
"""scapy ESP peer: the independent end of the ESP interop test (tests/tests/esp_scapy_interop.rs).

It mirrors tests/src/bin/esp-peer.rs with scapy's IPsec layer (scapy.layers.ipsec.SecurityAssociation) doing
all ESP encryption and decryption, and plain sockets doing the I/O: a UDP socket bound to port 4500 (RFC 3948
UDP encapsulation) or a raw IPv4 socket for IP protocol 50.

    scapy_esp_peer.py --mode udp|raw --transform aes128gcm16 --esn 0|1 --local IP --remote IP
                      --out-spi HEX --out-key HEX --in-spi HEX --in-key HEX
                      [--send-count N --seed S --sent-out FILE [--sent-seqs FILE]]
                      [--recv N --recv-out FILE [--expect FILE]]
                      [--ready-file F] [--go-file F] [--timeout-secs S]

Sending, it generates N varied inner packets itself (IPv4 ICMP/UDP/TCP, IPv6 UDP/TCP/ICMPv6, payloads from
empty to ~1400 bytes), encrypts each with scapy and sends the ESP packet. With ESN it also walks the sequence
number across the 2^32 boundary (high-order half 0 -> 1), so the receiver must reconstruct the high bits.

Receiving, it decrypts N packets with scapy, checks what RFC 4303 asks of the sender (padding 1, 2, 3...,
next header matching the inner IP version, sequence numbers 1, 2, 3..., no repeated IV) and compares the inner
packets byte for byte with --expect. Any decryption failure or mismatch makes it exit 1 with a message saying
what differed; usage errors exit 2.
"""

import argparse
import os
import random
import socket
import sys
import threading
import time

try:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    from scapy.layers.ipsec import ESP, SecurityAssociation
    from scapy.packet import Raw
except ImportError as e:  # pragma: no cover - the Rust test checks this first
    sys.exit("scapy-peer: cannot import scapy's IPsec layer (%s): pip install scapy==2.8.0 cryptography" % e)

NAT_T_PORT = 4500
IPPROTO_ESP = 50
# Inner (VM-subnet) addresses, from shared/conventions.md: VMs behind host 1 and host 2. IPv6 inner packets use
# the IPv4-mapped forms of the same addresses, so no address outside 198.18.0.0/15 appears anywhere.
INNER4 = ("198.19.1.10", "198.19.2.10")
INNER6 = ("::ffff:198.19.1.10", "::ffff:198.19.2.10")
MAX_INNER = 1400

# vmsecd/strongSwan transform name -> (scapy crypt algo, cipher key bytes incl. salt, scapy auth algo or None)
TRANSFORMS = {
    "aes128gcm16": ("AES-GCM", 16 + 4, None),
    "aes256gcm16": ("AES-GCM", 32 + 4, None),
    "chacha20poly1305": ("CHACHA20-POLY1305", 32 + 4, None),
    "aes128-sha256": ("AES-CBC", 16, "SHA2-256-128"),
    "aes256-sha256": ("AES-CBC", 32, "SHA2-256-128"),
}


def fail(msg):
    sys.stderr.write("scapy-peer: FAILED: %s\n" % msg)
    sys.stderr.flush()
    sys.exit(1)


def make_sa(transform, spi, key, src, dst, udp, esn):
    crypt, crypt_len, auth = TRANSFORMS[transform]
    want = crypt_len + (32 if auth else 0)
    if len(key) != want:
        fail("%s needs %d bytes of key, got %d" % (transform, want, len(key)))
    return SecurityAssociation(
        ESP,
        spi=spi,
        crypt_algo=crypt,
        crypt_key=key[:crypt_len],  # for the AEADs scapy takes the 4-byte salt as the key's last bytes
        auth_algo=auth,
        auth_key=key[crypt_len:] if auth else None,
        tunnel_header=IP(src=src, dst=dst),
        nat_t_header=UDP(sport=NAT_T_PORT, dport=NAT_T_PORT) if udp else None,
        esn_en=esn,
    )


def gen_inner(rng, n):
    """n varied inner packets (bytes), deterministic for a given rng, each at most MAX_INNER bytes."""
    sizes = [0, 1, 2, 3, 4, 5, 7, 13, 16, 31, 64, 100, 127, 255, 256, 511, 700, 999, 1024, 1200, 1300, 1333, 1350]
    out = []
    for i in range(n):
        kind = i % 7
        size = sizes[i % len(sizes)] if i < len(sizes) else rng.randrange(0, 1360)
        if kind == 0:
            p = IP(src=INNER4[0], dst=INNER4[1], ttl=64, id=rng.randrange(65536)) / ICMP(id=7, seq=i)
        elif kind == 1:
            p = IP(src=INNER4[0], dst=INNER4[1], tos=0x10, id=i) / UDP(sport=rng.randrange(1024, 65535), dport=53)
        elif kind == 2:
            p = IP(src=INNER4[0], dst=INNER4[1], flags="DF") / TCP(
                sport=40000 + i, dport=443, flags="PA", seq=rng.getrandbits(32), ack=rng.getrandbits(32),
                options=[("MSS", 1360), ("NOP", None), ("WScale", 7)])
        elif kind == 3:
            p = IPv6(src=INNER6[0], dst=INNER6[1], hlim=63) / UDP(sport=5000 + i, dport=4789)
        elif kind == 4:
            p = IPv6(src=INNER6[0], dst=INNER6[1], fl=rng.randrange(1 << 20)) / TCP(sport=50000 + i, dport=22, flags="S")
        elif kind == 5:
            p = IPv6(src=INNER6[0], dst=INNER6[1]) / ICMPv6EchoRequest(id=9, seq=i)
        else:
            # An IPv4 first fragment (MF set): ESP carries it as an opaque packet.
            p = IP(src=INNER4[0], dst=INNER4[1], flags="MF", proto=17, id=0x4242)
        size = min(size, MAX_INNER - len(bytes(p)))
        if size:
            p = p / Raw(load=bytes(rng.getrandbits(8) for _ in range(size)))
        b = bytes(p)
        assert len(b) <= MAX_INNER
        out.append(b)
    return out


def seq_plan(n, esn):
    """Full sequence numbers for n packets: 1, 2, 3... then jumps to the top of the 32-bit space.

    Without ESN it ends on 2^32 - 1 (the last valid number); with ESN it steps (via 2^31, so that a receiver
    following RFC 4303 Appendix A keeps up) across 2^32, where the transmitted low half wraps to 0.
    """
    if not esn:
        if n < 4:
            return list(range(1, n + 1))
        return list(range(1, n - 2)) + [2**32 - 3, 2**32 - 2, 2**32 - 1]
    if n < 12:
        return list(range(1, n + 1))
    return list(range(1, n - 9)) + [2**31] + list(range(2**32 - 4, 2**32 + 5))


def esn_high(top, lo, w=64):
    """The high 32 bits of a received sequence number whose low half is lo (RFC 4303 Appendix A2.2)."""
    tl, th = top & 0xFFFFFFFF, top >> 32
    if tl >= w - 1:
        return th + 1 if lo < tl - w + 1 else th
    bl = (tl - w + 1) % 2**32
    return th - 1 if (lo >= bl and th > 0) else th


def hexlines(path, items):
    with open(path, "w") as f:
        for it in items:
            f.write((it.hex() if isinstance(it, bytes) else str(it)) + "\n")


def read_hexlines(path):
    with open(path) as f:
        return [bytes.fromhex(l.strip()) for l in f if l.strip()]


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["udp", "raw"], required=True)
    ap.add_argument("--transform", choices=sorted(TRANSFORMS), required=True)
    ap.add_argument("--esn", choices=["0", "1"], required=True)
    ap.add_argument("--local", required=True)
    ap.add_argument("--remote", required=True)
    ap.add_argument("--out-spi", required=True)
    ap.add_argument("--out-key", required=True)
    ap.add_argument("--in-spi", required=True)
    ap.add_argument("--in-key", required=True)
    ap.add_argument("--send-count", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sent-out")
    ap.add_argument("--sent-seqs")
    ap.add_argument("--recv", type=int, default=0)
    ap.add_argument("--recv-out")
    ap.add_argument("--expect")
    ap.add_argument("--ready-file")
    ap.add_argument("--go-file")
    ap.add_argument("--timeout-secs", type=float, default=20.0)
    a = ap.parse_args()

    start = time.monotonic()
    deadline = start + a.timeout_secs
    udp = a.mode == "udp"
    esn = a.esn == "1"
    out_sa = make_sa(a.transform, int(a.out_spi, 16), bytes.fromhex(a.out_key), a.local, a.remote, udp, esn)
    in_sa = make_sa(a.transform, int(a.in_spi, 16), bytes.fromhex(a.in_key), a.remote, a.local, udp, esn)

    # Build (and encrypt) everything before the start signal, so sending is quick.
    inners = gen_inner(random.Random(a.seed), a.send_count)
    seqs = seq_plan(a.send_count, esn)
    wire = []
    for inner, seq in zip(inners, seqs):
        pkt = IPv6(inner) if inner[0] >> 4 == 6 else IP(inner)
        # Set the SA's counters directly: encrypt(seq_num=0) or esn=0 would fall back to the SA's own values.
        out_sa.seq_num = seq & 0xFFFFFFFF
        out_sa.esn = seq >> 32
        enc = out_sa.encrypt(pkt)
        if udp:
            if UDP not in enc or enc[UDP].dport != NAT_T_PORT:
                fail("scapy did not build IP/UDP(4500)/ESP: %r" % enc)
            esp_bytes = bytes(enc[UDP].payload)
        else:
            if enc[IP].proto != IPPROTO_ESP:
                fail("scapy did not build IP/ESP: %r" % enc)
            esp_bytes = bytes(enc[IP].payload)
        wire.append(esp_bytes)
    if a.sent_out:
        hexlines(a.sent_out, inners)
    if a.sent_seqs:
        hexlines(a.sent_seqs, seqs[: len(inners)])

    if udp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((a.local, NAT_T_PORT))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_ESP)
        sock.bind((a.local, 0))
    sock.settimeout(0.1)

    received = []  # raw datagrams: UDP payloads, or whole IPv4 packets from the raw socket
    recv_errors = []

    def receiver():
        while len(received) < a.recv and time.monotonic() < deadline:
            try:
                data, (src, _port) = sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError as e:
                recv_errors.append("recv: %s" % e)
                return
            if src != a.remote:
                sys.stderr.write("scapy-peer: ignoring %d bytes from %s\n" % (len(data), src))
                continue
            received.append(data)

    rx = threading.Thread(target=receiver, daemon=True)
    rx.start()
    if a.ready_file:
        with open(a.ready_file, "w") as f:
            f.write("ready\n")
    if a.go_file:
        while not os.path.exists(a.go_file):
            if time.monotonic() > deadline:
                fail("timed out waiting for %s" % a.go_file)
            time.sleep(0.005)

    for esp_bytes in wire:
        sock.sendto(esp_bytes, (a.remote, NAT_T_PORT if udp else 0))
        time.sleep(0.0005)

    rx.join(max(0.0, deadline - time.monotonic()) + 1.0)
    problems = list(recv_errors)
    got = []
    ivs = set()
    top = 0
    iv_len = in_sa.crypt_algo.iv_size
    icv_len = in_sa.crypt_algo.icv_size or in_sa.auth_algo.icv_size
    for i, data in enumerate(received[: a.recv]):
        try:
            if udp:
                if data[:4] == b"\0\0\0\0" or len(data) < 8:
                    raise ValueError("not an ESP packet on port 4500 (non-ESP marker or too short)")
                outer = IP(src=a.remote, dst=a.local) / UDP(sport=NAT_T_PORT, dport=NAT_T_PORT) / ESP(data)
                esp_wire = data
            else:
                outer = IP(data)
                if outer.proto != IPPROTO_ESP or ESP not in outer:
                    raise ValueError("raw socket delivered a non-ESP packet")
                esp_wire = bytes(outer[ESP])
            lo = int.from_bytes(esp_wire[4:8], "big")
            hi = esn_high(top, lo) if esn else 0
            full = (hi << 32) | lo
            if full != i + 1:
                problems.append("packet #%d carries sequence number %d, expected %d" % (i + 1, full, i + 1))
            top = max(top, full)
            in_sa.esn = hi
            inner_pkt = in_sa.decrypt(outer)  # verifies the ICV (HMAC or AEAD tag)
            inner = bytes(inner_pkt)
            # Look at the trailer too: scapy's decrypt() does not check it.
            plain = in_sa.crypt_algo.decrypt(in_sa, ESP(esp_wire), in_sa.crypt_key, icv_len, esn_en=esn, esn=hi)
            if plain.data != inner:
                problems.append("packet #%d: scapy's dissected inner packet differs from the decrypted bytes" % (i + 1))
            if plain.padding != bytes(range(1, plain.padlen + 1)):
                problems.append("packet #%d: padding %s is not 1, 2, 3, ... (RFC 4303 2.4)" % (i + 1, plain.padding.hex()))
            want_nh = {4: 4, 6: 41}.get(inner[0] >> 4 if inner else None)
            if plain.nh != want_nh:
                problems.append("packet #%d: next header %d for an IPv%d packet" % (i + 1, plain.nh, inner[0] >> 4))
            iv = esp_wire[8 : 8 + iv_len]
            if iv in ivs:
                problems.append("packet #%d: IV %s used twice" % (i + 1, iv.hex()))
            ivs.add(iv)
            if (len(esp_wire) - 8 - iv_len - icv_len) % max(4, in_sa.crypt_algo.block_size) != 0:
                problems.append("packet #%d: encrypted part not aligned" % (i + 1))
            got.append(inner)
        except Exception as e:  # noqa: BLE001 - report every failure with the packet
            problems.append("packet #%d: scapy could not decrypt it: %s: %s; datagram: %s"
                            % (i + 1, type(e).__name__, e, data.hex()))
    if a.recv_out:
        hexlines(a.recv_out, got)
    if len(received) < a.recv:
        problems.append("received only %d of %d ESP packets before the timeout" % (len(received), a.recv))
    if a.expect:
        want = read_hexlines(a.expect)
        if len(want) != a.recv:
            problems.append("--expect holds %d packets but --recv is %d" % (len(want), a.recv))
        for i, (w, g) in enumerate(zip(want, got)):
            if w != g:
                d = first_diff(w, g)
                problems.append("packet #%d: inner packet differs from what esp-peer sent: %d vs %d bytes, first "
                                "difference at byte %d\n  sent: %s\n  got:  %s" % (i + 1, len(w), len(g), d, w.hex(), g.hex()))
    sys.stderr.write("scapy-peer: %d sent (%s %s esn=%d), %d of %d received, %d decrypted, %.2fs\n"
                     % (len(wire), a.transform, a.mode, esn, len(received), a.recv, len(got), time.monotonic() - start))
    if problems:
        fail("\n".join(problems))


if __name__ == "__main__":
    main()
