#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Makes throw-away TLS credentials for the qed-nbd TLS tests in DIR (never
# checked in): a CA, a server certificate for localhost/127.0.0.1, client
# certificates (allowed, another name, expired, from another CA) and PSK
# files, laid out as QEMU's tls-creds-x509 / tls-creds-psk objects expect.
#   make-tls-creds.sh DIR
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
t=templates
mkdir -p $t

key() { certtool --generate-privkey --key-type=ecdsa --outfile "$1" 2>/dev/null; }

# Two certificate authorities: the real one and a stranger.
for ca in ca otherca; do
  key $ca-key.pem
  cat > $t/$ca.info <<EOT
cn = QED Test $ca
ca
cert_signing_key
crl_signing_key
expiration_days = 30
EOT
  certtool --generate-self-signed --load-privkey $ca-key.pem --template $t/$ca.info \
           --outfile $ca-cert.pem 2>/dev/null
done

# The server: certificate, key and the CA it trusts for client certificates.
mkdir -p server
key server/server-key.pem
cat > $t/server.info <<EOT
organization = QED Test
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
tls_www_server
encryption_key
signing_key
expiration_days = 30
EOT
certtool --generate-certificate --load-privkey server/server-key.pem --load-ca-certificate ca-cert.pem \
         --load-ca-privkey ca-key.pem --template $t/server.info --outfile server/server-cert.pem 2>/dev/null
cp ca-cert.pem server/ca-cert.pem

# Clients: DIR/NAME/{ca-cert,client-cert,client-key}.pem for QEMU, and the
# same files are named by nbds:// URIs for libnbd.
client() {  # name cn signing-ca extra-template-lines trusted-ca
  local name=$1 cn=$2 signer=$3 extra=$4 trust=$5
  mkdir -p "$name"
  key "$name/client-key.pem"
  printf 'country = GB\norganization = QED Test\ncn = %s\ntls_www_client\nencryption_key\nsigning_key\n%b' \
         "$cn" "$extra" > "$t/$name.info"
  certtool --generate-certificate --load-privkey "$name/client-key.pem" --load-ca-certificate $signer-cert.pem \
           --load-ca-privkey $signer-key.pem --template "$t/$name.info" --outfile "$name/client-cert.pem" 2>/dev/null
  cp $trust-cert.pem "$name/ca-cert.pem"
}
client client       client.test ca      'expiration_days = 30\n' ca
client client-other other.test  ca      'expiration_days = 30\n' ca
client client-expired client.test ca    'activation_date = "2020-01-01 00:00:00"\nexpiration_date = "2020-02-01 00:00:00"\n' ca
# Signed by a CA the server does not know, trusting a CA that did not sign the server.
client client-wrongca client.test otherca 'expiration_days = 30\n' otherca

# Pre-shared keys: the server knows alice and carol; bob is a stranger.
mkdir -p psk psk-bob psk-alice-wrong
printf 'alice:%s\ncarol:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
       "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > psk/keys.psk
grep '^alice:' psk/keys.psk > psk/alice.psk
printf 'bob:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > psk-bob/keys.psk
printf 'alice:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > psk-alice-wrong/keys.psk
chmod 600 ./*-key.pem ./*/*-key.pem ./psk*/*.psk
rm -rf $t
