#!/bin/sh
# The same report checks done with the `openssl` command line, for comparison with
# `cargo bench -p nitride-guest-driver --bench verify` (see docs/benchmarks.md).
#
# usage: guest-driver/benches/openssl-compare.sh [VECTOR_DIR] [ROOTS_DIR] [N]
# Prints the verdicts, then the wall time of N runs of each check.
set -eu
V=${1:-${NITRIDE_SNP_VECTORS:-$(dirname "$0")/../../../shared/snp-vectors}/genoa-v3-routex}
R=${2:-$(dirname "$V")/roots}
N=${3:-200}
GEN=$(basename "$V" | cut -d- -f1)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# Report signature: signed region 0x000..0x2A0, r and s little-endian -> DER.
head -c 672 "$V/report.bin" > "$T/signed.bin"
be() { xxd -p -s "$1" -l 48 "$V/report.bin" | tr -d '\n' | fold -w2 | tac | tr -d '\n'; }
printf 'asn1=SEQUENCE:sig\n[sig]\nr=INTEGER:0x%s\ns=INTEGER:0x%s\n' "$(be 0x2A0)" "$(be 0x2E8)" > "$T/sig.cnf"
openssl asn1parse -genconf "$T/sig.cnf" -out "$T/sig.der" > /dev/null
openssl x509 -inform der -in "$V/vcek.der" -out "$T/vcek.pem"
openssl x509 -in "$T/vcek.pem" -pubkey -noout > "$T/vcek.pub"

report_only() { openssl dgst -sha384 -verify "$T/vcek.pub" -signature "$T/sig.der" "$T/signed.bin"; }
# Chain: ARK (trust anchor, self-signed, checked with -check_ss_sig) -> ASK -> VCEK,
# all RSASSA-PSS; VCEK validity not checked (the Rust verifier has no clock either).
chain() {
  openssl verify -no_check_time -check_ss_sig -CAfile "$R/$GEN-ark.pem" \
    -untrusted "$R/$GEN-ask.pem" "$T/vcek.pem"
}

echo "== $(openssl version)"
echo "== vector $V"
report_only
chain

bench() {
  name=$1; shift
  start=$(date +%s.%N)
  i=0; while [ $i -lt "$N" ]; do "$@" > /dev/null 2>&1 || { echo "$name failed"; exit 1; }; i=$((i+1)); done
  end=$(date +%s.%N)
  echo "$name: $N runs in $(echo "$end - $start" | bc) s, $(echo "$N / ($end - $start)" | bc) per second"
}
bench "openssl dgst (report signature only)" report_only
bench "openssl verify (chain only)" chain
full() { chain && report_only; }
bench "openssl full (chain + report signature)" full

# The primitives in-process (no process start-up, no file parsing): ECDSA P-384 and
# RSA-4096 verifications per second. PSS and PKCS#1 v1.5 verification cost the same
# (one public-exponent modexp dominates).
openssl speed -seconds 3 ecdsap384 rsa4096 2>/dev/null | grep -E '^(rsa 4096|.*nistp384)'
