import { del, enc, get, post, type Ban } from '../api';
import { field, h, select, set, table, until } from '../dom';
import { button, frame, type Page } from '../page';

const KINDS: [string, string][] = [['client-id', 'Client id'], ['username', 'User name'], ['ip', 'IP address'], ['cidr', 'Address block (CIDR)']];

export const bans: Page = root => {
  const f = frame(root, 'Bans', 'Bans in force: by an administrator, and automatic after repeated failed sign-ins. A client id or user name is refused at CONNECT; an address or block at accept. A new ban ends the connections it matches.');
  const list = h('div');
  const kind = select(KINDS);
  const value = h('input', { type: 'text', required: true, autocomplete: 'off', spellcheck: 'false' });
  const reason = h('input', { type: 'text', autocomplete: 'off' });
  const expires = select([['0', 'never'], ['600', 'in 10 minutes'], ['3600', 'in 1 hour'], ['86400', 'in 1 day'], ['604800', 'in 7 days']]);
  const form = h('form', {
    class: 'card', 'aria-labelledby': 'new-ban-title',
    onsubmit: (e: Event) => {
      e.preventDefault();
      const b: Ban = { kind: kind.value, value: value.value.trim() };
      if (reason.value.trim()) b.reason = reason.value.trim();
      if (expires.value !== '0') b.expires_at = Math.floor(Date.now() / 1000) + Number(expires.value);
      void f.act(async () => { await post('/admin/bans', b); value.value = ''; reason.value = ''; await load(); return `Banned ${b.kind} ${b.value}.`; });
    },
  }, h('h3', { id: 'new-ban-title' }, 'New ban'),
    h('div', { class: 'row' }, field('Kind', kind), field('Value', value), field('Reason', reason), field('Expires', expires), h('button', { type: 'submit', class: 'danger' }, 'Ban')));
  f.body.append(list, form);

  const load = async () => {
    let bs: Ban[];
    try { bs = await get<Ban[]>('/admin/bans'); } catch (e) { f.error(`Could not list the bans: ${(e as Error).message}`); return; }
    set(list, table(['Kind', 'Value', 'Reason', 'Expires', 'Actions'], bs.map(b => [
      KINDS.find(k => k[0] === b.kind)?.[1] ?? b.kind, h('code', {}, b.value), b.reason ?? '—', b.expires_at ? until(b.expires_at) : 'never',
      h('td', { class: 'actions' }, button('Lift', () => {
        if (!confirm(`Lift the ban of ${b.value}?`)) return;
        void f.act(async () => { await del(`/admin/bans?kind=${enc(b.kind)}&value=${enc(b.value)}`); await load(); return `Lifted the ban of ${b.value}.`; });
      }, 'secondary', { 'aria-label': `Lift the ban of ${b.value}` })),
    ]), 'No ban is in force.', 'Bans'));
  };
  void load();
};
