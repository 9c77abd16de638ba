#!/usr/bin/env bash
# Interoperability checks: drive a running Warden with real third-party MQTT clients.
#
#   scripts/interop.sh target/release/warden
#
# Needs mosquitto_pub/mosquitto_sub (Debian: mosquitto-clients), python3 with paho-mqtt 2.x, and
# optionally node + npm (MQTT.js is installed into the temporary directory, never into the repo).
# Starts the broker on free loopback ports (MQTT over TCP and over WebSocket) with password
# authentication, prints `ok   NAME` / `FAIL NAME` per check and `N passed, M failed` at the end.
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
BG_PIDS=()  # running background clients only: a reaped PID may be reused by anything
cleanup() {
  local p
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  if [ -n "$BROKER_PID" ]; then
    kill "$BROKER_PID" 2>/dev/null
    wait "$BROKER_PID" 2>/dev/null
  fi
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
wait_port() {  # wait_port PORT SECONDS — poll until something accepts on PORT, bounded
  local deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    port_open "$1" && return 0
    kill -0 "$BROKER_PID" 2>/dev/null || return 1   # the broker exited: no point waiting
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

if [ "$failed" -ne 0 ]; then
  echo "--- last lines of the broker log:"
  tail -20 "$TMP/warden.log"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
