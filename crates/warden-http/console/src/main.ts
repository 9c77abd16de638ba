// Warden's security console: sign-in with the admin token, then one page per pillar
// (SPEC §12). Pages are routed by the URL's fragment (#/clients), so nothing about them ever
// reaches the server but the admin API calls they make.
import { api, ApiError, setToken, token, whenSignedOut } from './api';
import { h, set } from './dom';
import type { Page } from './page';
import { overview } from './pages/overview';
import { clients } from './pages/clients';
import { users, groups } from './pages/users';
import { roles } from './pages/roles';
import { oauth } from './pages/oauth';
import { certificates } from './pages/certificates';
import { devices } from './pages/devices';
import { bans } from './pages/bans';
import { audit } from './pages/audit';
import { alerts } from './pages/alerts';

const PAGES: [string, string, Page][] = [
  ['overview', 'Overview', overview],
  ['clients', 'Clients', clients],
  ['users', 'Users', users],
  ['groups', 'Groups', groups],
  ['roles', 'Roles', roles],
  ['oauth', 'OAuth clients', oauth],
  ['certificates', 'Certificates', certificates],
  ['devices', 'Devices', devices],
  ['bans', 'Bans', bans],
  ['alerts', 'Alerts', alerts],
  ['audit', 'Audit', audit],
];

const app = document.getElementById('app') as HTMLElement;
let stop: (() => void) | void;

function signIn(message = ''): void {
  if (stop) { stop(); stop = undefined; }
  const input = h('input', { type: 'password', id: 'admin-token', autocomplete: 'current-password', required: true, spellcheck: 'false' });
  const alert = h('div', { role: 'alert', class: 'alert' }, message);
  const button = h('button', { type: 'submit' }, 'Sign in');
  const form = h('form', {
    class: 'signin', 'aria-labelledby': 'signin-title',
    onsubmit: async (e: Event) => {
      e.preventDefault();
      const t = input.value.trim();
      if (!t) { set(alert, 'Enter the admin token.'); input.focus(); return; }
      button.disabled = true;
      set(alert);
      try {
        await api('GET', '/admin/stats', undefined, t);
        setToken(t);
        shell();
      } catch (err) {
        set(alert, `Sign-in failed: ${err instanceof ApiError ? err.message : String(err)}.`);
        input.select();
      } finally { button.disabled = false; }
    },
  },
    h('h1', { id: 'signin-title' }, 'Warden security console'),
    h('p', {}, 'Sign in with the broker\'s admin token. It stays in this browser tab and is sent only in the Authorization header of the console\'s calls to the admin API.'),
    h('div', { class: 'field' }, h('label', { for: 'admin-token' }, 'Admin token'), input),
    alert,
    button);
  set(app, h('main', { id: 'main' }, form));
  input.focus();
}

function shell(): void {
  const nav = h('nav', { class: 'side', 'aria-label': 'Console pages' },
    h('ul', {}, PAGES.map(([id, name]) => h('li', {}, h('a', { href: `#/${id}`, 'data-page': id }, name)))));
  const main = h('main', { id: 'main', tabindex: '-1' });
  set(app,
    h('a', { class: 'skip', href: '#main', onclick: (e: Event) => { e.preventDefault(); main.focus(); } }, 'Skip to the page'),
    h('header', { class: 'top' },
      h('h1', {}, 'Warden security console'),
      h('span', { class: 'who' }, 'signed in with the admin token'),
      h('button', { type: 'button', class: 'secondary', onclick: () => { setToken(null); location.hash = ''; signIn(); } }, 'Sign out')),
    h('div', { class: 'layout' }, nav, main));
  const route = () => {
    if (!token()) return signIn();
    const id = location.hash.replace(/^#\/?/, '') || 'overview';
    const entry = PAGES.find(p => p[0] === id) ?? PAGES[0];
    for (const a of nav.querySelectorAll('a')) {
      if (a.dataset.page === entry[0]) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    if (stop) stop();
    main.replaceChildren();
    document.title = `${entry[1]} · Warden`;
    stop = entry[2](main);
  };
  window.onhashchange = route;
  route();
}

whenSignedOut(why => signIn(why));
if (token()) shell(); else signIn();
