// A small element builder. Every value shown comes from the network (client ids, topics,
// certificate subjects are chosen by whoever connects), so text is only ever set as text:
// nothing here writes HTML.

export type Child = Node | string | number | null | undefined | false | Child[];
type Attrs = Record<string, unknown>;

const PROPS = new Set(['checked', 'disabled', 'selected', 'multiple', 'required', 'value', 'hidden']);

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v as EventListener);
    else if (k === 'class') el.className = String(v);
    else if (PROPS.has(k)) (el as unknown as Record<string, unknown>)[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace the content of `el`. */
export function set(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

let ids = 0;
/** A unique id for a label's `for`. */
export const uid = (p = 'f'): string => `${p}-${++ids}`;

/** A labelled field: a real <label for> beside its control (not around it, so the label's
 * text is the label alone and never a select's options), for screen readers and tests. */
export function field(label: string, input: HTMLInputElement | HTMLSelectElement): HTMLDivElement {
  if (!input.id) input.id = uid();
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input);
}

export function select(options: [string, string][], attrs: Attrs = {}): HTMLSelectElement {
  return h('select', attrs, options.map(([v, t]) => h('option', { value: v }, t)));
}

/** A group of checkboxes named by their values (e.g. roles), labelled by `legend`. */
export function choices(legend: string, values: string[], checked: string[] = []): { el: HTMLFieldSetElement; values: () => string[] } {
  const boxes = values.map(v => h('input', { type: 'checkbox', value: v, checked: checked.includes(v) }));
  const el = h('fieldset', { class: 'choices', 'aria-label': legend },
    h('legend', {}, legend),
    values.length ? boxes.map((b, i) => h('label', { class: 'inline' }, b, values[i])) : h('span', { class: 'empty' }, 'none yet'));
  return { el, values: () => boxes.filter(b => b.checked).map(b => b.value) };
}

export function table(headers: string[], rows: (Node | string)[][], empty: string, caption?: string): HTMLElement {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('table', {},
    caption ? h('caption', { class: 'skip' }, caption) : null,
    h('thead', {}, h('tr', {}, headers.map(t => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows.map(cells => h('tr', {}, cells.map(c => c instanceof HTMLTableCellElement ? c : h('td', {}, c))))));
}

export function time(unix: number | undefined | null): string {
  if (!unix) return '—';
  return new Date(unix * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function ago(unix: number): string {
  const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function until(unix: number | undefined | null): string {
  if (!unix) return '—';
  const s = Math.round(unix - Date.now() / 1000);
  const when = time(unix);
  if (s <= 0) return `${when} (expired)`;
  if (s < 3600) return `${when} (in ${Math.ceil(s / 60)} min)`;
  if (s < 86400 * 2) return `${when} (in ${Math.round(s / 3600)} h)`;
  return `${when} (in ${Math.round(s / 86400)} d)`;
}
