// What every page has: a title, a line saying what it is for, a region for errors (an ARIA
// alert) and one for confirmations, and a way to run an action that reports either.
import { ApiError } from './api';
import { h, set, type Child } from './dom';

/** A page renders into `root` and returns what stops its timers when it is left. */
export type Page = (root: HTMLElement) => (() => void) | void;

export interface Frame {
  body: HTMLElement;
  error(msg: string): void;
  notice(msg: string): void;
  /** Run an action: its error is shown in the alert region, its success message in the notice. */
  act(fn: () => Promise<string | void>): Promise<boolean>;
}

export function frame(root: HTMLElement, title: string, lead: Child): Frame {
  const alert = h('div', { role: 'alert', class: 'alert' });
  const status = h('div', { role: 'status', class: 'notice' });
  const body = h('div');
  root.append(h('h2', {}, title), h('p', { class: 'lead' }, lead), alert, status, body);
  const f: Frame = {
    body,
    error: msg => { set(status); set(alert, msg); },
    notice: msg => { set(alert); set(status, msg); },
    act: async fn => {
      try {
        const msg = await fn();
        if (msg) f.notice(msg); else set(alert);
        return true;
      } catch (e) {
        f.error(e instanceof ApiError ? e.message : String(e));
        return false;
      }
    },
  };
  return f;
}

/** Poll `fn` every `ms` until the returned stop is called (also runs it once now). */
export function every(ms: number, fn: () => Promise<void> | void): () => void {
  let alive = true;
  let timer: number | undefined;
  const tick = async () => {
    if (!alive) return;
    try { await fn(); } catch { /* shown by fn */ }
    if (alive) timer = window.setTimeout(tick, ms);
  };
  void tick();
  return () => { alive = false; if (timer !== undefined) clearTimeout(timer); };
}

export function button(label: string, onclick: () => void, cls = '', extra: Record<string, unknown> = {}): HTMLButtonElement {
  return h('button', { type: 'button', class: cls, onclick, ...extra }, label);
}
