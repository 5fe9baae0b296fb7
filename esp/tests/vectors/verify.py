#!/usr/bin/env python3
"""Check the ESP test-vector files in this directory with an independent AEAD.

Usage: python3 verify.py [FILE ...]
With no arguments it checks every *.txt file next to this script.
It needs the `cryptography` package. It exits 0 only if every block in every
file passes.

File format: blocks separated by blank lines. Each line is `field = value`.
Hex is written without spaces or 0x. Lines starting with '#' are comments.
A block with only comments (such as a file header) is skipped. An empty value
(`payload =`) means zero bytes.

For every block it checks:
  * fields: all required ones present, none unknown, none twice; names unique
    across all files; field lengths (key 16/32 bytes for its transform,
    salt/spi/seq/seq_hi 4 bytes, iv 8 bytes, aad 8 or 12 bytes);
  * packet[0:4] == spi, packet[4:8] == seq, packet[8:16] == iv;
  * aad == spi || seq, or spi || seq_hi || seq when seq_hi is present (ESN);
  * AEAD-decrypting packet[16:] (ciphertext || 16-byte ICV) with nonce
    salt || iv and the aad gives payload || padding || pad_len || next_header.
    padding is the optional `padding` field, or else the RFC 4303 default
    01 02 03 ... pad_len;
  * encrypting that plaintext gives back exactly packet[16:];
  * ESP 4-byte alignment: len(payload) + pad_len + 2 is a multiple of 4;
  * tamper checks: one flipped bit in the ICV, the ciphertext or the AAD makes
    decryption fail. For ESN blocks, the 8-byte AAD spi || seq (without
    seq_hi) must also fail, which shows seq_hi really is authenticated.
"""

import os
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

REQUIRED = ["name", "source", "transform", "key", "salt", "spi", "seq", "iv",
            "aad", "payload", "pad_len", "next_header", "packet"]
OPTIONAL = ["seq_hi", "padding"]
HEX_FIELDS = ["key", "salt", "spi", "seq", "seq_hi", "iv", "aad", "payload",
              "padding", "packet"]
TRANSFORMS = {
    # transform: (key length, AEAD class)
    "aes-gcm-128": (16, AESGCM),
    "aes-gcm-256": (32, AESGCM),
    "chacha20-poly1305": (32, ChaCha20Poly1305),
}
ICV_LEN = 16


class VectorError(Exception):
    pass


def parse_file(path):
    """Yield (first line number, dict of fields) for each block with fields."""
    blocks = []
    cur, start = {}, None
    with open(path, encoding="ascii") as f:
        lines = f.read().split("\n")
    for lineno, raw in enumerate(lines + [""], 1):
        line = raw.rstrip()
        if line == "":
            if cur:
                blocks.append((start, cur))
            cur, start = {}, None
            continue
        if line.lstrip().startswith("#"):
            continue
        if "=" not in line:
            raise VectorError("%s:%d: not a 'field = value' line: %r" % (path, lineno, raw))
        field, value = line.split("=", 1)
        field, value = field.strip(), value.strip()
        if field not in REQUIRED and field not in OPTIONAL:
            raise VectorError("%s:%d: unknown field %r" % (path, lineno, field))
        if field in cur:
            raise VectorError("%s:%d: field %r given twice in one block" % (path, lineno, field))
        if start is None:
            start = lineno
        cur[field] = value
    return blocks


def unhex(v, field):
    if v != v.lower() or any(c not in "0123456789abcdef" for c in v) or len(v) % 2:
        raise VectorError("field %s is not lowercase hex of whole bytes: %r" % (field, v))
    return bytes.fromhex(v)


def expect(cond, msg):
    if not cond:
        raise VectorError(msg)


def check_block(b):
    for f in REQUIRED:
        expect(f in b, "missing required field %r" % f)
    transform = b["transform"]
    expect(transform in TRANSFORMS, "unknown transform %r" % transform)
    keylen, aead_cls = TRANSFORMS[transform]

    h = {f: unhex(b[f], f) for f in HEX_FIELDS if f in b}
    expect(len(h["key"]) == keylen, "key is %d bytes, %s needs %d" % (len(h["key"]), transform, keylen))
    for f in ("salt", "spi", "seq", "seq_hi"):
        if f in h:
            expect(len(h[f]) == 4, "%s must be 4 bytes" % f)
    expect(len(h["iv"]) == 8, "iv must be 8 bytes")
    expect(len(h["aad"]) in (8, 12), "aad must be 8 or 12 bytes")
    pad_len, next_header = int(b["pad_len"]), int(b["next_header"])
    expect(0 <= pad_len <= 255 and 0 <= next_header <= 255, "pad_len/next_header out of range")

    spi, seq, iv, packet = h["spi"], h["seq"], h["iv"], h["packet"]
    esn = "seq_hi" in h

    # Header fields as they appear in the packet.
    expect(len(packet) >= 16 + 2 + ICV_LEN, "packet too short")
    expect(packet[0:4] == spi, "packet[0:4] != spi")
    expect(packet[4:8] == seq, "packet[4:8] != seq")
    expect(packet[8:16] == iv, "packet[8:16] != iv")

    # AAD construction (RFC 4106 section 5, RFC 7634 section 2.1).
    want_aad = spi + h["seq_hi"] + seq if esn else spi + seq
    expect(h["aad"] == want_aad, "aad != spi||%sseq" % ("seq_hi||" if esn else ""))

    # Plaintext = payload || padding || pad_len || next_header.
    padding = h.get("padding", bytes(range(1, pad_len + 1)))
    expect(len(padding) == pad_len, "padding length != pad_len")
    plaintext = h["payload"] + padding + bytes([pad_len, next_header])
    expect(len(plaintext) % 4 == 0, "ESP trailer not 4-byte aligned (plaintext %d bytes)" % len(plaintext))
    expect(len(packet) == 16 + len(plaintext) + ICV_LEN,
           "packet length %d != 16 + %d + %d" % (len(packet), len(plaintext), ICV_LEN))

    aead = aead_cls(h["key"])
    nonce = h["salt"] + iv
    body = packet[16:]
    try:
        got = aead.decrypt(nonce, body, h["aad"])
    except InvalidTag:
        raise VectorError("ICV check failed when decrypting the packet")
    expect(got == plaintext, "decrypted plaintext differs:\n  got  %s\n  want %s" % (got.hex(), plaintext.hex()))
    expect(spi + seq + iv + aead.encrypt(nonce, plaintext, h["aad"]) == packet,
           "encryption does not reproduce the packet")

    # Tamper checks: the AEAD must reject these.
    def must_fail(what, data, aad):
        try:
            aead.decrypt(nonce, data, aad)
        except InvalidTag:
            return
        raise VectorError("decryption unexpectedly succeeded with %s" % what)

    flip = lambda bs, i: bs[:i] + bytes([bs[i] ^ 0x01]) + bs[i + 1:]
    must_fail("a flipped ICV bit", flip(body, len(body) - 1), h["aad"])
    must_fail("a flipped ciphertext bit", flip(body, 0), h["aad"])
    must_fail("a flipped AAD bit", body, flip(h["aad"], len(h["aad"]) - 1))
    if esn:
        must_fail("the 8-byte AAD (seq_hi left out)", body, spi + seq)

    return "%-18s %s%s, payload %d B, pad %d, nh %d, packet %d B" % (
        transform, "ESN " if esn else "", ("seq_hi=%s seq=%s" % (b["seq_hi"], b["seq"])) if esn else "seq=" + b["seq"],
        len(h["payload"]), pad_len, next_header, len(packet))


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    paths = argv[1:] or sorted(os.path.join(here, p) for p in os.listdir(here) if p.endswith(".txt"))
    if not paths:
        print("no vector files found")
        return 1
    names, failures, total = {}, 0, 0
    for path in paths:
        try:
            blocks = parse_file(path)
        except (VectorError, UnicodeDecodeError) as e:
            print("FAIL %s: %s" % (path, e))
            failures += 1
            continue
        print("%s: %d vector(s)" % (os.path.basename(path), len(blocks)))
        if not blocks:
            print("FAIL %s: no vectors" % path)
            failures += 1
        for lineno, b in blocks:
            total += 1
            label = b.get("name", "<unnamed block at line %d>" % lineno)
            try:
                if label in names:
                    raise VectorError("duplicate name (also at %s)" % names[label])
                names[label] = "%s:%d" % (os.path.basename(path), lineno)
                info = check_block(b)
                print("  ok   %-26s %s" % (label, info))
            except (VectorError, ValueError) as e:
                failures += 1
                print("  FAIL %-26s (%s:%d) %s" % (label, os.path.basename(path), lineno, e))
    print("%d vector(s) checked, %d failure(s)" % (total, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
