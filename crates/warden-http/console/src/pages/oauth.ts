import { del, enc, get, post, type OAuthClient, type Role } from '../api';
import { choices, field, h, set, table } from '../dom';
import { button, frame, type Page } from '../page';

/** A new client secret: 32 random bytes, base64url (made in the browser, shown once). */
function newSecret(): string {
  const b = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...b)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export const oauth: Page = root => {
  const f = frame(root, 'OAuth clients', 'Clients of the built-in token service (OAuth 2.0 client credentials). Their secrets are kept only as salted slow hashes: a new secret is shown once, here. Deleting a client, or narrowing its scopes or roles, ends the connections its tokens hold.');
  const list = h('div');
  const shown = h('div', { 'aria-live': 'polite' });
  const formSlot = h('div');
  const revokeSlot = h('div');
  f.body.append(shown, list, formSlot, revokeSlot);

  const showSecret = (id: string, secret: string) => set(shown, h('div', { class: 'card notice' },
    h('p', {}, `The secret of ${id} — copy it now, it is not shown again:`), h('p', { class: 'secret' }, secret)));

  const load = async () => {
    let cs: OAuthClient[], rs: Role[];
    try { [cs, rs] = await Promise.all([get<OAuthClient[]>('/admin/oauth/clients'), get<Role[]>('/admin/roles')]); } catch (e) { f.error(`Could not list the OAuth clients: ${(e as Error).message}`); return; }
    set(list, table(['Client id', 'Scopes', 'Roles', 'Actions'], cs.map(c => [
      h('code', {}, c.id), c.scopes.join(' ') || '—', c.roles.join(', ') || '—',
      h('td', { class: 'actions' },
        button('Rotate secret', () => {
          if (!confirm(`Give ${c.id} a new secret? The old one stops working at once; tokens already issued stay valid until they expire or are revoked.`)) return;
          const secret = newSecret();
          void f.act(async () => { await post('/admin/oauth/clients', { id: c.id, secret, scopes: c.scopes, roles: c.roles }); showSecret(c.id, secret); return `Rotated the secret of ${c.id}.`; });
        }, 'secondary', { 'aria-label': `Rotate the secret of ${c.id}` }), ' ',
        button('Delete', () => {
          if (!confirm(`Delete OAuth client ${c.id}? Its tokens are refused and their connections end.`)) return;
          void f.act(async () => { await del(`/admin/oauth/clients/${enc(c.id)}`); await load(); return `Deleted ${c.id}.`; });
        }, 'danger', { 'aria-label': `Delete ${c.id}` })),
    ]), 'No OAuth client is stored (clients declared in the configuration file are managed there).', 'OAuth clients'));

    const id = h('input', { type: 'text', required: true, autocomplete: 'off', spellcheck: 'false' });
    const scopes = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'mqtt:pub:devices/# mqtt:sub:commands/#' });
    const roleBoxes = choices('Roles', rs.map(r => r.name));
    set(formSlot, h('form', {
      class: 'card', 'aria-labelledby': 'new-oauth-title',
      onsubmit: (e: Event) => {
        e.preventDefault();
        const cid = id.value.trim();
        const secret = newSecret();
        void f.act(async () => {
          await post('/admin/oauth/clients', { id: cid, secret, scopes: scopes.value.split(/\s+/).filter(Boolean), roles: roleBoxes.values() });
          showSecret(cid, secret);
          await load();
          return `Created OAuth client ${cid}.`;
        });
      },
    }, h('h3', { id: 'new-oauth-title' }, 'New OAuth client'),
      h('div', { class: 'row' }, field('Client id', id), field('Scopes', scopes), roleBoxes.el),
      h('p', {}, 'Its secret is generated in this browser and shown once.'),
      h('p', {}, h('button', { type: 'submit' }, 'Create client'))));
  };

  const tok = h('input', { type: 'password', autocomplete: 'off', spellcheck: 'false' });
  set(revokeSlot, h('form', {
    class: 'card', 'aria-labelledby': 'revoke-title',
    onsubmit: (e: Event) => {
      e.preventDefault();
      void f.act(async () => {
        const r = await post<{ revoked: string | null }>('/admin/tokens/revoke', { token: tok.value.trim() });
        tok.value = '';
        return r.revoked ? `Revoked the token ${r.revoked}: its connections end.` : 'That token was already revoked.';
      });
    },
  }, h('h3', { id: 'revoke-title' }, 'Revoke a token'),
    h('p', {}, 'Paste an access token issued by this broker: it is refused from now on, on every node, and the connections it holds end.'),
    h('div', { class: 'row' }, field('Access token', tok), h('button', { type: 'submit', class: 'danger' }, 'Revoke token'))));
  void load();
};
