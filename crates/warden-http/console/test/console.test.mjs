// The security console in a real headless Chromium (Debian's, driven by playwright-core),
// against the real broker (a child process) and real MQTT clients (MQTT.js): every page and
// every action, each action's effect checked from the MQTT side.
//
//   WARDEN_BIN=target/debug/warden CHROMIUM=/usr/bin/chromium npm test   (in crates/warden-http/console)
//   SCREENSHOTS=DIR keeps a PNG of every page (docs/console/ holds the committed ones).
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import mqtt from 'mqtt';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../../../..');
const WARDEN = path.resolve(root, process.env.WARDEN_BIN || 'target/debug/warden');
const SHOTS = process.env.SCREENSHOTS ? path.resolve(process.env.SCREENSHOTS) : '';
const WAIT = 10_000;
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'warden-console-test-'));
const TOKEN = 'console-test-' + Math.random().toString(36).slice(2) + '+/=';   // characters that must survive a header
let broker, browser, page, P, T, H, BASE;
const requests = [], consoleErrors = [], pageErrors = [], clients = [];

// ---- helpers -------------------------------------------------------------------------------------
const freePort = () => new Promise(res => { const s = net.createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)); }); });
const warden = (args, input) => execFileSync(WARDEN, args, { input, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
async function until(fn, ms = WAIT, what = 'condition') {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise(r => setTimeout(r, 100));
  }
}
/** An MQTT 5 client; resolves with { c, connack } or { error } (a refused CONNACK). */
function connect(opts) {
  return new Promise(resolve => {
    const c = mqtt.connect({ host: '127.0.0.1', port: P, protocolVersion: 5, reconnectPeriod: 0, connectTimeout: WAIT, clean: true, ...opts });
    clients.push(c);
    c.events = [];
    c.on('disconnect', p => c.events.push({ disconnect: p.reasonCode }));
    c.on('close', () => c.events.push({ close: true }));
    c.once('connect', connack => resolve({ c, connack }));
    c.once('error', error => resolve({ c, error }));
  });
}
const closed = c => until(() => c.events.some(e => e.close), WAIT, 'the connection to close');
async function api(method, p, body, headers = {}) {
  const r = await fetch(BASE + p, { method, headers: { Authorization: 'Bearer ' + TOKEN, 'Content-Type': 'application/json', ...headers }, body: body && JSON.stringify(body) });
  const text = await r.text();
  let json = null; try { json = JSON.parse(text); } catch { }
  return { status: r.status, json, headers: r.headers };
}
async function shot(name) { if (SHOTS) await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true }); }
async function go(name) {
  await page.getByRole('link', { name, exact: true }).click();
  await page.getByRole('heading', { level: 2, name: name === 'OAuth clients' ? 'OAuth clients' : name }).waitFor();
}
const row = text => page.getByRole('row').filter({ hasText: text });

// ---- the broker ----------------------------------------------------------------------------------
before(async () => {
  if (SHOTS) fs.mkdirSync(SHOTS, { recursive: true });
  [P, T, H] = [await freePort(), await freePort(), await freePort()];
  BASE = `http://127.0.0.1:${H}`;
  for (const u of ['alice', 'bob']) warden(['passwd', path.join(work, 'passwd'), u, '--password-stdin'], `${u}-pw\n`);
  const hash = warden(['passwd', '--hash-only'], TOKEN + '\n').trim().split('\n').pop();
  const pki = path.join(work, 'pki');
  for (const a of [['ca'], ['server'], ['client', '--cn', 'dev-1'], ['client', '--cn', 'dev-2']]) warden(['cert', ...a, '--dir', pki]);
  warden(['cert', 'crl', '--dir', pki]);
  fs.writeFileSync(path.join(work, 'acl'), 'user alice\ntopic readwrite #\n\nuser bob\ntopic readwrite #\n');
  fs.writeFileSync(path.join(work, 'warden.toml'), `data_dir = "${work}/data"
[[listener]]
bind = "127.0.0.1:${P}"
protocol = "mqtt"
[[listener]]
bind = "127.0.0.1:${T}"
protocol = "mqtts"
cert = "${pki}/server.pem"
key = "${pki}/server.key"
client_ca = "${pki}/ca.pem"
client_cert = "required"
identity_from_cert = "cn"
crl = "${pki}/ca.crl"
[http]
bind = "127.0.0.1:${H}"
admin_token_hash = '${hash}'
[oauth]
enabled = true
[auth]
allow_anonymous = false
password_file = "${work}/passwd"
[authz]
acl_file = "${work}/acl"
on_deny = "drop"
[watch]
enabled = true
window = "1s"
learning_windows = 100000
`);
  broker = spawn(WARDEN, ['serve', '--config', path.join(work, 'warden.toml')], { stdio: ['ignore', 'ignore', 'pipe'], cwd: work });
  let log = '';
  broker.stderr.on('data', d => { log += d; });
  broker.on('exit', code => { if (code !== null && code !== 0) console.error(`warden exited ${code}:\n${log.slice(-2000)}`); });
  await until(async () => { try { return (await fetch(BASE + '/readyz')).ok; } catch { return false; } }, 30_000, 'the broker to be ready');
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: ['--no-proxy-server'] });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, serviceWorkers: 'block' });
  await context.route('**/*', r => (new URL(r.request().url()).hostname === '127.0.0.1' || r.request().url().startsWith('data:')) ? r.continue() : r.abort());
  context.on('request', r => requests.push(r));
  page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', e => pageErrors.push(String(e)));
  page.on('dialog', d => d.accept());
});

after(async () => {
  for (const c of clients) c.end(true);
  if (browser) await browser.close();
  if (broker) broker.kill('SIGKILL');
  fs.rmSync(work, { recursive: true, force: true });
});

// ---- the cases -----------------------------------------------------------------------------------
test('the page loads from the binary with its policy, and without errors', async () => {
  const r = await page.goto(BASE + '/console/');
  assert.equal(r.status(), 200);
  assert.match(r.headers()['content-security-policy'], /script-src 'self'/);
  await page.getByLabel('Admin token').waitFor();
  await shot('01-sign-in');
  assert.deepEqual([...consoleErrors, ...pageErrors], []);
});

test('every field of the sign-in form is labelled and it works from the keyboard alone', async () => {
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select')].filter(e => !e.labels?.length && !e.getAttribute('aria-label')).length);
  assert.equal(unlabelled, 0);
  await page.getByLabel('Admin token').focus();
  await page.keyboard.type('wrong-token');
  await page.keyboard.press('Enter');
  await page.getByRole('alert').filter({ hasText: /not accepted/ }).waitFor();
  await shot('02-sign-in-refused');
  assert.equal(await page.getByRole('link', { name: 'Clients' }).count(), 0, 'pages shown after a wrong token');
});

test('sign-in with the admin token shows every page', async () => {
  await page.getByLabel('Admin token').fill(TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  for (const name of ['Overview', 'Clients', 'Users', 'Groups', 'Roles', 'OAuth clients', 'Certificates', 'Devices', 'Bans', 'Audit']) {
    await page.getByRole('link', { name, exact: true }).waitFor();
  }
  assert.equal(await page.getByLabel('Admin token').count(), 0);
});

test('Clients: a live client is listed with principal, method and peer; Kick disconnects it (0x98)', async () => {
  const { c, error } = await connect({ clientId: 'mq-alice', username: 'alice', password: 'alice-pw' });
  assert.ifError(error);
  await go('Clients');
  const r = row('mq-alice');
  await r.waitFor();
  const text = await r.innerText();
  assert.match(text, /user:alice/);
  assert.match(text, /password-file/);
  assert.match(text, /127\.0\.0\.1:\d+/);
  await shot('03-clients');
  await r.getByRole('button', { name: 'Kick mq-alice' }).click();
  await until(() => c.events.some(e => e.disconnect === 0x98), WAIT, 'DISCONNECT 0x98');
  await page.getByRole('status').filter({ hasText: 'Kicked mq-alice' }).waitFor();
});

test('Clients: Ban ends the connection and refuses the client id (0x8A); lifting it on Bans lets it back', async () => {
  const first = await connect({ clientId: 'mq-bob', username: 'bob', password: 'bob-pw' });
  assert.ifError(first.error);
  await page.getByRole('button', { name: 'Refresh' }).click();
  await row('mq-bob').getByRole('button', { name: 'Ban mq-bob' }).click();
  await closed(first.c);
  const again = await connect({ clientId: 'mq-bob', username: 'bob', password: 'bob-pw' });
  assert.equal(again.error?.code, 0x8a, `reconnect after the ban: ${again.error}`);
  await go('Bans');
  await row('mq-bob').waitFor();
  await shot('08-bans');
  await row('mq-bob').getByRole('button', { name: 'Lift the ban of mq-bob' }).click();
  await until(async () => !(await api('GET', '/admin/bans')).json.some(b => b.value === 'mq-bob'), WAIT, 'the ban to be lifted');
  const back = await connect({ clientId: 'mq-bob', username: 'bob', password: 'bob-pw' });
  assert.ifError(back.error);
});

test('Bans: a ban made in the form refuses that user name', async () => {
  await page.getByLabel('Kind').selectOption('username');
  await page.getByLabel('Value').fill('bob');
  await page.getByLabel('Reason').fill('test');
  await page.getByRole('button', { name: 'Ban', exact: true }).click();
  await row('bob').filter({ hasText: 'User name' }).waitFor();
  const r = await connect({ clientId: 'mq-bob-2', username: 'bob', password: 'bob-pw' });
  assert.ok(r.error, 'bob connected despite the ban');
  await api('DELETE', '/admin/bans?kind=username&value=bob');
});

let devClient;
test('Roles, Users and Explain: a role and rule made in the UI decide what the new user may do', async () => {
  await go('Roles');
  await page.getByLabel('Role name').fill('sensor');
  await page.getByRole('button', { name: 'Create role' }).click();
  await page.getByRole('heading', { name: 'Rules of role sensor' }).waitFor();
  await page.getByLabel('Rule id').fill('pub-sensors');
  await page.getByLabel('Action').first().selectOption('publish');
  await page.getByLabel('Topic').first().fill('sensors/#');
  await page.getByLabel('Effect').selectOption('allow');
  await page.getByRole('button', { name: 'Add rule' }).click();
  await row('pub-sensors').waitFor();
  await shot('06-roles');
  await go('Users');
  await page.getByLabel('User name').fill('dev-7');
  await page.getByLabel('Password').fill('dev-7-pw');
  await page.getByRole('checkbox', { name: 'sensor' }).check();
  await page.getByRole('button', { name: 'Create user' }).click();
  await row('dev-7').waitFor();
  await shot('04-users');
  // Explain, then the same two questions asked of the broker over MQTT.
  await go('Roles');
  const box = page.getByRole('region', { name: 'Explain a decision' });
  await box.getByLabel('Principal').fill('dev-7');
  await box.getByLabel('Action').selectOption('publish');
  await box.getByLabel('Topic').fill('sensors/a');
  await box.getByRole('button', { name: 'Explain' }).click();
  await box.getByText(/Decided by rule pub-sensors of role sensor/).waitFor();
  assert.match(await box.innerText(), /\ballow\b/);
  await shot('07-explain');
  await box.getByLabel('Topic').fill('other/a');
  await box.getByRole('button', { name: 'Explain' }).click();
  await box.getByText(/default-deny/).waitFor();
  assert.match(await box.innerText(), /\bdeny\b/);

  const sub = await connect({ clientId: 'mq-alice-sub', username: 'alice', password: 'alice-pw' });
  const got = [];
  sub.c.on('message', t => got.push(t));
  await sub.c.subscribeAsync('#', { qos: 1 });
  const dev = await connect({ clientId: 'dev-7', username: 'dev-7', password: 'dev-7-pw' });
  assert.ifError(dev.error);
  devClient = dev.c;
  await assert.rejects(dev.c.publishAsync('other/a', 'no', { qos: 1 }), /135|Not authorized/i);
  await dev.c.publishAsync('sensors/a', 'yes', { qos: 1 });
  await until(() => got.includes('sensors/a'), WAIT, 'sensors/a to be delivered');
  assert.ok(!got.includes('other/a'), 'the denied publish was delivered');
});

test('Users: editing a user\'s roles in the UI takes its grants away at once', async () => {
  await go('Users');
  await row('dev-7').getByRole('button', { name: 'Edit dev-7' }).click();
  const form = page.getByRole('form', { name: 'Edit user dev-7' });
  assert.ok(await form.getByRole('checkbox', { name: 'sensor' }).isChecked());
  await form.getByRole('checkbox', { name: 'sensor' }).uncheck();
  await form.getByRole('button', { name: 'Save user' }).click();
  await page.getByRole('status').filter({ hasText: 'Saved dev-7' }).waitFor();
  assert.deepEqual((await api('GET', '/admin/users/dev-7')).json.roles, []);
  await assert.rejects(devClient.publishAsync('sensors/b', 'no longer', { qos: 1 }), /135|Not authorized/i);
  await row('dev-7').getByRole('button', { name: 'Edit dev-7' }).click();
  await page.getByRole('form', { name: 'Edit user dev-7' }).getByRole('checkbox', { name: 'sensor' }).check();
  await page.getByRole('button', { name: 'Save user' }).click();
  await page.getByRole('status').filter({ hasText: 'Saved dev-7' }).waitFor();
  await devClient.publishAsync('sensors/c', 'again', { qos: 1 });
});

test('Users: disabling a user ends its connection', async () => {
  await go('Users');
  await row('dev-7').getByRole('button', { name: 'Disable dev-7' }).click();
  await closed(devClient);
  await row('dev-7').filter({ hasText: 'disabled' }).waitFor();
});

test('Groups: a group made in the UI is in the policy store', async () => {
  await go('Groups');
  await page.getByLabel('Group name').fill('plant-a');
  await page.getByRole('checkbox', { name: 'sensor' }).check();
  await page.getByRole('button', { name: 'Create group' }).click();
  await row('plant-a').waitFor();
  await shot('05-groups');
  assert.deepEqual((await api('GET', '/admin/groups/plant-a')).json.roles, ['sensor']);
});

test('OAuth clients: create (secret shown once), connect with its token, revoke the token, rotate the secret', async () => {
  await go('OAuth clients');
  await page.getByLabel('Client id').fill('svc-1');
  await page.getByLabel('Scopes').fill('mqtt:pub:svc/#');
  await page.getByRole('button', { name: 'Create client' }).click();
  const secret = (await page.locator('.secret').innerText()).trim();
  await row('svc-1').waitFor();
  await shot('09-oauth-clients');
  const tokenFor = async s => fetch(BASE + '/oauth/token', { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ grant_type: 'client_credentials', client_id: 'svc-1', client_secret: s }) });
  const r = await tokenFor(secret);
  assert.equal(r.status, 200);
  const access = (await r.json()).access_token;
  const svc = await connect({ clientId: 'svc-1', username: 'svc-1', password: access });
  assert.ifError(svc.error);
  await page.getByLabel('Access token').fill(access);
  await page.getByRole('button', { name: 'Revoke token' }).click();
  await closed(svc.c);
  await page.getByRole('status').filter({ hasText: /Revoked the token/ }).waitFor();
  await row('svc-1').getByRole('button', { name: 'Rotate the secret of svc-1' }).click();
  await page.getByRole('status').filter({ hasText: 'Rotated the secret of svc-1' }).waitFor();
  const fresh = (await page.locator('.secret').innerText()).trim();
  assert.notEqual(fresh, secret);
  assert.equal((await tokenFor(secret)).status, 401, 'the old secret still works');
  assert.equal((await tokenFor(fresh)).status, 200);
});

test('Certificates: a device certificate seen over mqtts is listed, then marked revoked after a CRL reload', async () => {
  const pki = path.join(work, 'pki');
  const c = await new Promise(resolve => {
    const cl = mqtt.connect({ host: '127.0.0.1', port: T, protocol: 'mqtts', protocolVersion: 5, reconnectPeriod: 0, clientId: 'dev-1',
      ca: fs.readFileSync(path.join(pki, 'ca.pem')), cert: fs.readFileSync(path.join(pki, 'dev-1.pem')), key: fs.readFileSync(path.join(pki, 'dev-1.key')), rejectUnauthorized: true, servername: 'localhost' });
    clients.push(cl);
    cl.events = [];
    cl.on('close', () => cl.events.push({ close: true }));
    cl.once('connect', () => resolve(cl));
    cl.once('error', e => resolve(e));
  });
  assert.ok(!(c instanceof Error), `mqtts connect: ${c}`);
  await go('Certificates');
  await row('CN=dev-1').filter({ hasText: 'valid' }).waitFor();
  await shot('10-certificates');
  warden(['cert', 'revoke', '--cn', 'dev-1', '--dir', pki]);
  broker.kill('SIGHUP');
  await closed(c);
  await until(async () => { await page.getByRole('button', { name: 'Refresh' }).click(); return await row('CN=dev-1').filter({ hasText: 'revoked' }).count() > 0; }, WAIT, 'the certificate to show as revoked');
});

test('Devices: a device registered in the UI with its certificate; revoking it there ends its connection and refuses it', async () => {
  const pki = path.join(work, 'pki');
  await go('Devices');
  await page.getByLabel('Device id').fill('dev-2');
  await page.getByLabel('Type').fill('sensor');
  await page.getByLabel('Attributes').fill('site=berlin, line=3');
  await page.getByLabel('Certificate (PEM, optional)').fill(fs.readFileSync(path.join(pki, 'dev-2.pem'), 'utf8'));
  await page.getByRole('button', { name: 'Create device' }).click();
  await row('dev-2').filter({ hasText: 'site=berlin' }).filter({ hasText: 'active' }).waitFor();
  await shot('12-devices');
  const tlsConnect = () => new Promise(resolve => {
    const cl = mqtt.connect({ host: '127.0.0.1', port: T, protocol: 'mqtts', protocolVersion: 5, reconnectPeriod: 0, clientId: 'dev-2',
      ca: fs.readFileSync(path.join(pki, 'ca.pem')), cert: fs.readFileSync(path.join(pki, 'dev-2.pem')), key: fs.readFileSync(path.join(pki, 'dev-2.key')), servername: 'localhost' });
    clients.push(cl);
    cl.events = [];
    cl.on('disconnect', p => cl.events.push({ disconnect: p.reasonCode }));
    cl.on('close', () => cl.events.push({ close: true }));
    cl.once('connect', () => resolve({ c: cl }));
    cl.once('error', error => resolve({ c: cl, error }));
  });
  const dev = await tlsConnect();
  assert.ifError(dev.error);
  await go('Certificates');
  await row('CN=dev-2').filter({ hasText: 'dev-2 (active)' }).waitFor();
  await go('Devices');
  await row('dev-2').getByRole('button', { name: /^Revoke certificate/ }).click();
  await until(() => dev.c.events.some(e => e.disconnect === 0x87), WAIT, 'DISCONNECT 0x87 after the revocation');
  await row('dev-2').filter({ hasText: 'revoked' }).waitFor();
  const again = await tlsConnect();
  assert.ok(again.error, 'the revoked certificate connected again');
});

test('Audit: lists the changes made and tails new ones without a reload', async () => {
  await go('Audit');
  await row('role.create').filter({ hasText: 'sensor' }).waitFor();
  await row('client.kick').filter({ hasText: 'mq-alice' }).waitFor();
  await shot('11-audit');
  await api('POST', '/admin/bans', { kind: 'client-id', value: 'tail-me' });
  await row('ban.add').filter({ hasText: 'tail-me' }).waitFor();
  await page.getByLabel('Filter').fill('tail-me');
  assert.equal(await page.getByRole('row').count(), 2, 'the filter keeps only the header and the record');
});

test('Alerts: a flooding client is quarantined, shown with its alert, and lifted from the page', async () => {
  // Absolute threshold: fires while the baselines are still being learned.
  assert.equal((await api('PUT', '/admin/watch/rules/console-flood', { metric: 'publishes', above: 50, action: 'quarantine', duration_secs: 600 })).status, 200);
  const dev = await connect({ clientId: 'mq-flood', username: 'bob', password: 'bob-pw' });
  assert.ifError(dev.error);
  let on = true;
  (async () => { while (on) { for (let i = 0; i < 20; i++) dev.c.publish('flood/x', 'x'); await new Promise(r => setTimeout(r, 20)); } })();
  await go('Alerts');
  await page.getByRole('table', { name: 'Restrictions in force' }).getByRole('row').filter({ hasText: 'user:bob' }).filter({ hasText: 'quarantine' }).waitFor();
  on = false;
  await page.getByRole('table', { name: 'Recent alerts' }).getByRole('row').filter({ hasText: 'console-flood' }).first().waitFor();
  await shot('13-alerts');
  // Quarantined: a topic it never used is refused (v5 PUBACK 0x87).
  const refused = await new Promise(resolve => dev.c.publish('never/used', 'x', { qos: 1 }, (e, p) => resolve(e ? e.code : p?.reasonCode ?? 0)));
  assert.equal(refused, 0x87);
  // The rule goes first: the flood's publishes still in the current window would otherwise
  // quarantine bob again when the window closes after the lift (seen once in CI).
  assert.equal((await api('DELETE', '/admin/watch/rules/console-flood')).status, 200);
  await page.getByRole('button', { name: 'Lift the quarantine of bob' }).click();
  await page.getByRole('status').filter({ hasText: 'Lifted the restrictions of bob' }).waitFor();
  await until(async () => (await api('GET', '/admin/watch/restrictions')).json.length === 0, WAIT, 'the quarantine to be lifted');
  const allowed = await new Promise(resolve => dev.c.publish('never/used/2', 'x', { qos: 1 }, (e, p) => resolve(e ? e.code : p?.reasonCode ?? 0)));
  assert.equal(allowed, 0);
});

test('Overview: figures and a chart that moves while clients publish', async () => {
  const pub = await connect({ clientId: 'mq-load', username: 'alice', password: 'alice-pw' });
  let on = true;
  (async () => { while (on) { pub.c.publish('load/x', 'x'); await new Promise(r => setTimeout(r, 20)); } })();
  await go('Overview');
  const tile = page.locator('.tile').first();
  await until(async () => /\d/.test(await tile.innerText()), WAIT, 'a connections figure');
  const chart = () => page.locator('figure.chart svg').first().innerHTML();
  const first = await chart();
  await until(async () => (await chart()) !== first && /polyline/.test(await chart()), WAIT, 'the chart to change');
  await until(async () => !/Messages in per second\s*0\b/.test(await page.locator('.tiles').innerText()), WAIT, 'a message rate');
  on = false;
  await shot('00-overview');
});

test('no page has a console or script error, and nothing left 127.0.0.1', async () => {
  const before = consoleErrors.length;
  for (const name of ['Overview', 'Clients', 'Users', 'Groups', 'Roles', 'OAuth clients', 'Certificates', 'Devices', 'Bans', 'Alerts', 'Audit']) await go(name);
  assert.deepEqual(consoleErrors.slice(before), []);
  assert.deepEqual(pageErrors, []);
  assert.ok(requests.every(r => new URL(r.url()).hostname === '127.0.0.1' || r.url().startsWith('data:')));
});

test('the admin token travels only in the Authorization header', async () => {
  const calls = requests.filter(r => new URL(r.url()).pathname.startsWith('/admin/'));
  assert.ok(calls.length > 10);
  for (const r of calls) {
    assert.ok(!r.url().includes(encodeURIComponent(TOKEN)) && !r.url().includes(TOKEN), 'token in a URL');
    assert.ok(!(r.postData() || '').includes(TOKEN), 'token in a body');
    const h = await r.allHeaders();
    assert.ok(!(h.cookie || '').includes(TOKEN), 'token in a cookie');
  }
  assert.ok((await Promise.all(calls.map(r => r.allHeaders()))).some(h => h.authorization === 'Bearer ' + TOKEN));
  assert.deepEqual((await page.context().cookies()).filter(c => c.value.includes(TOKEN)), []);
});

test('a page of another origin cannot use the admin API', async () => {
  const other = `http://127.0.0.1:${await freePort()}`;
  const ctx = await browser.newContext();
  await ctx.route(other + '/**', r => r.fulfill({ contentType: 'text/html', body: '<!doctype html><p>elsewhere</p>' }));
  const p2 = await ctx.newPage();
  await p2.goto(other + '/');
  const res = await p2.evaluate(async ({ url, token }) => {
    try { const r = await fetch(url, { headers: { Authorization: 'Bearer ' + token } }); return 'read: ' + r.status; } catch { return 'blocked'; }
  }, { url: BASE + '/admin/clients', token: TOKEN });
  assert.equal(res, 'blocked');
  // and the API itself refuses, even a request that needs no preflight
  assert.equal((await api('POST', '/admin/bans', { kind: 'client-id', value: 'x' }, { Origin: other })).status, 403);
  await ctx.close();
});

test('Sign out forgets the token', async () => {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('Admin token').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
});
