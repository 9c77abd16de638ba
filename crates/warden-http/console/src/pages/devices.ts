import { del, enc, get, post, put, type Device } from '../api';
import { field, h, set, table, until } from '../dom';
import { button, frame, type Page } from '../page';

/** `site=berlin, line=3` → {site: "berlin", line: "3"} (null when malformed). */
export function parseAttributes(text: string): Record<string, string> | null {
  const out: Record<string, string> = {};
  for (const part of text.split(',').map(s => s.trim()).filter(Boolean)) {
    const i = part.indexOf('=');
    if (i <= 0) return null;
    out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

export const devices: Page = root => {
  const f = frame(root, 'Devices', 'The device registry: each device\'s attributes (usable in rules as %{attr:NAME}) and its certificates by SHA-256 fingerprint. Making a certificate inactive or revoked ends its connections at once; revoked is final. With [auth] registered_certificates_only, only active registered certificates are accepted.');
  const list = h('div');
  const formSlot = h('div');
  f.body.append(list, formSlot);

  const status = (id: string, fp: string, s: string) => f.act(async () => {
    await put(`/admin/devices/${enc(id)}/certificates/${enc(fp)}`, { status: s });
    await load();
    return `Certificate ${fp.slice(0, 16)}… of ${id} is now ${s}.`;
  });
  const load = async () => {
    let ds: Device[];
    try { ds = await get<Device[]>('/admin/devices'); } catch (e) { f.error(`Could not read the device registry: ${(e as Error).message}`); return; }
    set(list, table(['Device', 'Type', 'Owner', 'Attributes', 'Certificates', 'Actions'], ds.map(d => [
      h('code', {}, d.id), d.type ?? '—', d.owner ?? '—',
      Object.entries(d.attributes).map(([k, v]) => `${k}=${v}`).join(', ') || '—',
      d.certificates.length ? h('ul', {}, d.certificates.map(c => h('li', {},
        h('code', { title: c.fingerprint }, c.fingerprint.slice(0, 16) + '…'), ' ',
        h('span', { class: c.status === 'active' ? 'badge good' : 'badge bad' }, c.status),
        c.not_after ? ` until ${until(c.not_after)}` : '', ' ',
        c.status === 'active' ? button('Deactivate', () => void status(d.id, c.fingerprint, 'inactive'), 'secondary', { 'aria-label': `Deactivate certificate ${c.fingerprint.slice(0, 16)} of ${d.id}` }) : null,
        c.status === 'inactive' ? button('Activate', () => void status(d.id, c.fingerprint, 'active'), 'secondary', { 'aria-label': `Activate certificate ${c.fingerprint.slice(0, 16)} of ${d.id}` }) : null, ' ',
        c.status !== 'revoked' ? button('Revoke', () => {
          if (!confirm(`Revoke this certificate of ${d.id}? Its connections end now and it is refused from now on; this cannot be undone.`)) return;
          void status(d.id, c.fingerprint, 'revoked');
        }, 'danger', { 'aria-label': `Revoke certificate ${c.fingerprint.slice(0, 16)} of ${d.id}` }) : null))) : h('span', { class: 'empty' }, 'none'),
      h('td', { class: 'actions' }, button('Delete', () => {
        if (!confirm(`Delete device ${d.id} from the registry?`)) return;
        void f.act(async () => { await del(`/admin/devices/${enc(d.id)}`); await load(); return `Deleted device ${d.id}.`; });
      }, 'danger', { 'aria-label': `Delete device ${d.id}` })),
    ]), 'The registry has no devices yet.', 'Devices'));
  };

  const id = h('input', { type: 'text', required: true, autocomplete: 'off', spellcheck: 'false' });
  const kind = h('input', { type: 'text', autocomplete: 'off' });
  const owner = h('input', { type: 'text', autocomplete: 'off' });
  const attrs = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'site=berlin, line=3' });
  const pem = h('textarea', { rows: 4, cols: 64, spellcheck: 'false', placeholder: '-----BEGIN CERTIFICATE-----', id: 'device-pem' });
  set(formSlot, h('form', {
    class: 'card', 'aria-labelledby': 'new-device-title',
    onsubmit: (e: Event) => {
      e.preventDefault();
      const attributes = parseAttributes(attrs.value);
      if (!attributes) { f.error('Attributes: write them as name=value, separated by commas.'); return; }
      const body: Record<string, unknown> = { id: id.value.trim(), attributes };
      if (kind.value.trim()) body.type = kind.value.trim();
      if (owner.value.trim()) body.owner = owner.value.trim();
      if (pem.value.trim()) body.certificates = [{ pem: pem.value.trim() }];
      void f.act(async () => {
        await post('/admin/devices', body);
        for (const el of [id, kind, owner, attrs]) el.value = '';
        pem.value = '';
        await load();
        return `Registered device ${body.id}.`;
      });
    },
  }, h('h3', { id: 'new-device-title' }, 'New device'),
    h('div', { class: 'row' }, field('Device id', id), field('Type', kind), field('Owner', owner), field('Attributes', attrs)),
    h('div', { class: 'field' }, h('label', { for: 'device-pem' }, 'Certificate (PEM, optional)'), pem),
    h('p', {}, h('button', { type: 'submit' }, 'Create device'))));
  void load();
};
