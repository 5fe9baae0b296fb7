#!/bin/sh
# Regenerates the X.509 test certificates (OpenSSL 3). Valid for 100 years from the day they were made; the tests
# take their times from the certificates, not from the clock.
set -eu
cd "$(dirname "$0")"
days=36500
key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.key" 2>/dev/null; }
ca() { # name subject
    key "$1"
    openssl req -x509 -new -key "$1.key" -out "$1.pem" -subj "$2" -days $days \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
issue() { # name subject issuer extensions [sigopts...]
    name=$1 subj=$2 issuer=$3 ext=$4; shift 4
    [ -f "$name.key" ] || key "$name"
    openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr"
    printf '%b\n' "$ext" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" -CAcreateserial -days $days \
        -sha256 -extfile "$name.ext" -out "$name.pem" "$@" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}
ca ca "/C=CH/O=vmsecd test/CN=Test CA"
ca other-ca "/C=CH/O=vmsecd test/CN=Other CA"
issue inter "/C=CH/O=vmsecd test/CN=Test Intermediate" ca \
    "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign"
issue a "/C=CH/O=vmsecd test/CN=a.example.net" inter \
    "subjectAltName=IP:198.18.0.1,DNS:a.example.net,email:admin@a.example.net\nkeyUsage=critical,digitalSignature"
issue b "/C=CH/O=vmsecd test/CN=b.example.net" ca \
    "subjectAltName=IP:198.18.0.2,DNS:b.example.net" -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest
issue stranger "/C=CH/O=vmsecd test/CN=stranger.example.net" other-ca "subjectAltName=IP:198.18.0.2"
issue critical "/C=CH/O=vmsecd test/CN=critical.example.net" ca \
    "subjectAltName=IP:198.18.0.2\n1.2.3.4=critical,DER:05:00"
issue encipher "/C=CH/O=vmsecd test/CN=encipher.example.net" ca \
    "subjectAltName=IP:198.18.0.2\nkeyUsage=critical,keyEncipherment"
# An end certificate used as an issuer: must be refused.
issue by-leaf "/C=CH/O=vmsecd test/CN=by-leaf.example.net" a "subjectAltName=IP:198.18.0.3"
# Too deep for the intermediate's pathlen:0.
issue inter2 "/C=CH/O=vmsecd test/CN=Test Intermediate 2" inter \
    "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign"
issue deep "/C=CH/O=vmsecd test/CN=deep.example.net" inter2 "subjectAltName=IP:198.18.0.4"
rm -f ./*.srl
# Only the keys the tests sign with are kept.
for k in *.key; do case $k in a.key|b.key) ;; *) rm -f "$k" ;; esac; done
