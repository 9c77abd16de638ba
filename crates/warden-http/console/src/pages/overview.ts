import { get, type Stats, type AuditRecord } from '../api';
import { Chart, fmt } from '../chart';
import { h, set, table, time } from '../dom';
import { every, frame, type Page } from '../page';

export const overview: Page = root => {
  const f = frame(root, 'Overview', 'The broker now: who is connected, how much flows, and what was refused. Updated every second.');
  const tiles = h('div', { class: 'tiles', 'aria-live': 'off' });
  const WINDOW = 600;
  const charts = {
    msgs: new Chart('Messages received per second', 'msg/s', WINDOW),
    conns: new Chart('Connections', 'connections', WINDOW),
    fails: new Chart('Authentication failures per minute', 'failures/min', WINDOW),
  };
  const recent = h('div');
  f.body.append(
    tiles,
    h('div', { class: 'charts' },
      h('figure', { class: 'chart' }, h('figcaption', {}, 'Messages received per second'), charts.msgs.svg),
      h('figure', { class: 'chart' }, h('figcaption', {}, 'Connections'), charts.conns.svg),
      h('figure', { class: 'chart' }, h('figcaption', {}, 'Authentication failures per minute'), charts.fails.svg)),
    h('h3', {}, 'Latest changes by administrators'),
    recent);
  let prev: Stats | null = null;
  const tile = (label: string, value: string, note = '') =>
    h('div', { class: 'tile' }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), note ? h('div', { class: 'label' }, note) : null);
  // The last minutes first (sampled by the broker every few seconds), then every second.
  let seeded = false;
  const seed = async () => {
    let hist: Stats[] = [];
    try { hist = await get<Stats[]>('/admin/stats/history'); } catch { return; }
    for (let i = 0; i < hist.length; i++) {
      const s = hist[i], p = hist[i - 1];
      if (p) {
        const dt = Math.max(0.001, (s.at_ms - p.at_ms) / 1000);
        charts.msgs.push(s.at_ms, Math.max(0, (s.messages_received - p.messages_received) / dt));
        charts.fails.push(s.at_ms, Math.max(0, (s.auth_failures - p.auth_failures) / dt) * 60);
      }
      charts.conns.push(s.at_ms, s.connections);
    }
  };
  const stopStats = every(1000, async () => {
    if (!seeded) { seeded = true; await seed(); }
    let s: Stats;
    try { s = await get<Stats>('/admin/stats'); } catch (e) { f.error(`Could not read the broker's figures: ${(e as Error).message}`); return; }
    const dt = prev ? Math.max(0.001, (s.at_ms - prev.at_ms) / 1000) : 0;
    const rate = (a: number, b: number) => (prev && dt ? Math.max(0, (a - b) / dt) : 0);
    const inRate = prev ? rate(s.messages_received, prev.messages_received) : 0;
    const outRate = prev ? rate(s.messages_sent, prev.messages_sent) : 0;
    const failRate = prev ? rate(s.auth_failures, prev.auth_failures) * 60 : 0;
    const byMethod = Object.entries(s.auth_failures_by_method).filter(([, n]) => n > 0).map(([m, n]) => `${m} ${n}`).join(', ');
    set(tiles,
      tile('Connections', String(s.connections), `${s.sessions} sessions, ${s.subscriptions} subscriptions`),
      tile('Messages in per second', fmt(inRate), `${s.messages_received} since start`),
      tile('Messages out per second', fmt(outRate), `${s.messages_sent} since start`),
      tile('Authentication failures', String(s.auth_failures), byMethod || 'none since start'),
      tile('Refused connections', String(s.connections_refused), `${s.connections_accepted} accepted`),
      tile('Authorization denials', String(s.authz_denied), 'publish, subscribe, receive, will'),
      tile('Bans in force', String(s.bans_active), 'by an administrator or automatic'));
    if (prev) {
      charts.msgs.push(s.at_ms, inRate);
      charts.fails.push(s.at_ms, failRate);
    }
    charts.conns.push(s.at_ms, s.connections);
    prev = s;
  });
  const stopAudit = every(5000, async () => {
    try {
      const recs = await get<AuditRecord[]>('/admin/audit?limit=8');
      set(recent, table(['Time', 'Who', 'Action', 'On', 'Result'],
        recs.reverse().map(r => [time(r.unix), r.actor, r.action, r.target, r.result]), 'No change has been made through the admin API yet.'));
    } catch { /* the figures above report errors */ }
  });
  return () => { stopStats(); stopAudit(); };
};
