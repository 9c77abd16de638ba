import { enc, get, post, type Client } from '../api';
import { ago, field, h, set, table, time, until } from '../dom';
import { button, every, frame, type Page } from '../page';

export const clients: Page = root => {
  const f = frame(root, 'Clients', 'Every connected client id, the principal it authenticated as and how. Kick ends a connection (MQTT 5: DISCONNECT 0x98); Ban also refuses its client id from now on.');
  const filter = h('input', { type: 'search', id: 'clients-filter', placeholder: 'client id, principal or address' });
  const list = h('div');
  let all: Client[] = [];
  f.body.append(h('div', { class: 'row' }, field('Filter', filter), button('Refresh', () => void load(), 'secondary')), list);
  filter.addEventListener('input', () => render());

  const render = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = all.filter(c => !q || [c.client_id, c.principal, c.peer].some(x => x.toLowerCase().includes(q)));
    set(list, table(['Client id', 'Principal', 'Method', 'Peer', 'Protocol', 'Credential', 'Connected', 'Actions'],
      shown.map(c => [
        h('code', {}, c.client_id),
        c.principal,
        c.method ?? '—',
        c.node ? `${c.peer} (node ${c.node})` : c.peer,
        c.protocol,
        credential(c),
        c.connected_at ? h('span', { title: time(c.connected_at) }, ago(c.connected_at)) : '—',
        h('td', { class: 'actions' },
          button('Kick', () => void kick(c.client_id), 'secondary', { 'aria-label': `Kick ${c.client_id}` }), ' ',
          button('Ban', () => void ban(c.client_id), 'danger', { 'aria-label': `Ban ${c.client_id}` })),
      ]), all.length ? 'No client matches the filter.' : 'No client is connected.', 'Connected clients'));
  };
  const load = async () => {
    try { all = await get<Client[]>('/admin/clients'); render(); } catch (e) { f.error(`Could not list the clients: ${(e as Error).message}`); }
  };
  const kick = (id: string) => {
    if (!confirm(`Kick ${id}? Its connection ends now (it may reconnect).`)) return;
    return f.act(async () => { await post(`/admin/clients/${enc(id)}/kick`, {}); await load(); return `Kicked ${id}.`; });
  };
  const ban = (id: string) => {
    if (!confirm(`Ban client id ${id}? Its connection ends now and it is refused until the ban is lifted (Bans page).`)) return;
    return f.act(async () => {
      await post('/admin/bans', { kind: 'client-id', value: id, reason: 'banned from the console' });
      await load();
      return `Banned client id ${id}.`;
    });
  };
  return every(5000, load);
};

function credential(c: Client): Node | string {
  if (c.certificate) return h('span', {}, c.certificate, h('br'), `certificate valid until ${until(c.cert_expires_at)}`);
  if (c.token_expires_at) return `token expires ${until(c.token_expires_at)}`;
  return '—';
}
