import { del, enc, get, post, put, type Group, type Role, type User } from '../api';
import { choices, field, h, set, table } from '../dom';
import { button, frame, type Page } from '../page';

export const users: Page = root => {
  const f = frame(root, 'Users', 'Users of the policy store: their password (kept only as a salted slow hash), roles and groups. Disabling or deleting a user ends its connections at once. (Users of the password file are managed in that file.)');
  const list = h('div');
  const editSlot = h('div');
  const formSlot = h('div');
  f.body.append(list, editSlot, formSlot);

  const edit = (u: User, rs: Role[], gs: Group[]) => {
    const roleBoxes = choices('Roles', rs.map(r => r.name), u.roles);
    const groupBoxes = choices('Groups', gs.map(g => g.name), u.groups);
    const pw = h('input', { type: 'password', autocomplete: 'new-password' });
    set(editSlot, h('form', {
      class: 'card', 'aria-labelledby': 'edit-user-title',
      onsubmit: (e: Event) => {
        e.preventDefault();
        const patch: Record<string, unknown> = { roles: roleBoxes.values(), groups: groupBoxes.values() };
        if (pw.value) patch.password = pw.value;
        void f.act(async () => { await put(`/admin/users/${enc(u.name)}`, patch); set(editSlot); await load(); return `Saved ${u.name}.`; });
      },
    },
      h('h3', { id: 'edit-user-title' }, `Edit user ${u.name}`),
      h('div', { class: 'row' }, roleBoxes.el, groupBoxes.el, field('New password (leave empty to keep it)', pw)),
      h('p', {}, h('button', { type: 'submit' }, 'Save user'), ' ', h('button', { type: 'button', class: 'secondary', onclick: () => set(editSlot) }, 'Cancel'))));
    editSlot.querySelector('input')?.focus();
  };

  const load = async () => {
    let us: User[], rs: Role[], gs: Group[];
    try {
      [us, rs, gs] = await Promise.all([get<User[]>('/admin/users'), get<Role[]>('/admin/roles'), get<Group[]>('/admin/groups')]);
    } catch (e) { f.error(`Could not read the policy store: ${(e as Error).message}`); return; }
    set(list, table(['User', 'Roles', 'Groups', 'Status', 'Actions'], us.map(u => [
      h('code', {}, u.name),
      u.roles.join(', ') || '—',
      u.groups.join(', ') || '—',
      h('span', { class: u.disabled ? 'badge bad' : 'badge good' }, u.disabled ? 'disabled' : 'enabled'),
      h('td', { class: 'actions' },
        button('Edit', () => edit(u, rs, gs), 'secondary', { 'aria-label': `Edit ${u.name}` }), ' ',
        button(u.disabled ? 'Enable' : 'Disable', () => void f.act(async () => {
          await put(`/admin/users/${enc(u.name)}`, { disabled: !u.disabled });
          await load();
          return `${u.disabled ? 'Enabled' : 'Disabled'} ${u.name}.`;
        }), 'secondary', { 'aria-label': `${u.disabled ? 'Enable' : 'Disable'} ${u.name}` }), ' ',
        button('Delete', () => {
          if (!confirm(`Delete user ${u.name}? Its connections end now.`)) return;
          void f.act(async () => { await del(`/admin/users/${enc(u.name)}`); await load(); return `Deleted ${u.name}.`; });
        }, 'danger', { 'aria-label': `Delete ${u.name}` })),
    ]), 'The policy store has no users yet.', 'Users'));

    const name = h('input', { type: 'text', required: true, autocomplete: 'off', spellcheck: 'false' });
    const pw = h('input', { type: 'password', required: true, autocomplete: 'new-password' });
    const roleBoxes = choices('Roles', rs.map(r => r.name));
    const groupBoxes = choices('Groups', gs.map(g => g.name));
    set(formSlot, h('form', {
      class: 'card', 'aria-labelledby': 'new-user-title',
      onsubmit: (e: Event) => {
        e.preventDefault();
        const n = name.value.trim();
        void f.act(async () => {
          await post('/admin/users', { name: n, password: pw.value, roles: roleBoxes.values(), groups: groupBoxes.values() });
          await load();
          return `Created user ${n}.`;
        });
      },
    },
      h('h3', { id: 'new-user-title' }, 'New user'),
      h('div', { class: 'row' }, field('User name', name), field('Password', pw)),
      h('div', { class: 'row' }, roleBoxes.el, groupBoxes.el),
      h('p', {}, h('button', { type: 'submit' }, 'Create user'))));
  };
  void load();
};

export const groups: Page = root => {
  const f = frame(root, 'Groups', 'Groups give their roles to every user in them.');
  const list = h('div');
  const editSlot = h('div');
  const formSlot = h('div');
  f.body.append(list, editSlot, formSlot);
  const load = async () => {
    let gs: Group[], rs: Role[];
    try { [gs, rs] = await Promise.all([get<Group[]>('/admin/groups'), get<Role[]>('/admin/roles')]); } catch (e) { f.error(`Could not read the policy store: ${(e as Error).message}`); return; }
    set(list, table(['Group', 'Roles', 'Actions'], gs.map(g => [
      h('code', {}, g.name), g.roles.join(', ') || '—',
      h('td', { class: 'actions' }, button('Edit', () => {
        const boxes = choices('Roles', rs.map(r => r.name), g.roles);
        set(editSlot, h('form', {
          class: 'card', 'aria-labelledby': 'edit-group-title',
          onsubmit: (e: Event) => {
            e.preventDefault();
            void f.act(async () => { await put(`/admin/groups/${enc(g.name)}`, { roles: boxes.values() }); set(editSlot); await load(); return `Saved group ${g.name}.`; });
          },
        }, h('h3', { id: 'edit-group-title' }, `Edit group ${g.name}`), boxes.el,
          h('p', {}, h('button', { type: 'submit' }, 'Save group'), ' ', h('button', { type: 'button', class: 'secondary', onclick: () => set(editSlot) }, 'Cancel'))));
      }, 'secondary', { 'aria-label': `Edit group ${g.name}` }), ' ', button('Delete', () => {
        if (!confirm(`Delete group ${g.name}?`)) return;
        void f.act(async () => { await del(`/admin/groups/${enc(g.name)}`); await load(); return `Deleted group ${g.name}.`; });
      }, 'danger', { 'aria-label': `Delete group ${g.name}` })),
    ]), 'No groups yet.', 'Groups'));
    const name = h('input', { type: 'text', required: true, autocomplete: 'off' });
    const roleBoxes = choices('Roles', rs.map(r => r.name));
    set(formSlot, h('form', {
      class: 'card', 'aria-labelledby': 'new-group-title',
      onsubmit: (e: Event) => {
        e.preventDefault();
        const n = name.value.trim();
        void f.act(async () => { await post('/admin/groups', { name: n, roles: roleBoxes.values() }); await load(); return `Created group ${n}.`; });
      },
    }, h('h3', { id: 'new-group-title' }, 'New group'), h('div', { class: 'row' }, field('Group name', name), roleBoxes.el), h('p', {}, h('button', { type: 'submit' }, 'Create group'))));
  };
  void load();
};
