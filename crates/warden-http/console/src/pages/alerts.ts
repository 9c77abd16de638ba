import { del, enc, get, type WatchAlert, type WatchRestriction, type WatchRules } from '../api';
import { h, set, table, time, until } from '../dom';
import { button, every, frame, type Page } from '../page';

const ACTION_CLASS: Record<string, string> = { alert: 'badge', throttle: 'badge warn', quarantine: 'badge bad', ban: 'badge bad' };

/** The behaviour watch (docs/watch.md): its alerts, the quarantines and throttles in force
 * (lifted here), and the rules it applies. */
export const alerts: Page = root => {
  const f = frame(root, 'Alerts', 'The behaviour watch: devices whose behaviour left their baseline (a publish flood, probed topics, failed sign-ins, a new network), and what was done. Quarantines and throttles are lifted here; bans on the Bans page.');
  const state = h('p');
  const restrictions = h('div');
  const list = h('div');
  const rules = h('div');
  f.body.append(state,
    h('h3', {}, 'Restrictions in force'), restrictions,
    h('h3', {}, 'Recent alerts'), list,
    h('h3', {}, 'Rules'), rules);
  const badge = (action: string, label = action) => h('span', { class: ACTION_CLASS[action] ?? 'badge' }, label);
  const load = async () => {
    let r: WatchRules, rs: WatchRestriction[], as: WatchAlert[];
    try {
      [r, rs, as] = await Promise.all([
        get<WatchRules>('/admin/watch/rules'),
        get<WatchRestriction[]>('/admin/watch/restrictions'),
        get<WatchAlert[]>('/admin/watch/alerts?limit=500'),
      ]);
    } catch (e) { f.error(`Could not read the behaviour watch: ${(e as Error).message}`); return; }
    set(state, r.enabled
      ? `The watch is on${r.defaults ? ', with the default rules' : ''}.`
      : 'The watch is off: set [watch] enabled = true in the configuration to turn it on.');
    set(restrictions, table(['Principal', 'Action', 'Rule', 'Since', 'Until', 'Actions'], rs.map(x => [
      h('code', {}, `${x.principal_kind}:${x.principal}`), badge(x.action), x.rate ? `${x.rule} (${x.rate} msg/s)` : x.rule,
      time(x.since), x.until ? until(x.until) : 'until lifted',
      h('td', { class: 'actions' }, button('Lift', () => {
        if (!confirm(`Lift the ${x.action} of ${x.principal}?`)) return;
        void f.act(async () => {
          await del(`/admin/watch/restrictions/${enc(x.principal_kind)}/${enc(x.principal)}`);
          await load();
          return `Lifted the restrictions of ${x.principal}.`;
        });
      }, 'secondary', { 'aria-label': `Lift the ${x.action} of ${x.principal}` })),
    ]), 'No quarantine or throttle is in force.', 'Restrictions in force'));
    set(list, table(['Time', 'Principal', 'Rule', 'Metric', 'Value', 'Baseline', 'Action'], as.map(a => [
      time(a.at), h('code', {}, `${a.principal_kind}:${a.principal}`), a.rule, a.metric, String(a.value),
      a.baseline === null ? 'learning' : a.baseline.toFixed(1), badge(a.action),
    ]), 'No alert yet.', 'Recent alerts'));
    set(rules, table(['Rule', 'Metric', 'Above', 'Baseline ×', 'Action', 'Lasts'], r.rules.map(x => [
      x.enabled ? x.id : `${x.id} (disabled)`, x.metric, x.above === undefined ? '—' : String(x.above),
      x.baseline_times === undefined ? '—' : String(x.baseline_times),
      badge(x.action, x.throttle_rate ? `${x.action} ${x.throttle_rate}/s` : x.action), x.duration_secs ? `${x.duration_secs} s` : (x.action === 'alert' ? '—' : 'until lifted'),
    ]), 'No rule.', 'Rules'));
  };
  return every(2000, load);
};
