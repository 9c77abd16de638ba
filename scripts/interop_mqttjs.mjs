// Interop checks against a running Warden with MQTT.js 5 (Node).
//
//   MQTTJS_DIR=DIR node scripts/interop_mqttjs.mjs PORT WSPORT USER PASS
//
// DIR is where `npm install mqtt@5` was run (scripts/interop.sh uses its temporary directory, so
// nothing is installed into the repository). Over TCP and WebSocket (/mqtt), with MQTT 5 and
// MQTT 3.1.1: a QoS 1 and QoS 2 round trip (MQTT 5 with user properties) and a refused wrong
// password. Prints `ok   NAME` / `FAIL NAME`, then `# mqtt.js: N passed, M failed`; exits 1 on
// any failure.
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import path from 'node:path';

const [port, wsport, user, pass] = process.argv.slice(2);
if (!pass || !process.env.MQTTJS_DIR) {
  console.error('usage: MQTTJS_DIR=DIR node interop_mqttjs.mjs PORT WSPORT USER PASS');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(process.env.MQTTJS_DIR), 'noop.js'));
const mqtt = require('mqtt');
const WAIT = 10000; // ms for any single expected event

let passed = 0;
let failed = 0;
const open = [];

function withTimeout(promise, what) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${WAIT / 1000}s`)), WAIT);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

function need(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function connect(url, protocolVersion, username, password) {
  const client = await withTimeout(
    mqtt.connectAsync(url, {
      protocolVersion,
      username,
      password,
      clientId: 'js-' + randomBytes(6).toString('hex'),
      clean: true,
      reconnectPeriod: 0, // never reconnect behind a check's back
      connectTimeout: WAIT,
    }),
    `connect to ${url}`,
  );
  open.push(client);
  // Incoming messages are queued; next() takes the oldest, waiting for one if needed.
  const queue = [];
  const waiters = [];
  client.on('message', (topic, payload, packet) => {
    const m = { topic, payload: payload.toString(), qos: packet.qos, properties: packet.properties };
    const w = waiters.shift();
    if (w) w(m);
    else queue.push(m);
  });
  client.next = (what) =>
    withTimeout(
      new Promise((resolve) => (queue.length ? resolve(queue.shift()) : waiters.push(resolve))),
      what,
    );
  return client;
}

async function roundTrip(url, v) {
  const topic = `interop/mqttjs/v${v}/${randomBytes(4).toString('hex')}`;
  const sub = await connect(url, v, user, pass);
  const granted = await withTimeout(sub.subscribeAsync(topic, { qos: 2 }), 'SUBACK');
  need(granted.length === 1 && granted[0].qos === 2, `SUBACK granted ${JSON.stringify(granted)}`);
  const pub = await connect(url, v, user, pass);
  const userProperties = { origin: 'mqtt.js', k: 'v' };
  for (const qos of [1, 2]) {
    const opts = { qos };
    if (v === 5) opts.properties = { userProperties, contentType: 'text/plain' };
    await withTimeout(pub.publishAsync(topic, `payload-q${qos}`, opts), `QoS ${qos} acknowledgement`);
  }
  for (const qos of [1, 2]) {
    const m = await sub.next(`QoS ${qos} message`);
    need(m.topic === topic, `message on ${m.topic}`);
    need(m.payload === `payload-q${qos}`, `received ${JSON.stringify(m.payload)}, expected payload-q${qos}`);
    need(m.qos === qos, `payload-q${qos} delivered at QoS ${m.qos}`);
    if (v === 5) {
      const got = m.properties && m.properties.userProperties;
      need(JSON.stringify(got) === JSON.stringify(userProperties),
        `user properties ${JSON.stringify(got)}, sent ${JSON.stringify(userProperties)}`);
      need(m.properties.contentType === 'text/plain', `content type ${m.properties.contentType}`);
    }
  }
}

async function wrongPassword(url, v) {
  const want = v === 5 ? 0x86 : 4;
  let err = null;
  try {
    await connect(url, v, user, 'not-' + pass);
  } catch (e) {
    err = e;
  }
  need(err !== null, 'connection with a wrong password was accepted');
  need(err.code === want, `refused with ${err.code} (${err.message}), expected ${want}`);
}

async function run(name, fn, ...args) {
  try {
    await fn(...args);
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}\n    ${e && e.message ? e.message : e}`);
  } finally {
    await Promise.all(open.splice(0).map((c) => c.endAsync(true).catch(() => {})));
  }
}

const transports = [
  ['TCP', `mqtt://127.0.0.1:${port}`],
  ['WS', `ws://127.0.0.1:${wsport}/mqtt`],
];
for (const [tname, url] of transports) {
  for (const [v, vname] of [[5, '5'], [4, '3.1.1']]) {
    const label = `mqtt.js ${tname} MQTT ${vname}:`;
    await run(`${label} QoS 1 and 2 round trip${v === 5 ? ' with user properties' : ''}`, roundTrip, url, v);
    await run(`${label} wrong password refused (CONNACK ${v === 5 ? '0x86' : '4'})`, wrongPassword, url, v);
  }
}
console.log(`# mqtt.js: ${passed} passed, ${failed} failed (mqtt ${require('mqtt/package.json').version})`);
process.exit(failed ? 1 : 0);
