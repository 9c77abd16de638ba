import { get, type AuditRecord } from '../api';
import { field, h, select, set, table } from '../dom';
import { every, frame, type Page } from '../page';

export const audit: Page = root => {
  const f = frame(root, 'Audit', 'Every change made through the admin API, the CLI and this console: who, from where, what, on what, and the result. New records appear as they are written.');
  const text = h('input', { type: 'search', autocomplete: 'off', placeholder: 'action, target, actor or address' });
  const result = select([['', 'any'], ['ok', 'ok'], ['refused', 'refused']]);
  const list = h('div');
  f.body.append(h('div', { class: 'row' }, field('Filter', text), field('Result', result)), list);
  const seen = new Set<string>();
  let records: AuditRecord[] = [];
  let since = 0;
  text.addEventListener('input', () => render());
  result.addEventListener('change', () => render());
  const render = () => {
    const q = text.value.trim().toLowerCase();
    const shown = records.filter(r => (!result.value || r.result === result.value)
      && (!q || [r.action, r.target, r.actor, r.peer].some(x => x.toLowerCase().includes(q))));
    set(list, table(['Time', 'Actor', 'From', 'Action', 'Target', 'Result', 'Detail'], shown.slice(0, 500).map(r => [
      r.time, r.actor, r.peer, h('code', {}, r.action), r.target,
      h('span', { class: r.result === 'ok' ? 'badge good' : 'badge bad' }, r.status ? `${r.result} (${r.status})` : r.result),
      r.error ?? (r.detail && typeof r.detail === 'object' && Object.keys(r.detail).length ? JSON.stringify(r.detail) : ''),
    ]), records.length ? 'No record matches the filter.' : 'The audit trail is empty.', 'Audit trail'));
  };
  const tail = async () => {
    let fresh: AuditRecord[];
    try { fresh = await get<AuditRecord[]>(since ? `/admin/audit?since=${since}&limit=1000` : '/admin/audit?limit=1000'); } catch (e) { f.error(`Could not read the audit trail: ${(e as Error).message}`); return; }
    let added = false;
    for (const r of fresh) {
      const key = JSON.stringify(r);
      if (seen.has(key)) continue;
      seen.add(key);
      records.unshift(r);
      added = true;
      since = Math.max(since, r.unix);
    }
    if (records.length > 5000) records = records.slice(0, 5000);
    if (added || !list.hasChildNodes()) render();
  };
  return every(2000, tail);
};
