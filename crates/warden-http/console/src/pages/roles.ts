import { del, enc, get, post, type Explained, type Role } from '../api';
import { field, h, select, set, table } from '../dom';
import { button, frame, type Page } from '../page';

export const roles: Page = root => {
  const f = frame(root, 'Roles', 'Roles hold the rules: which topics, which operation (publish, subscribe, receive), which QoS. The highest priority decides first; an explicit deny wins. Explain asks the broker\'s own authorization code what it would decide.');
  const list = h('div');
  const newRole = h('div');
  const rulesSlot = h('section', { 'aria-labelledby': 'rules-title' });
  let selected = '';
  f.body.append(list, newRole, rulesSlot, explainBox());

  const load = async () => {
    let rs: Role[];
    try { rs = await get<Role[]>('/admin/roles'); } catch (e) { f.error(`Could not read the roles: ${(e as Error).message}`); return; }
    set(list, table(['Role', 'Rules', 'Actions'], rs.map(r => [
      h('code', {}, r.name),
      String(r.rules.length),
      h('td', { class: 'actions' },
        button('Rules', () => { selected = r.name; renderRules(rs); }, 'secondary', { 'aria-label': `Rules of ${r.name}` }), ' ',
        button('Delete', () => {
          if (!confirm(`Delete role ${r.name}? Principals holding it lose its rules at once.`)) return;
          void f.act(async () => { await del(`/admin/roles/${enc(r.name)}`); if (selected === r.name) selected = ''; await load(); return `Deleted role ${r.name}.`; });
        }, 'danger', { 'aria-label': `Delete role ${r.name}` })),
    ]), 'No roles yet: make one below.', 'Roles'));
    renderRules(rs);
  };

  const roleName = h('input', { type: 'text', required: true, autocomplete: 'off', spellcheck: 'false' });
  set(newRole, h('form', {
    class: 'card', 'aria-labelledby': 'new-role-title',
    onsubmit: (e: Event) => {
      e.preventDefault();
      const n = roleName.value.trim();
      void f.act(async () => {
        await post('/admin/roles', { name: n, rules: [] });
        selected = n;
        roleName.value = '';
        await load();
        return `Created role ${n}: add its rules below.`;
      });
    },
  }, h('h3', { id: 'new-role-title' }, 'New role'), h('div', { class: 'row' }, field('Role name', roleName), h('button', { type: 'submit' }, 'Create role'))));

  const renderRules = (rs: Role[]) => {
    const role = rs.find(r => r.name === selected);
    if (!role) { set(rulesSlot); return; }
    const id = h('input', { type: 'text', required: true, autocomplete: 'off', spellcheck: 'false' });
    const action = select([['publish', 'publish'], ['subscribe', 'subscribe'], ['receive', 'receive']]);
    const topic = h('input', { type: 'text', required: true, autocomplete: 'off', spellcheck: 'false', placeholder: 'sensors/%u/#' });
    const effect = select([['allow', 'allow'], ['deny', 'deny']]);
    const qos = select([['2', '2'], ['1', '1'], ['0', '0']]);
    const retain = h('input', { type: 'checkbox', checked: true });
    const priority = h('input', { type: 'number', value: '0', step: '1' });
    const source = h('input', { type: 'text', autocomplete: 'off', placeholder: '10.0.0.0/8, ::1/128' });
    set(rulesSlot,
      h('h3', { id: 'rules-title' }, `Rules of role ${role.name}`),
      table(['Rule id', 'Action', 'Topic', 'Effect', 'Max QoS', 'Retain', 'Priority', 'Source', 'Actions'], role.rules.map(r => [
        h('code', {}, r.id), r.action, h('code', {}, r.topic),
        h('span', { class: r.effect === 'allow' ? 'verdict-allow' : 'verdict-deny' }, r.effect),
        String(r.max_qos), r.retain ? 'yes' : 'no', String(r.priority), (r.source ?? []).join(', ') || 'any',
        h('td', { class: 'actions' }, button('Delete', () => {
          if (!confirm(`Delete rule ${r.id} of ${role.name}?`)) return;
          void f.act(async () => { await del(`/admin/roles/${enc(role.name)}/rules/${enc(r.id)}`); await load(); return `Deleted rule ${r.id}.`; });
        }, 'danger', { 'aria-label': `Delete rule ${r.id}` })),
      ]), 'No rules yet: this role allows nothing.', `Rules of ${role.name}`),
      h('form', {
        class: 'card', 'aria-labelledby': 'new-rule-title',
        onsubmit: (e: Event) => {
          e.preventDefault();
          const rule = {
            id: id.value.trim() || `rule-${role.rules.length + 1}`, action: action.value, topic: topic.value.trim(), effect: effect.value,
            max_qos: Number(qos.value), retain: retain.checked, priority: Number(priority.value) || 0,
            source: source.value.split(',').map(s => s.trim()).filter(Boolean),
          };
          void f.act(async () => { await post(`/admin/roles/${enc(role.name)}/rules`, rule); await load(); return `Added rule ${rule.id} to ${role.name}.`; });
        },
      },
        h('h3', { id: 'new-rule-title' }, `Add a rule to ${role.name}`),
        h('div', { class: 'row' }, field('Rule id', id), field('Action', action), field('Topic', topic), field('Effect', effect)),
        h('div', { class: 'row' }, field('Max QoS', qos), h('label', { class: 'inline' }, retain, 'Retained publish allowed'), field('Priority', priority), field('Source networks', source)),
        h('p', {}, h('button', { type: 'submit' }, 'Add rule'))));
  };
  void load();
};

/** The Explain box: principal × action × topic → the broker's decision and what decided it. */
function explainBox(): HTMLElement {
  const principal = h('input', { type: 'text', required: true, autocomplete: 'off', spellcheck: 'false' });
  const kind = select([['user', 'user'], ['certificate', 'certificate identity'], ['token', 'token subject'], ['anonymous', 'anonymous']]);
  const client = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false' });
  const action = select([['publish', 'publish'], ['subscribe', 'subscribe'], ['receive', 'receive']]);
  const topic = h('input', { type: 'text', required: true, autocomplete: 'off', spellcheck: 'false' });
  const qos = select([['0', '0'], ['1', '1'], ['2', '2']]);
  const from = h('input', { type: 'text', autocomplete: 'off', placeholder: 'optional: 10.1.2.3' });
  const answer = h('div', { 'aria-live': 'polite', id: 'explain-answer' });
  return h('section', { class: 'card', 'aria-labelledby': 'explain-title' },
    h('h3', { id: 'explain-title' }, 'Explain a decision'),
    h('form', {
      onsubmit: async (e: Event) => {
        e.preventDefault();
        set(answer, 'Asking the broker…');
        try {
          const body: Record<string, unknown> = { principal: principal.value.trim(), kind: kind.value, client_id: client.value.trim(), action: action.value, topic: topic.value, qos: Number(qos.value) };
          if (from.value.trim()) body.from = from.value.trim();
          const r = await post<Explained>('/admin/explain', body);
          const who = kind.value === 'anonymous' ? 'an anonymous client' : `${kind.value} ${principal.value.trim()}`;
          set(answer,
            h('p', {}, h('span', { class: r.decision === 'allow' ? 'verdict-allow' : 'verdict-deny' }, r.decision), ` — ${who} × ${action.value} × ${topic.value}`),
            h('p', {}, r.rule ? `Decided by rule ${r.rule} of role ${r.role} (${r.decided_by}).` : `Decided by ${r.decided_by}: ${r.detail}.`),
          );
        } catch (err) {
          set(answer, h('p', { class: 'alert' }, `Could not explain: ${(err as Error).message}`));
        }
      },
    },
      h('div', { class: 'row' }, field('Principal', principal), field('Kind', kind), field('Client id', client)),
      h('div', { class: 'row' }, field('Action', action), field('Topic', topic), field('QoS', qos), field('From address', from)),
      h('p', {}, h('button', { type: 'submit' }, 'Explain'))),
    answer);
}
