#!/usr/bin/env bash
# Interoperability checks: drive a running Warden with real third-party MQTT clients.
#
#   scripts/interop.sh target/release/warden
#
# Needs mosquitto_pub/mosquitto_sub (Debian: mosquitto-clients), python3 with paho-mqtt 2.x,
# openssl (for the TLS checks), and optionally node + npm (MQTT.js is installed into the temporary
# directory, never into the repo). Starts the broker on free loopback ports (MQTT over TCP and
# over WebSocket) with password authentication, then a second one with mqtts and wss listeners
# that require client certificates (two PKIs: `warden cert` and openssl), and a third with
# [auth.jwt] taking JWT access tokens from oidc-provider (npm, installed into the temporary
# directory like MQTT.js; needs curl). Prints `ok   NAME` /
# `FAIL NAME` per check and `N passed, M failed` at the end.
# Exits 1 if anything failed.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 PATH/TO/warden" >&2
  exit 2
fi
BIN=$1
[ -x "$BIN" ] || { echo "not an executable: $BIN" >&2; exit 2; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
HERE=$(cd "$(dirname "$0")" && pwd)

for tool in mosquitto_pub mosquitto_sub python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (install mosquitto-clients / python3)" >&2; exit 2; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/warden-interop.XXXXXX")
BROKER_PID=
TLS_PID=    # the second broker, with TLS listeners (see the TLS section)
ENR_PID=    # the enrollment broker (see the enrollment section)
BG_PIDS=()  # running background clients only: a reaped PID may be reused by anything
cleanup() {
  local p
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "$BROKER_PID" "$TLS_PID" "$ENR_PID"; do
    [ -n "$p" ] || continue
    kill "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

passed=0
failed=0
ok()   { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }
check() {  # check NAME COMMAND...  — ok if the command succeeds; its output is shown on failure
  local name=$1; shift
  # a redirected function call still runs in this shell, so it can record background PIDs
  if "$@" >"$TMP/check.out" 2>&1; then
    ok "$name"
  else
    fail "$name"
    sed 's/^/    /' "$TMP/check.out"
  fi
}
# Adds the ok/FAIL lines of a sub-checker's output (already printed) to the totals.
tally() {  # tally OUTPUT EXIT_STATUS NAME
  local n_ok n_fail
  n_ok=$(grep -c '^ok   ' <<<"$1")
  n_fail=$(grep -c '^FAIL ' <<<"$1")
  passed=$((passed + n_ok))
  failed=$((failed + n_fail))
  if [ "$2" -ne 0 ] && [ "$n_fail" -eq 0 ]; then
    fail "$3 exited with status $2"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_open() {
  python3 -c 'import socket, sys; s = socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))))' "$1" 2>/dev/null
}
wait_port() {  # wait_port PORT SECONDS [BROKER_PID] — poll until something accepts on PORT, bounded
  local deadline=$((SECONDS + $2)) pid=${3:-$BROKER_PID}
  while [ "$SECONDS" -lt "$deadline" ]; do
    port_open "$1" && return 0
    kill -0 "$pid" 2>/dev/null || return 1   # the broker exited: no point waiting
    sleep 0.1
  done
  return 1
}
# Polls FILE until it matches the regex, bounded; for waiting on a client's SUBACK.
wait_for_line() {  # wait_for_line FILE REGEX SECONDS
  local deadline=$((SECONDS + $3))
  while [ "$SECONDS" -lt "$deadline" ]; do
    grep -qE "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

PORT=$(free_port)
WSPORT=$(free_port)
while [ "$WSPORT" = "$PORT" ]; do WSPORT=$(free_port); done
USER_NAME=interop
USER_PASS="pw-$RANDOM-$RANDOM-$$"
MOSQ_USER=mosq
MOSQ_PASS="mpw-$RANDOM-$RANDOM"
WRONG_PASS="wrong-$RANDOM-$RANDOM"

echo "# broker: $BIN"
echo "# MQTT on 127.0.0.1:$PORT, WebSocket on 127.0.0.1:$WSPORT/mqtt, work dir $TMP"

# --- password file: one user in Mosquitto's format, one argon2id user added by `warden passwd`
# mosquitto_passwd is in Debian's `mosquitto` package, not `mosquitto-clients`; without it the
# Mosquitto user gets a `$7$` (PBKDF2-SHA512, 101 iterations) line written the way it would.
PASSWD=$TMP/passwd
if command -v mosquitto_passwd >/dev/null; then
  MOSQ_HOW="made by mosquitto_passwd"
  mosquitto_passwd -c -b "$PASSWD" "$MOSQ_USER" "$MOSQ_PASS" >/dev/null 2>&1 \
    || fail "mosquitto_passwd -c -b creates a password file"
else
  MOSQ_HOW='in mosquitto_passwd $7$ format (no mosquitto_passwd here)'
  python3 - "$PASSWD" "$MOSQ_USER" "$MOSQ_PASS" <<'PY'
import base64, hashlib, os, sys
path, user, password = sys.argv[1:]
salt = os.urandom(12)
digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
b64 = lambda b: base64.b64encode(b).decode()
with open(path, "w") as f:
    f.write(f"{user}:$7$101${b64(salt)}${b64(digest)}\n")
PY
fi
check "warden passwd FILE USER --password-stdin" \
  bash -c 'printf "%s\n" "$3" | "$1" passwd "$2" "$4" --password-stdin >/dev/null 2>&1' \
  _ "$BIN" "$PASSWD" "$USER_PASS" "$USER_NAME"

cat >"$TMP/warden.toml" <<EOF
data_dir = "$TMP/data"

[[listener]]
bind = "127.0.0.1:$PORT"
protocol = "mqtt"

[[listener]]
bind = "127.0.0.1:$WSPORT"
protocol = "ws"

[auth]
allow_anonymous = false
password_file = "$PASSWD"

# Every check comes from 127.0.0.1 and many are deliberate refusals: lift the per-address ban
# (tested on its own in the Rust suite and by the acceptance checks).
[limits]
auth_fail_ban = { failures = 100000 }
EOF

"$BIN" serve --config "$TMP/warden.toml" >"$TMP/warden.log" 2>&1 &
BROKER_PID=$!
if wait_port "$PORT" 30 && wait_port "$WSPORT" 10; then
  ok "broker listens on TCP and WebSocket ports"
else
  fail "broker listens on TCP and WebSocket ports"
  echo "--- last lines of the broker log:"
  tail -20 "$TMP/warden.log"
  echo "$passed passed, $failed failed"
  exit 1
fi

AUTH=(-h 127.0.0.1 -p "$PORT" -u "$USER_NAME" -P "$USER_PASS")

# --- QoS round trips with Mosquitto's clients, for each protocol version
# A subscriber is started with -d; publishing starts only once its debug output shows the SUBACK
# ("Subscribed (mid: ...)"), so no message can race the subscription.
roundtrip() {  # roundtrip VERSION QOS
  local v=$1 q=$2 topic="interop/mosq/$1/q$2/$RANDOM$RANDOM" out="$TMP/sub-$1-$2.out" sub i
  local want="" got
  timeout 30 stdbuf -oL mosquitto_sub "${AUTH[@]}" -V "$v" -d -q "$q" -t "$topic" -C 3 -W 25 \
    >"$out" 2>&1 &
  sub=$!
  BG_PIDS=("$sub")
  if ! wait_for_line "$out" '^Subscribed \(mid' 10; then
    kill "$sub" 2>/dev/null; wait "$sub" 2>/dev/null; BG_PIDS=()
    echo "no SUBACK; subscriber output:"; tail -5 "$out"
    return 1
  fi
  for i in 1 2 3; do
    want+="payload-$v-$q-$i "
    timeout 10 mosquitto_pub "${AUTH[@]}" -V "$v" -q "$q" -t "$topic" -m "payload-$v-$q-$i" \
      || { echo "mosquitto_pub -V $v -q $q failed"; kill "$sub" 2>/dev/null; wait "$sub" 2>/dev/null; BG_PIDS=(); return 1; }
  done
  wait "$sub"
  BG_PIDS=()
  got=$(grep -E '^payload-' "$out" | tr '\n' ' ')
  if [ "$got" != "$want" ]; then
    echo "expected: $want"; echo "received: $got"
    return 1
  fi
}
for v in mqttv31 mqttv311 mqttv5; do
  for q in 0 1 2; do
    check "mosquitto_pub/sub -V $v QoS $q round trip" roundtrip "$v" "$q"
  done
done

check "user $MOSQ_HOW accepted" \
  timeout 10 mosquitto_pub -h 127.0.0.1 -p "$PORT" -u "$MOSQ_USER" -P "$MOSQ_PASS" -q 1 \
  -t interop/mosq-user -m x

# --- retained message reaches a subscriber that arrives later
retained() {  # retained VERSION
  local v=$1 topic="interop/retain/$1/$RANDOM$RANDOM" msg="retained-$1-$RANDOM" got
  timeout 10 mosquitto_pub "${AUTH[@]}" -V "$v" -q 1 -r -t "$topic" -m "$msg" || return 1
  got=$(timeout 15 mosquitto_sub "${AUTH[@]}" -V "$v" -q 1 -t "$topic" -C 1 -W 10 -v) || {
    echo "no retained message received"; return 1; }
  [ "$got" = "$topic $msg" ] || { echo "received: $got"; return 1; }
  # clear it again (an empty retained payload deletes it) so reruns start clean
  timeout 10 mosquitto_pub "${AUTH[@]}" -V "$v" -q 1 -r -n -t "$topic" || return 1
}
for v in mqttv31 mqttv311 mqttv5; do
  check "retained message delivered to a later subscriber (-V $v)" retained "$v"
done

# --- refused connections: non-zero exit, and the CONNACK code the spec requires
refused() {  # refused VERSION EXPECTED_CONNACK MOSQUITTO_PUB_AUTH_ARGS...
  local v=$1 want=$2 out
  shift 2
  out=$(timeout 10 mosquitto_pub -d -h 127.0.0.1 -p "$PORT" "$@" -V "$v" -q 1 -t interop/refused -m x 2>&1) \
    && { echo "accepted: $(tail -1 <<<"$out")"; return 1; }
  grep -q "received CONNACK ($want)" <<<"$out" || {
    echo "expected CONNACK ($want), got:"; grep -i connack <<<"$out"; return 1; }
}
check "wrong password refused, MQTT 3.1.1 (CONNACK 4)" refused mqttv311 4 -u "$USER_NAME" -P "$WRONG_PASS"
check "wrong password refused, MQTT 3.1 (CONNACK 4)" refused mqttv31 4 -u "$USER_NAME" -P "$WRONG_PASS"
check "wrong password refused, MQTT 5 (CONNACK 0x86)" refused mqttv5 134 -u "$USER_NAME" -P "$WRONG_PASS"
check "unknown user refused, MQTT 5 (CONNACK 0x86)" refused mqttv5 134 -u "nobody-$RANDOM" -P "$WRONG_PASS"
check "anonymous refused, MQTT 3.1.1 (CONNACK 5)" refused mqttv311 5
check "anonymous refused, MQTT 5 (CONNACK 0x87)" refused mqttv5 135

# --- paho-mqtt (Python): TCP and WebSocket, v3.1.1 and v5
if python3 -c 'import paho.mqtt, sys; sys.exit(int(paho.mqtt.__version__.split(".")[0]) != 2)' 2>/dev/null; then
  out=$(timeout 300 python3 "$HERE/interop_paho.py" "$PORT" "$WSPORT" "$USER_NAME" "$USER_PASS" 2>&1)
  rc=$?
  echo "$out"
  tally "$out" "$rc" "interop_paho.py"
else
  fail "paho-mqtt 2.x is not installed (pip install 'paho-mqtt>=2,<3')"
fi

# --- MQTT.js (Node): installed into the temp dir; skipped when npm cannot install it
if command -v node >/dev/null && command -v npm >/dev/null; then
  mkdir -p "$TMP/js"
  if (cd "$TMP/js" && timeout 180 npm install --prefix "$TMP/js" --no-package-lock --no-audit \
        --no-fund --loglevel=error --fetch-retries=1 mqtt@5 >"$TMP/npm.log" 2>&1); then
    out=$(MQTTJS_DIR="$TMP/js" timeout 120 node "$HERE/interop_mqttjs.mjs" "$PORT" "$WSPORT" \
      "$USER_NAME" "$USER_PASS" 2>&1)
    rc=$?
    echo "$out"
    tally "$out" "$rc" "interop_mqttjs.mjs"
  else
    echo "skip MQTT.js checks: 'npm install mqtt@5' failed (offline?):"
    head -3 "$TMP/npm.log" | sed 's/^/    /'
  fi
else
  echo "skip MQTT.js checks: node/npm not found"
fi

# --- the broker survived all of that, and never logged a password
check "broker process still running" kill -0 "$BROKER_PID"
if grep -qF -e "$USER_PASS" -e "$MOSQ_PASS" -e "$WRONG_PASS" "$TMP/warden.log"; then
  fail "no password appears in the broker log"
else
  ok "no password appears in the broker log"
fi

# --- TLS: a second broker whose mqtts and wss listeners require client certificates
# PKI 1 is made by `warden cert` (CA, server certificate for localhost/127.0.0.1, dev-001,
# dev-002); PKI 2 by the openssl CLI alone: a CA (`openssl req -x509`) and, with `openssl ca`,
# dev-101, dev-104, a revoked dev-rev and the CRL, an expired certificate, one with two CNs and
# one with the serverAuth EKU only. A self-signed certificate claiming CN=dev-001 stands for a
# foreign CA. The broker trusts both CAs; as a CRL is configured, a certificate whose issuer has
# no CRL would be refused, so PKI 1 gets an empty CRL, signed by openssl with warden's CA key.
TLS=$TMP/tls
PKI1=$TLS/pki1
PKI2=$TLS/pki2
TLS_LOG=$TLS/warden.log

# A minimal `openssl ca` setup in DIR: config, empty index.txt, serial, crlnumber.
ossl_ca_setup() {  # ossl_ca_setup DIR CA_CERT CA_KEY
  mkdir -p "$1/issued" || return 1
  cat >"$1/ca.cnf" <<CNF
[ ca ]
default_ca = interop_ca
[ interop_ca ]
database = $1/index.txt
new_certs_dir = $1/issued
certificate = $2
private_key = $3
serial = $1/serial
crlnumber = $1/crlnumber
default_md = sha256
default_days = 30
default_crl_days = 30
policy = cn_only
unique_subject = no
copy_extensions = none
[ cn_only ]
commonName = supplied
[ client ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
[ server_only ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
CNF
  : >"$1/index.txt" && echo 1000 >"$1/serial" && echo 01 >"$1/crlnumber"
}
# A P-256 key and a certificate signed by PKI 2's CA: $PKI2/NAME.pem, $PKI2/NAME.key.
ossl_issue() {  # ossl_issue NAME SUBJECT EXTENSION_SECTION [openssl ca options...]
  local name=$1 subj=$2 ext=$3
  shift 3
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$subj" \
    -keyout "$PKI2/$name.key" -out "$PKI2/$name.csr" &&
  openssl ca -batch -config "$PKI2/ca.cnf" -extensions "$ext" -preserveDN -notext \
    -in "$PKI2/$name.csr" -out "$PKI2/$name.pem" "$@"
}
make_pki1() {
  "$BIN" cert ca --dir "$PKI1" &&
  "$BIN" cert server --dir "$PKI1" --san localhost --san 127.0.0.1 &&
  "$BIN" cert client --dir "$PKI1" --cn dev-001 &&
  "$BIN" cert client --dir "$PKI1" --cn dev-002 &&
  ossl_ca_setup "$PKI1/openssl" "$PKI1/ca.pem" "$PKI1/ca.key" &&
  openssl ca -batch -config "$PKI1/openssl/ca.cnf" -gencrl -out "$PKI1/ca.crl" &&
  openssl crl -in "$PKI1/ca.crl" -noout -CAfile "$PKI1/ca.pem"  # checks the CRL's signature
}
make_pki2() {
  local out
  mkdir -p "$PKI2" "$TLS/foreign" &&
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=Warden Interop OpenSSL CA" -keyout "$PKI2/ca.key" -out "$PKI2/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" &&
  ossl_ca_setup "$PKI2" "$PKI2/ca.pem" "$PKI2/ca.key" &&
  ossl_issue dev-101 /CN=dev-101 client &&
  ossl_issue dev-104 /CN=dev-104 client &&  # revoked later, while the broker runs
  ossl_issue dev-rev /CN=dev-rev client &&
  ossl_issue expired /CN=dev-old client -startdate 20200101000000Z -enddate 20210101000000Z &&
  ossl_issue two-cn "/CN=admin/CN=dev-102" client &&
  ossl_issue server-only /CN=dev-103 server_only &&
  openssl ca -batch -config "$PKI2/ca.cnf" -revoke "$PKI2/dev-rev.pem" &&
  openssl ca -batch -config "$PKI2/ca.cnf" -gencrl -out "$PKI2/ca.crl" &&
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=dev-001 \
    -keyout "$TLS/foreign/dev-001.key" -out "$TLS/foreign/dev-001.pem" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=clientAuth" || return 1
  # openssl's own verdicts on what was made, so each refusal below is the broker agreeing with it
  openssl verify -CAfile "$PKI2/ca.pem" -crl_check -CRLfile "$PKI2/ca.crl" -purpose sslclient \
    "$PKI2/dev-101.pem" || return 1
  out=$(openssl verify -CAfile "$PKI2/ca.pem" -crl_check -CRLfile "$PKI2/ca.crl" "$PKI2/dev-rev.pem" 2>&1) \
    && { echo "openssl verify accepts dev-rev: $out"; return 1; }
  grep -q "certificate revoked" <<<"$out" || { echo "dev-rev: $out"; return 1; }
  openssl x509 -in "$PKI2/expired.pem" -noout -checkend 0 && { echo "expired.pem has not expired"; return 1; }
  out=$(openssl verify -CAfile "$PKI2/ca.pem" -purpose sslclient "$PKI2/server-only.pem" 2>&1) \
    && { echo "openssl verify -purpose sslclient accepts server-only.pem: $out"; return 1; }
  out=$(openssl x509 -in "$PKI2/two-cn.pem" -noout -subject -nameopt RFC2253)
  [ "$out" = "subject=CN=dev-102,CN=admin" ] || { echo "two-cn.pem: $out"; return 1; }
}

# mosquitto_pub/sub options for the mqtts listener with client certificate BASE.pem/BASE.key
# (none when BASE is empty); the server certificate is checked against PKI 1's CA and "localhost".
tls_opts() {  # tls_opts BASE — sets TLS_OPTS
  TLS_OPTS=(-h localhost -p "$TLS_PORT" --cafile "$PKI1/ca.pem")
  [ -z "$1" ] || TLS_OPTS+=(--cert "$1.pem" --key "$1.key")
}
# Subscriber SUB (client id SUB_ID) gets three QoS 1 messages from publisher PUB (PUB_ID).
tls_roundtrip() {  # tls_roundtrip VERSION SUB SUB_ID PUB PUB_ID
  local v=$1 topic="interop/tls/$3/$RANDOM$RANDOM" out="$TLS/sub-$3-$1.out" sub i want="" got
  tls_opts "$2"
  timeout 30 stdbuf -oL mosquitto_sub "${TLS_OPTS[@]}" -i "$3" -V "$v" -d -q 1 -t "$topic" \
    -C 3 -W 25 >"$out" 2>&1 &
  sub=$!
  BG_PIDS=("$sub")
  if ! wait_for_line "$out" '^Subscribed \(mid' 10; then
    kill "$sub" 2>/dev/null; wait "$sub" 2>/dev/null; BG_PIDS=()
    echo "no SUBACK; subscriber output:"; tail -5 "$out"
    return 1
  fi
  tls_opts "$4"
  for i in 1 2 3; do
    want+="tls-$v-$i "
    timeout 10 mosquitto_pub "${TLS_OPTS[@]}" -i "$5" -V "$v" -q 1 -t "$topic" -m "tls-$v-$i" \
      || { echo "mosquitto_pub as $5 failed"; kill "$sub" 2>/dev/null; wait "$sub" 2>/dev/null; BG_PIDS=(); return 1; }
  done
  wait "$sub"
  BG_PIDS=()
  got=$(grep -E '^tls-' "$out" | tr '\n' ' ')
  [ "$got" = "$want" ] || { echo "expected: $want"; echo "received: $got"; return 1; }
}
# Refused during the TLS handshake: mosquitto_pub fails without seeing a CONNACK, and the
# broker logs "TLS handshake failed" with a reason matching REASON (an extended regex).
tls_handshake_refused() {  # tls_handshake_refused REASON BASE CLIENT_ID
  local reason=$1 out rc seen deadline
  seen=$(wc -l <"$TLS_LOG")
  tls_opts "$2"
  out=$(timeout 10 mosquitto_pub -d "${TLS_OPTS[@]}" -i "$3" -q 1 -t interop/tls/refused -m x 2>&1)
  rc=$?
  [ "$rc" -eq 0 ] && { echo "accepted:"; echo "$out"; return 1; }
  [ "$rc" -eq 124 ] && { echo "mosquitto_pub hung (timed out):"; echo "$out"; return 1; }
  if grep -q 'received CONNACK' <<<"$out"; then
    echo "refused after the handshake, not in it:"; echo "$out"; return 1
  fi
  deadline=$((SECONDS + 5))
  until tail -n +$((seen + 1)) "$TLS_LOG" | grep -qiE "TLS handshake failed.*reason=.*($reason)"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "mosquitto_pub (exit $rc): $out"
      echo "no 'TLS handshake failed ... ($reason)' in the broker log; new lines:"
      tail -n +$((seen + 1)) "$TLS_LOG"
      return 1
    fi
    sleep 0.1
  done
}
# Refused after the handshake with CONNACK code WANT, and mosquitto_pub says TEXT.
tls_connack_refused() {  # tls_connack_refused VERSION WANT TEXT BASE CLIENT_ID
  local out
  tls_opts "$4"
  out=$(timeout 10 mosquitto_pub -d "${TLS_OPTS[@]}" -i "$5" -V "$1" -q 1 -t interop/tls/refused -m x 2>&1) \
    && { echo "accepted:"; echo "$out"; return 1; }
  grep -q "received CONNACK ($2)" <<<"$out" || { echo "expected CONNACK ($2), got:"; echo "$out"; return 1; }
  grep -qF "$3" <<<"$out" || { echo "expected the error text '$3', got:"; echo "$out"; return 1; }
}
tls_password_ignored() {  # a verified certificate wins; the user name and password are not consulted
  tls_opts "$PKI1/dev-001"
  timeout 10 mosquitto_pub "${TLS_OPTS[@]}" -i dev-001 -u "nobody-$RANDOM" -P "$WRONG_PASS" -q 1 \
    -t interop/tls/password -m x
}
# Revoking with `openssl ca -revoke` + `-gencrl` and SIGHUP (README, step 5): dev-104 is accepted
# before and refused after; a subscriber connected across the reload still gets messages.
tls_revoke_on_hup() {
  local topic="interop/tls/hup/$RANDOM$RANDOM" out="$TLS/sub-hup.out" sub n deadline got
  tls_opts "$PKI2/dev-104"
  timeout 10 mosquitto_pub "${TLS_OPTS[@]}" -i dev-104 -q 1 -t interop/tls/hup -m before \
    || { echo "dev-104 refused before it was revoked"; return 1; }
  tls_opts "$PKI1/dev-001"
  timeout 30 stdbuf -oL mosquitto_sub "${TLS_OPTS[@]}" -i dev-001 -d -q 1 -t "$topic" -C 1 -W 25 \
    >"$out" 2>&1 &
  sub=$!
  BG_PIDS=("$sub")
  wait_for_line "$out" '^Subscribed \(mid' 10 || { echo "no SUBACK"; tail -5 "$out"; return 1; }
  { openssl ca -batch -config "$PKI2/ca.cnf" -revoke "$PKI2/dev-104.pem" &&
    openssl ca -batch -config "$PKI2/ca.cnf" -gencrl -out "$PKI2/ca.crl"; } 2>&1 || return 1
  n=$(grep -c 'TLS certificates reloaded' "$TLS_LOG")
  kill -HUP "$TLS_PID"
  deadline=$((SECONDS + 10))
  until [ "$(grep -c 'TLS certificates reloaded' "$TLS_LOG")" -ge $((n + 2)) ]; do  # two listeners
    [ "$SECONDS" -lt "$deadline" ] || { echo "no 'TLS certificates reloaded' (x2) after SIGHUP"; tail -5 "$TLS_LOG"; return 1; }
    sleep 0.1
  done
  tls_handshake_refused 'revoked' "$PKI2/dev-104" dev-104 || return 1
  tls_opts "$PKI2/dev-101"
  timeout 10 mosquitto_pub "${TLS_OPTS[@]}" -i dev-101 -q 1 -t "$topic" -m after-reload \
    || { echo "dev-101 refused after the reload"; return 1; }
  wait "$sub"
  BG_PIDS=()
  got=$(grep -c '^after-reload$' "$out")
  [ "$got" -eq 1 ] || { echo "the subscriber connected across the reload got:"; cat "$out"; return 1; }
}

tls_checks() {
  local out rc
  if ! command -v openssl >/dev/null; then
    fail "TLS checks: openssl is installed (Debian: openssl)"
    return
  fi
  check "TLS: PKI 1 by warden cert (CA, server localhost/127.0.0.1, dev-001, dev-002), empty CRL by openssl" make_pki1
  check "TLS: PKI 2 by openssl (CA, dev-101, revoked dev-rev + CRL, expired, two CNs, serverAuth only)" make_pki2
  [ -s "$PKI1/server.pem" ] && [ -s "$PKI1/ca.crl" ] && [ -s "$PKI2/ca.crl" ] || return

  TLS_PORT=$(free_port)
  WSS_PORT=$(free_port)
  while [ "$WSS_PORT" = "$TLS_PORT" ]; do WSS_PORT=$(free_port); done
  echo "# TLS broker: MQTT over TLS on 127.0.0.1:$TLS_PORT, secure WebSocket on 127.0.0.1:$WSS_PORT/mqtt"
  cat "$PKI1/ca.pem" "$PKI2/ca.pem" >"$TLS/client-ca.pem"
  local l tls_keys="cert = \"$PKI1/server.pem\"
key = \"$PKI1/server.key\"
client_ca = \"$TLS/client-ca.pem\"
client_cert = \"required\"
crl = [\"$PKI1/ca.crl\", \"$PKI2/ca.crl\"]
identity_from_cert = \"cn\""
  cat >"$TLS/warden.toml" <<CONF
data_dir = "$TLS/data"

[[listener]]
bind = "127.0.0.1:$TLS_PORT"
protocol = "mqtts"
$tls_keys

[[listener]]
bind = "127.0.0.1:$WSS_PORT"
protocol = "wss"
path = "/mqtt"
$tls_keys

[auth]
allow_anonymous = false

[identity]
client_id_must_match = "exact"

# Every check comes from 127.0.0.1 and many are deliberate refusals: lift the per-address ban
# (tested on its own in the Rust suite and by the acceptance checks).
[limits]
auth_fail_ban = { failures = 100000 }
CONF
  "$BIN" serve --config "$TLS/warden.toml" >"$TLS_LOG" 2>&1 &
  TLS_PID=$!
  if wait_port "$TLS_PORT" 30 "$TLS_PID" && wait_port "$WSS_PORT" 10 "$TLS_PID"; then
    ok "TLS: broker listens on mqtts and wss ports"
  else
    fail "TLS: broker listens on mqtts and wss ports"
    tail -20 "$TLS_LOG" | sed 's/^/    /'
    return
  fi

  check "TLS mosquitto -V mqttv311: dev-001 (warden cert) receives 3 QoS 1 messages from dev-101 (openssl)" \
    tls_roundtrip mqttv311 "$PKI1/dev-001" dev-001 "$PKI2/dev-101" dev-101
  check "TLS mosquitto -V mqttv5: dev-101 (openssl) receives 3 QoS 1 messages from dev-001 (warden cert)" \
    tls_roundtrip mqttv5 "$PKI2/dev-101" dev-101 "$PKI1/dev-001" dev-001
  check "TLS mosquitto: client certificate authenticates; a wrong password with it is not consulted" \
    tls_password_ignored
  check "TLS mosquitto: no client certificate refused in the handshake" \
    tls_handshake_refused 'no certificates' "" dev-001
  check "TLS mosquitto: expired certificate refused in the handshake" \
    tls_handshake_refused 'expired' "$PKI2/expired" dev-old
  check "TLS mosquitto: revoked certificate (CRL) refused in the handshake" \
    tls_handshake_refused 'revoked' "$PKI2/dev-rev" dev-rev
  check "TLS mosquitto: serverAuth-only certificate refused in the handshake" \
    tls_handshake_refused 'extended key usage|ExtendedKeyUsage' "$PKI2/server-only" dev-103
  check "TLS mosquitto: self-signed certificate CN=dev-001 (foreign CA) refused in the handshake" \
    tls_handshake_refused 'unknown ?issuer' "$TLS/foreign/dev-001" dev-001
  check "TLS mosquitto -V mqttv311: two-CN certificate refused (CONNACK 5, not authorised)" \
    tls_connack_refused mqttv311 5 "Connection Refused: not authorised" "$PKI2/two-cn" dev-102
  check "TLS mosquitto -V mqttv5: two-CN certificate refused (CONNACK 0x87, Not authorized)" \
    tls_connack_refused mqttv5 135 "Not authorized" "$PKI2/two-cn" dev-102
  check "TLS mosquitto -V mqttv311: dev-001 as client id dev-002 refused (CONNACK 2, identifier rejected)" \
    tls_connack_refused mqttv311 2 "Connection Refused: identifier rejected" "$PKI1/dev-001" dev-002
  check "TLS mosquitto -V mqttv5: dev-001 as client id dev-002 refused (CONNACK 0x85)" \
    tls_connack_refused mqttv5 133 "Client Identifier not valid" "$PKI1/dev-001" dev-002

  if python3 -c 'import paho.mqtt, sys; sys.exit(int(paho.mqtt.__version__.split(".")[0]) != 2)' 2>/dev/null; then
    out=$(timeout 120 python3 "$HERE/interop_paho_tls.py" "$TLS_PORT" "$WSS_PORT" "$PKI1/ca.pem" \
      "$PKI1" "$PKI2" 2>&1)
    rc=$?
    echo "$out"
    tally "$out" "$rc" "interop_paho_tls.py"
  fi  # (a missing paho 2.x is already a FAIL above)

  check "TLS: openssl ca -revoke + -gencrl + SIGHUP: dev-104 refused after, a live subscriber undisturbed" \
    tls_revoke_on_hup
  check "TLS: broker process still running" kill -0 "$TLS_PID"
}
tls_checks

# --- Enrollment by claim (docs/enroll.md), with Mosquitto's own clients and curl: a broker
# whose mqtts listener trusts PKI 1 and whose [enroll] signs with PKI 1's CA. A device holding
# only the claim certificate makes its key and CSR with openssl, sends it with mosquitto_rr
# (MQTT 5 request/response), comes back with the certificate it got (mosquitto_pub), while the
# claim certificate itself is refused anything else; a second device enrolls over HTTP with a
# one-time token (curl), which cannot be used twice.
ENR=$TMP/enroll
ENR_TOKEN="enroll-admin-$RANDOM$RANDOM-$$"
enroll_checks() {
  local port http_port pid log="$ENR/warden.log" hash
  mkdir -p "$ENR" || return
  [ -f "$PKI1/ca.key" ] || { fail "enroll: PKI 1 is missing (the TLS section failed)"; return; }
  "$BIN" cert client --dir "$PKI1" --cn factory-claim --out claim >/dev/null 2>&1 ||
    { fail "enroll: warden cert client (the claim certificate)"; return; }
  hash=$(printf '%s' "$ENR_TOKEN" | "$BIN" passwd --hash-only 2>/dev/null) || { fail "enroll: admin token hash"; return; }
  port=$(free_port); http_port=$(free_port)
  while [ "$http_port" = "$port" ]; do http_port=$(free_port); done
  cat >"$ENR/warden.toml" <<CONF
data_dir = "$ENR/data"
[[listener]]
bind = "127.0.0.1:$port"
protocol = "mqtts"
cert = "$PKI1/server.pem"
key = "$PKI1/server.key"
client_ca = "$PKI1/ca.pem"
client_cert = "required"
[http]
bind = "127.0.0.1:$http_port"
admin_token_hash = "$hash"
[enroll]
enabled = true
ca_dir = "$PKI1"
[limits]
auth_fail_ban = { failures = 100000 }
CONF
  "$BIN" serve --config "$ENR/warden.toml" >"$log" 2>&1 &
  pid=$!
  ENR_PID=$pid
  if ! { wait_port "$port" 30 "$pid" && wait_port "$http_port" 10 "$pid"; }; then
    fail "enroll: broker listens"; tail -20 "$log" | sed 's/^/    /'; return
  fi
  export WARDEN_ADMIN_URL="http://127.0.0.1:$http_port" WARDEN_ADMIN_TOKEN="$ENR_TOKEN"
  check "enroll: warden admin claim add (claim certificate, template, id prefix)" \
    "$BIN" admin claim add batch-1 --cert "$PKI1/claim.pem" --type sensor --attr site=lab --id-prefix sensor-
  local tls=(-h 127.0.0.1 -p "$port" --cafile "$PKI1/ca.pem")
  enroll_mqtt() {
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=whatever" \
      -keyout "$ENR/sensor-1.key" -out "$ENR/sensor-1.csr" 2>/dev/null &&
    timeout 20 mosquitto_rr "${tls[@]}" --cert "$PKI1/claim.pem" --key "$PKI1/claim.key" -i sensor-1 \
      -t '$warden/enroll/sensor-1/request' -e '$warden/enroll/sensor-1/accepted' \
      -m "$(cat "$ENR/sensor-1.csr")" -W 15 >"$ENR/answer.json" &&
    python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); assert a["device_id"]=="sensor-1", a; open(sys.argv[2],"w").write(a["certificate"])' \
      "$ENR/answer.json" "$ENR/sensor-1.pem" &&
    openssl x509 -in "$ENR/sensor-1.pem" -noout -subject | grep -q 'CN *= *sensor-1'
  }
  check "enroll: mosquitto_rr (MQTT 5) with the claim certificate gets a certificate for CN=sensor-1" enroll_mqtt
  check "enroll: mosquitto_pub -V mqttv5 connects with it as sensor-1 and publishes (QoS 1)" \
    timeout 10 mosquitto_pub "${tls[@]}" --cert "$ENR/sensor-1.pem" --key "$ENR/sensor-1.key" -i sensor-1 \
      -V mqttv5 -q 1 -t devices/sensor-1/t -m 21.5
  claim_refused() {  # the claim certificate may do nothing but enroll (on_deny = disconnect)
    ! timeout 10 mosquitto_pub "${tls[@]}" --cert "$PKI1/claim.pem" --key "$PKI1/claim.key" -i sensor-2 \
      -V mqttv5 -q 1 -t devices/sensor-2/t -m x
  }
  check "enroll: the claim certificate cannot publish elsewhere" claim_refused
  device_listed() { "$BIN" admin device list | grep -q '^sensor-1.type=sensor.owner=-.attributes=site=lab'; }
  check "enroll: warden admin device list shows sensor-1 with the claim's template" device_listed
  enroll_http() {
    local tok code
    tok=$("$BIN" admin claim token batch-1 --device-id sensor-3 2>/dev/null) || return 1
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=x" \
      -keyout "$ENR/sensor-3.key" -out "$ENR/sensor-3.csr" 2>/dev/null || return 1
    python3 -c 'import json,sys; print(json.dumps({"csr": open(sys.argv[1]).read()}))' "$ENR/sensor-3.csr" >"$ENR/req.json"
    code=$(curl -sS -o "$ENR/http.json" -w '%{http_code}' -H "Authorization: Bearer $tok" \
      -H 'Content-Type: application/json' --data-binary @"$ENR/req.json" "http://127.0.0.1:$http_port/enroll")
    [ "$code" = 200 ] && grep -q '"device_id":"sensor-3"' "$ENR/http.json" || { cat "$ENR/http.json"; return 1; }
    code=$(curl -sS -o "$ENR/http2.json" -w '%{http_code}' -H "Authorization: Bearer $tok" \
      -H 'Content-Type: application/json' --data-binary @"$ENR/req.json" "http://127.0.0.1:$http_port/enroll")
    [ "$code" = 401 ] || { echo "second use: HTTP $code"; cat "$ENR/http2.json"; return 1; }
  }
  check "enroll: curl POST /enroll with a one-time token (200), not twice (401)" enroll_http
  check "enroll: broker process still running" kill -0 "$pid"
  unset WARDEN_ADMIN_URL WARDEN_ADMIN_TOKEN
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  ENR_PID=
}
enroll_checks

# --- An outside OAuth 2.0 issuer: oidc-provider (panva/node-oidc-provider, from npm)
# scripts/interop_oidc.mjs runs it on loopback with one client-credentials client that gets
# RFC 9068 JWT access tokens (resource indicator urn:warden:mqtt, aud "warden"). A third broker
# takes them through [auth.jwt], with issuer and jwks_url read from the discovery document; a
# password user (no ACL: may subscribe anywhere) watches what token clients publish. Instances
# B and C claim the same issuer string with keys of their own (B even reuses A's kid): their
# tokens must be refused. Instance D is down when a fourth broker starts, so that broker's start
# fetch of the JWKS fails; D's token (kid unknown to it) makes it fetch again, once 30 s have
# passed since the start fetch. oidc-provider is installed into the temp dir; the whole section
# is skipped (not failed) when npm cannot install it.
OIDC=$TMP/oidc
OIDC_CLIENT=dev-9
OIDC_SECRET="cs-$RANDOM$RANDOM-$$"
OIDC_SCOPE="mqtt:pub:devices/dev-9/# mqtt:sub:devices/dev-9/#"
OIDC_PIDS=()   # oidc-provider instances and the brokers of this section
oidc_stop_all() {
  local p
  for p in "${OIDC_PIDS[@]}"; do
    kill "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
}
trap 'oidc_stop_all; cleanup' EXIT
# check, returning whether it passed
ocheck() {  # ocheck NAME COMMAND...
  local before=$failed
  check "$@"
  [ "$failed" -eq "$before" ]
}

# Starts an oidc-provider instance claiming ISSUER on PORT (with kid KID for its RSA key when
# given); waits for its "ready". Log: $OIDC/NAME.log.
start_oidc() {  # start_oidc NAME PORT ISSUER [KID]
  local pid deadline=$((SECONDS + 30))
  OIDC_PROVIDER_DIR="$OIDC/npm" node "$HERE/interop_oidc.mjs" "$2" "$3" "$OIDC_CLIENT" \
    "$OIDC_SECRET" ${4:+"$4"} >"$OIDC/$1.log" 2>&1 &
  pid=$!
  OIDC_PIDS+=("$pid")
  until grep -qx 'ready' "$OIDC/$1.log"; do
    if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "oidc-provider $1 did not get ready; its output:"; cat "$OIDC/$1.log"
      return 1
    fi
    sleep 0.1
  done
}
# Prints "ISSUER JWKS_URI TOKEN_ENDPOINT" from the discovery document of the instance on PORT.
oidc_discover() {  # oidc_discover PORT
  curl -sS --fail --max-time 10 "http://127.0.0.1:$1/.well-known/openid-configuration" |
    python3 -c '
import json, sys
d = json.load(sys.stdin)
assert "client_credentials" in d["grant_types_supported"], d["grant_types_supported"]
print(d["issuer"], d["jwks_uri"], d["token_endpoint"])'
}
# Prints an access token from the client-credentials grant at TOKEN_ENDPOINT for RESOURCE.
oidc_token() {  # oidc_token TOKEN_ENDPOINT RESOURCE
  curl -sS --max-time 10 -u "$OIDC_CLIENT:$OIDC_SECRET" -d grant_type=client_credentials \
    --data-urlencode "resource=$2" --data-urlencode "scope=$OIDC_SCOPE" "$1" |
    python3 -c '
import json, sys
body = sys.stdin.read()
try:
    print(json.loads(body)["access_token"])
except Exception:
    sys.exit("no access_token in the token response: " + body)'
}
# Prints a JWT's header and claims, one JSON object a line (for checks and as evidence).
jwt_show() {  # jwt_show TOKEN
  python3 -c '
import base64, json, sys
for part in sys.argv[1].split(".")[:2]:
    print(json.dumps(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))), sort_keys=True))' "$1"
}
# The token oidc-provider issued is what [auth.jwt] expects: RS256 (or ES256), typ at+jwt, a
# kid, iss = the discovered issuer, aud "warden", sub = the client id, the requested scopes.
oidc_claims_ok() {  # oidc_claims_ok TOKEN ALG
  jwt_show "$1" | python3 -c '
import json, sys
alg, iss, sub, scope = sys.argv[1:]
h, c = (json.loads(l) for l in sys.stdin)
print("header:", h); print("claims:", c)
assert h["alg"] == alg and h["typ"] == "at+jwt" and h.get("kid"), "header"
assert c["iss"] == iss and c["aud"] == "warden" and c["sub"] == sub, "iss/aud/sub"
assert c["scope"] == scope and c["iat"] <= c["exp"], "scope/exp"' "$2" "$OIDC_ISS" "$OIDC_CLIENT" "$OIDC_SCOPE"
}

# Subscriber and publisher both log in with TOKEN (user name = the token's sub) and use
# devices/dev-9/x, inside the token's scopes: three QoS 1 messages must arrive.
oidc_roundtrip() {  # oidc_roundtrip VERSION TOKEN
  local v=$1 topic=devices/dev-9/x out sub i want="" got
  # a fresh, empty output file: an old SUBACK line in it would start the publishing too early
  out=$(mktemp "$OIDC/sub-rt-$1.XXXXXX") || return 1
  timeout 30 stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$OIDC_PORT" -u "$OIDC_CLIENT" -P "$2" \
    -V "$v" -d -q 1 -t "$topic" -C 3 -W 25 >"$out" 2>&1 &
  sub=$!
  BG_PIDS=("$sub")
  if ! wait_for_line "$out" '^Subscribed \(mid: 1\): 1$' 10; then
    kill "$sub" 2>/dev/null; wait "$sub" 2>/dev/null; BG_PIDS=()
    echo "no SUBACK granting QoS 1; subscriber output:"; tail -5 "$out"
    return 1
  fi
  for i in 1 2 3; do
    want+="oidc-$v-$i "
    timeout 10 mosquitto_pub -h 127.0.0.1 -p "$OIDC_PORT" -u "$OIDC_CLIENT" -P "$2" -V "$v" -q 1 \
      -t "$topic" -m "oidc-$v-$i" \
      || { echo "mosquitto_pub failed"; kill "$sub" 2>/dev/null; wait "$sub" 2>/dev/null; BG_PIDS=(); return 1; }
  done
  wait "$sub"
  BG_PIDS=()
  got=$(grep -E '^oidc-' "$out" | tr '\n' ' ')
  [ "$got" = "$want" ] || { echo "expected: $want"; echo "received: $got"; return 1; }
}
# MQTT 5 lets a client send a password without a user name (mosquitto_pub and paho cannot):
# a raw-socket client connects with the token alone, subscribes to devices/dev-9/x and gets its
# own QoS 1 message back.
oidc_v5_no_username() {  # oidc_v5_no_username TOKEN
  python3 - "$OIDC_PORT" "$1" <<'PY'
import socket, struct, sys
port, token = int(sys.argv[1]), sys.argv[2].encode()
def varint(n):
    out = b""
    while True:
        n, b = divmod(n, 128)
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out
def s16(b):
    return struct.pack("!H", len(b)) + b
def send(kind, body):
    sock.sendall(bytes([kind]) + varint(len(body)) + body)
def take_varint(buf, i):
    n = shift = 0
    while True:
        b = buf[i]; i += 1
        n |= (b & 0x7F) << shift; shift += 7
        if b < 0x80:
            return n, i
def recv():
    head = f.read(1)
    if not head:
        sys.exit("the broker closed the connection")
    n = shift = 0
    while True:
        b = f.read(1)[0]
        n |= (b & 0x7F) << shift; shift += 7
        if b < 0x80:
            break
    return head[0], f.read(n)
sock = socket.create_connection(("127.0.0.1", port), timeout=10)
f = sock.makefile("rb")
# CONNECT: "MQTT", level 5, flags = password (0x40) + clean start (0x02), keep alive 30, no
# properties, client id, and no user name field at all
send(0x10, s16(b"MQTT") + bytes([5, 0x42]) + struct.pack("!H", 30) + b"\x00"
     + s16(b"oidc-no-username") + s16(token))
kind, body = recv()
if kind != 0x20 or body[1] != 0:
    sys.exit(f"CONNACK expected with reason 0, got packet 0x{kind:02x} {body[:2].hex()}")
send(0x82, struct.pack("!H", 1) + b"\x00" + s16(b"devices/dev-9/x") + b"\x01")
kind, body = recv()
_, i = take_varint(body, 2)
if kind != 0x90 or body[i:] != b"\x01":
    sys.exit(f"SUBACK granting QoS 1 expected, got packet 0x{kind:02x} {body.hex()}")
send(0x32, s16(b"devices/dev-9/x") + struct.pack("!H", 2) + b"\x00" + b"no-username")
got_ack = got_msg = False
while not (got_ack and got_msg):
    kind, body = recv()
    if kind == 0x40:
        if len(body) > 2 and body[2] != 0:
            sys.exit(f"PUBACK reason 0x{body[2]:02x}")
        got_ack = True
    elif kind & 0xF0 == 0x30:
        n = struct.unpack("!H", body[:2])[0]
        topic, i = body[2:2 + n], 2 + n
        if kind & 0x06:
            pid, i = body[i:i + 2], i + 2
            send(0x40, pid)
        plen, i = take_varint(body, i)
        payload = body[i + plen:]
        if (topic, payload) != (b"devices/dev-9/x", b"no-username"):
            sys.exit(f"unexpected message {topic!r} {payload!r}")
        got_msg = True
    else:
        sys.exit(f"unexpected packet 0x{kind:02x}")
send(0xE0, b"\x00")
sock.close()
PY
}
# A QoS 1 publish to devices/dev-8/x (outside the token's scopes) ends the connection (on_deny
# "disconnect"; v5: DISCONNECT 0x87) and reaches nobody: the watching password user's first
# message is the in-scope one published next. The audit log names the token's sub.
oidc_publish_denied() {  # oidc_publish_denied VERSION TOKEN
  local v=$1 out watch res rc
  out=$(mktemp "$OIDC/watch-$1.XXXXXX") || return 1
  timeout 30 stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$OIDC_PORT" -u "$USER_NAME" -P "$USER_PASS" \
    -d -v -q 1 -t 'devices/#' -C 1 -W 25 >"$out" 2>&1 &
  watch=$!
  BG_PIDS=("$watch")
  wait_for_line "$out" '^Subscribed \(mid' 10 || {
    kill "$watch" 2>/dev/null; wait "$watch" 2>/dev/null; BG_PIDS=()
    echo "no SUBACK for the watcher"; tail -5 "$out"; return 1; }
  res=$(timeout 10 mosquitto_pub -d -h 127.0.0.1 -p "$OIDC_PORT" -u "$OIDC_CLIENT" -P "$2" -V "$v" \
    -q 1 -t devices/dev-8/x -m "denied-$v" 2>&1)
  rc=$?
  if [ "$rc" -eq 0 ] || grep -q 'received PUBACK' <<<"$res"; then
    echo "the out-of-scope publish was acknowledged:"; echo "$res"
    kill "$watch" 2>/dev/null; wait "$watch" 2>/dev/null; BG_PIDS=(); return 1
  fi
  if [ "$v" = mqttv5 ] && ! grep -q 'Received DISCONNECT (135)' <<<"$res"; then
    echo "expected DISCONNECT (135), got:"; echo "$res"
    kill "$watch" 2>/dev/null; wait "$watch" 2>/dev/null; BG_PIDS=(); return 1
  fi
  timeout 10 mosquitto_pub -h 127.0.0.1 -p "$OIDC_PORT" -u "$OIDC_CLIENT" -P "$2" -V "$v" -q 1 \
    -t devices/dev-9/x -m "allowed-$v" || {
    echo "the in-scope publish failed"; kill "$watch" 2>/dev/null; wait "$watch" 2>/dev/null; BG_PIDS=(); return 1; }
  wait "$watch"
  BG_PIDS=()
  grep -qx "devices/dev-9/x allowed-$v" "$out" || { echo "watcher got:"; cat "$out"; return 1; }
  grep -q "authorization deny principal=token:$OIDC_CLIENT .*action=\"publish\" topic=\"devices/dev-8/x\"" \
    "$OIDC_LOG" || { echo "no audit line for the denied publish"; tail -5 "$OIDC_LOG"; return 1; }
}
# SUBSCRIBE outside the scopes: SUBACK 0x87 (v5) / 0x80 (v3.1.1).
oidc_subscribe_denied() {  # oidc_subscribe_denied VERSION WANT TOKEN
  local out
  out=$(timeout 10 mosquitto_sub -d -h 127.0.0.1 -p "$OIDC_PORT" -u "$OIDC_CLIENT" -P "$3" -V "$1" \
    -q 1 -t devices/dev-8/x -C 1 -W 5 2>&1)
  grep -q "^Subscribed (mid: 1): $2\$" <<<"$out" || { echo "expected SUBACK $2, got:"; echo "$out"; return 1; }
}
# Refused at CONNECT with CONNACK WANT, and the broker logs "access token refused" with a
# reason matching REASON (extended regex) on LOG.
oidc_refused() {  # oidc_refused VERSION WANT REASON TOKEN [PORT LOG]
  local port=${5:-$OIDC_PORT} log=${6:-$OIDC_LOG} seen out deadline
  seen=$(wc -l <"$log")
  out=$(timeout 10 mosquitto_pub -d -h 127.0.0.1 -p "$port" -u "$OIDC_CLIENT" -P "$4" -V "$1" -q 1 \
    -t devices/dev-9/x -m refused 2>&1) && { echo "accepted:"; echo "$out"; return 1; }
  grep -q "received CONNACK ($2)" <<<"$out" || { echo "expected CONNACK ($2), got:"; echo "$out"; return 1; }
  deadline=$((SECONDS + 5))
  until tail -n +$((seen + 1)) "$log" | grep -qE "access token refused.*reason=.*($3)"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "no 'access token refused ... ($3)' in the broker log; new lines:"
      tail -n +$((seen + 1)) "$log"
      return 1
    fi
    sleep 0.1
  done
}
# A token for urn:warden:mqtt:short lives 4 s: the broker closes the connection at its exp
# (v5 DISCONNECT 0xA0, maximum connect time).
oidc_expiry() {  # oidc_expiry TOKEN
  local out
  out=$(timeout 20 mosquitto_sub -d -h 127.0.0.1 -p "$OIDC_PORT" -u "$OIDC_CLIENT" -P "$1" -V mqttv5 \
    -q 1 -t devices/dev-9/x 2>&1)
  grep -q 'Received DISCONNECT (160)' <<<"$out" || { echo "expected DISCONNECT (160), got:"; echo "$out"; return 1; }
}
# Flips one character in the middle of the signature (every bit of it is significant there).
jwt_tamper() {  # jwt_tamper TOKEN
  python3 -c '
import sys
h, p, s = sys.argv[1].split(".")
i = len(s) // 2
print(".".join((h, p, s[:i] + ("B" if s[i] == "A" else "A") + s[i + 1:])))' "$1"
}
# Prints the kid of a JWT's header.
jwt_kid() { jwt_show "$1" | python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["kid"])'; }
# Starts a broker with [auth.jwt] on PORT; data in DIR, log DIR/warden.log. Sets STARTED_PID.
start_jwt_broker() {  # start_jwt_broker DIR PORT ISSUER JWKS_URL
  mkdir -p "$1" || return 1
  cat >"$1/warden.toml" <<CONF
data_dir = "$1/data"

[[listener]]
bind = "127.0.0.1:$2"
protocol = "mqtt"

[auth]
allow_anonymous = false
password_file = "$PASSWD"

[auth.jwt]
issuer = "$3"
audience = "warden"
jwks_url = "$4"

# Every check comes from 127.0.0.1 and many are deliberate refusals: lift the per-address ban
# (tested on its own in the Rust suite and by the acceptance checks).
[limits]
auth_fail_ban = { failures = 100000 }
CONF
  "$BIN" serve --config "$1/warden.toml" >"$1/warden.log" 2>&1 &
  STARTED_PID=$!
  OIDC_PIDS+=("$STARTED_PID")
  wait_port "$2" 30 "$STARTED_PID" || { echo "broker did not listen; log:"; tail -20 "$1/warden.log"; return 1; }
}

oidc_checks() {
  local reason failed_before=$failed tok tok_es tok_other tok_short tok_bad tok_b tok_c tok_d kid_a
  local port_a port_b port_c port_d iss jwks tokep wd_port wd_pid= wd_start wd_log discovery
  local inst tok_x tokep_x broker_pid=
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "skip oidc-provider checks: node/npm not found"; return
  fi
  if ! command -v curl >/dev/null; then
    echo "skip oidc-provider checks: curl not found"; return
  fi
  mkdir -p "$OIDC/npm"
  if ! (cd "$OIDC/npm" && timeout 180 npm install --prefix "$OIDC/npm" --no-package-lock --no-audit \
        --no-fund --loglevel=error --fetch-retries=1 oidc-provider@9 >"$OIDC/npm.log" 2>&1); then
    reason=$(grep -m1 -E 'ERR|error' "$OIDC/npm.log" || head -1 "$OIDC/npm.log")
    echo "skip oidc-provider checks: 'npm install oidc-provider@9' failed (offline?): ${reason:-no output}"
    return
  fi
  port_a=$(free_port); port_b=$(free_port); port_c=$(free_port); port_d=$(free_port)
  OIDC_PORT=$(free_port); wd_port=$(free_port)
  echo "# oidc-provider $(node -p "require('$OIDC/npm/node_modules/oidc-provider/package.json').version"):" \
    "A on 127.0.0.1:$port_a, B :$port_b, C :$port_c, D :$port_d; brokers on :$OIDC_PORT, :$wd_port"

  # The broker for instance D starts first, while D is down: its JWKS fetch at start fails.
  wd_log=$OIDC/broker-d/warden.log
  ocheck "oidc: a broker whose jwks_url is unreachable at start still starts" \
    start_jwt_broker "$OIDC/broker-d" "$wd_port" "http://127.0.0.1:$port_d" "http://127.0.0.1:$port_d/jwks" \
    && wd_pid=$STARTED_PID
  wd_start=$SECONDS

  if ! ocheck "oidc: oidc-provider A starts (issuer http://127.0.0.1:$port_a)" \
       start_oidc A "$port_a" "http://127.0.0.1:$port_a"; then
    return
  fi
  if ! discovery=$(oidc_discover "$port_a" 2>&1); then
    fail "oidc: A's discovery document has issuer, jwks_uri, token_endpoint, client_credentials"
    echo "    $discovery"; return
  fi
  ok "oidc: A's discovery document has issuer, jwks_uri, token_endpoint, client_credentials"
  read -r OIDC_ISS jwks tokep <<<"$discovery"
  echo "# A: issuer $OIDC_ISS, jwks_uri $jwks, token_endpoint $tokep"

  if ! ocheck "oidc: broker with [auth.jwt] issuer and jwks_url from A's discovery listens" \
       start_jwt_broker "$OIDC/broker" "$OIDC_PORT" "$OIDC_ISS" "$jwks"; then
    return
  fi
  broker_pid=$STARTED_PID
  OIDC_LOG=$OIDC/broker/warden.log
  check "oidc: the broker logged 'JWKS fetched ... keys=2'" grep -q 'JWKS fetched.* keys=2' "$OIDC_LOG"

  tok=$(oidc_token "$tokep" urn:warden:mqtt 2>&1) || { fail "oidc: client-credentials token from A"; echo "    $tok"; return; }
  ok "oidc: client-credentials token from A (curl -u client:secret, resource urn:warden:mqtt)"
  check "oidc: A's token: RS256, typ at+jwt, kid, iss = discovered issuer, aud warden, sub $OIDC_CLIENT, scopes" \
    oidc_claims_ok "$tok" RS256
  kid_a=$(jwt_kid "$tok")

  check "oidc mosquitto -V mqttv5: token as password, QoS 1 round trip on devices/dev-9/x" \
    oidc_roundtrip mqttv5 "$tok"
  check "oidc mosquitto -V mqttv311: user name + token, QoS 1 round trip on devices/dev-9/x" \
    oidc_roundtrip mqttv311 "$tok"
  check "oidc raw MQTT 5: token as password without a user name, QoS 1 round trip" \
    oidc_v5_no_username "$tok"
  if tok_es=$(oidc_token "$tokep" urn:warden:mqtt:es256 2>&1) && oidc_claims_ok "$tok_es" ES256 >/dev/null; then
    check "oidc mosquitto -V mqttv5: ES256 token from A, QoS 1 round trip" oidc_roundtrip mqttv5 "$tok_es"
  else
    fail "oidc: ES256 token from A (resource urn:warden:mqtt:es256)"; echo "    $tok_es"
  fi

  check "oidc mosquitto -V mqttv5: publish outside the scopes: DISCONNECT 0x87, not delivered" \
    oidc_publish_denied mqttv5 "$tok"
  check "oidc mosquitto -V mqttv311: publish outside the scopes: disconnected, not delivered" \
    oidc_publish_denied mqttv311 "$tok"
  check "oidc mosquitto -V mqttv5: subscribe outside the scopes: SUBACK 0x87" \
    oidc_subscribe_denied mqttv5 135 "$tok"
  check "oidc mosquitto -V mqttv311: subscribe outside the scopes: SUBACK 0x80" \
    oidc_subscribe_denied mqttv311 128 "$tok"

  tok_bad=$(jwt_tamper "$tok")
  check "oidc mosquitto -V mqttv5: A's token with one signature character flipped refused (CONNACK 0x86)" \
    oidc_refused mqttv5 134 'bad signature' "$tok_bad"
  check "oidc mosquitto -V mqttv311: A's token with one signature character flipped refused (CONNACK 4)" \
    oidc_refused mqttv311 4 'bad signature' "$tok_bad"
  if tok_other=$(oidc_token "$tokep" urn:other:api 2>&1); then
    check "oidc mosquitto -V mqttv5: A's token for another resource (aud other-api) refused (CONNACK 0x86)" \
      oidc_refused mqttv5 134 'audience' "$tok_other"
  else
    fail "oidc: token from A for urn:other:api"; echo "    $tok_other"
  fi

  # B and C: same issuer string as A, keys of their own; B's RSA key has A's kid.
  for inst in B C; do
    if [ "$inst" = B ]; then
      ocheck "oidc: oidc-provider B starts (issuer $OIDC_ISS, RSA kid = A's, new keys)" \
        start_oidc B "$port_b" "$OIDC_ISS" "$kid_a" || continue
      discovery=$(oidc_discover "$port_b" 2>&1)
    else
      ocheck "oidc: oidc-provider C starts (issuer $OIDC_ISS, new keys)" \
        start_oidc C "$port_c" "$OIDC_ISS" || continue
      discovery=$(oidc_discover "$port_c" 2>&1)
    fi
    read -r iss _ tokep_x <<<"$discovery"
    [ "$iss" = "$OIDC_ISS" ] || { fail "oidc: $inst's discovery claims issuer $OIDC_ISS"; echo "    $discovery"; continue; }
    if ! tok_x=$(oidc_token "$tokep_x" urn:warden:mqtt 2>&1) || ! oidc_claims_ok "$tok_x" RS256 >/dev/null; then
      fail "oidc: token from $inst with A's claims"; echo "    $tok_x"; continue
    fi
    if [ "$inst" = B ]; then
      if [ "$(jwt_kid "$tok_x")" = "$kid_a" ] && [ "$tok_x" != "$tok" ]; then
        check "oidc mosquitto -V mqttv5: B's token (same iss and kid as A, other key) refused (CONNACK 0x86)" \
          oidc_refused mqttv5 134 'bad signature' "$tok_x"
      else
        fail "oidc: B's token carries A's kid $kid_a"; jwt_show "$tok_x" | sed 's/^/    /'
      fi
    else
      check "oidc mosquitto -V mqttv5: C's token (same iss as A, other key and kid) refused (CONNACK 0x86)" \
        oidc_refused mqttv5 134 'unknown key id' "$tok_x"
      check "oidc mosquitto -V mqttv311: C's token refused (CONNACK 4)" \
        oidc_refused mqttv311 4 'unknown key id' "$tok_x"
    fi
  done

  if tok_short=$(oidc_token "$tokep" urn:warden:mqtt:short 2>&1); then
    check "oidc mosquitto -V mqttv5: a 4 s token's connection is closed at exp (DISCONNECT 0xA0)" \
      oidc_expiry "$tok_short"
  else
    fail "oidc: short-lived token from A"; echo "    $tok_short"
  fi

  # D, for the broker that could not fetch its JWKS at start.
  if [ -n "$wd_pid" ] && ocheck "oidc: oidc-provider D starts (issuer http://127.0.0.1:$port_d)" \
       start_oidc D "$port_d" "http://127.0.0.1:$port_d"; then
    discovery=$(oidc_discover "$port_d" 2>&1)
    read -r iss jwks _ <<<"$discovery"
    check "oidc: D's discovery matches that broker's [auth.jwt] issuer and jwks_url" \
      test "$iss $jwks" = "http://127.0.0.1:$port_d http://127.0.0.1:$port_d/jwks"
    check "oidc: that broker logged 'JWKS fetch failed' at start" grep -q 'JWKS fetch failed' "$wd_log"
    if tok_d=$(oidc_token "http://127.0.0.1:$port_d/token" urn:warden:mqtt 2>&1); then
      # at most one fetch every 30 s, and the failed start fetch counts: wait that out
      while [ $((SECONDS - wd_start)) -lt 32 ]; do sleep 1; done
      check "oidc mosquitto -V mqttv5: D's token accepted once the JWKS is fetched again (unknown kid)" \
        timeout 10 mosquitto_pub -h 127.0.0.1 -p "$wd_port" -u "$OIDC_CLIENT" -P "$tok_d" -V mqttv5 -q 1 \
        -t devices/dev-9/x -m after-refetch
      check "oidc: that broker logged 'JWKS refreshed (unknown kid)'" grep -q 'JWKS refreshed (unknown kid)' "$wd_log"
    else
      fail "oidc: token from D"; echo "    $tok_d"
    fi
  fi

  check "oidc: broker process still running" kill -0 "$broker_pid"
  local t leaked=
  for t in "$tok" "$tok_bad" "${tok_es:-}" "${tok_other:-}" "${tok_short:-}" "${tok_d:-}"; do
    [ -n "$t" ] || continue
    grep -qF "${t##*.}" "$OIDC_LOG" "$wd_log" && leaked=1
  done
  if [ -n "$leaked" ]; then fail "oidc: no token appears in the broker logs"; else ok "oidc: no token appears in the broker logs"; fi

  if [ "$failed" -ne "$failed_before" ]; then
    echo "--- last lines of the oidc broker log:"
    tail -20 "$OIDC_LOG"
    echo "--- last lines of the JWKS-unreachable-at-start broker log:"
    tail -10 "$wd_log"
  fi
}
oidc_checks

if [ "$failed" -ne 0 ]; then
  echo "--- last lines of the broker log:"
  tail -20 "$TMP/warden.log"
  if [ -s "${TLS_LOG:-}" ]; then
    echo "--- last lines of the TLS broker log:"
    tail -20 "$TLS_LOG"
  fi
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
