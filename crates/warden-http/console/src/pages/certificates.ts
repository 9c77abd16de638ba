import { get, type Cert, type Device } from '../api';
import { ago, field, h, set, table, time, until } from '../dom';
import { button, every, frame, type Page } from '../page';

export const certificates: Page = root => {
  const f = frame(root, 'Certificates', 'Client certificates presented in verified TLS handshakes (the most recent 10,000): the identity taken from each, its issuer and expiry, and whether a CRL in force revokes it.');
  const filter = h('input', { type: 'search', id: 'certs-filter', placeholder: 'subject, identity, issuer or fingerprint' });
  const list = h('div');
  let all: Cert[] = [];
  let registered = new Map<string, [string, string]>();
  f.body.append(h('div', { class: 'row' }, field('Filter', filter), button('Refresh', () => void load(), 'secondary')), list);
  filter.addEventListener('input', () => render());
  const status = (c: Cert) => {
    const now = Date.now() / 1000;
    if (c.revoked) return h('span', { class: 'badge bad' }, 'revoked');
    if (c.not_after < now) return h('span', { class: 'badge bad' }, 'expired');
    if (c.not_after - now < 14 * 86400) return h('span', { class: 'badge' }, 'expires soon');
    return h('span', { class: 'badge good' }, 'valid');
  };
  const render = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = all.filter(c => !q || [c.subject, c.identity ?? '', c.issuer, c.fingerprint].some(x => x.toLowerCase().includes(q)));
    set(list, table(['Subject', 'Identity', 'Issuer', 'Serial', 'Valid until', 'Status', 'Device registry', 'Connected', 'Last seen'], shown.map(c => [
      c.subject, c.identity ? h('code', {}, c.identity) : h('span', { class: 'empty' }, 'none (refused)'), c.issuer,
      h('code', { title: `SHA-256 ${c.fingerprint}` }, c.serial), until(c.not_after), status(c),
      registered.has(c.fingerprint) ? `${registered.get(c.fingerprint)![0]} (${registered.get(c.fingerprint)![1]})` : 'not registered',
      String(c.connected),
      h('span', { title: time(c.last_seen) }, `${ago(c.last_seen)} from ${c.last_peer} (${c.handshakes} handshakes)`),
    ]), all.length ? 'No certificate matches the filter.' : 'No client certificate has been seen yet: they appear after a TLS handshake on a listener with client_ca.', 'Certificates seen'));
  };
  const load = async () => {
    try {
      const [cs, ds] = await Promise.all([get<Cert[]>('/admin/certificates'), get<Device[]>('/admin/devices')]);
      all = cs;
      registered = new Map(ds.flatMap(d => d.certificates.map(c => [c.fingerprint, [d.id, c.status]] as [string, [string, string]])));
      render();
    } catch (e) { f.error(`Could not list the certificates: ${(e as Error).message}`); }
  };
  return every(10000, load);
};
