// The admin API, as the console calls it. The admin token is held in this tab's
// sessionStorage and sent only in the Authorization header: never in a URL, a body or a
// cookie (so a page elsewhere has nothing to forge a request with).

const KEY = 'warden-console-admin-token';

export class ApiError extends Error {
  constructor(public status: number, message: string) { super(message); }
}

let onSignedOut: (why: string) => void = () => { };
export function whenSignedOut(f: (why: string) => void): void { onSignedOut = f; }

export function token(): string | null {
  try { return sessionStorage.getItem(KEY); } catch { return null; }
}
export function setToken(t: string | null): void {
  try { if (t) sessionStorage.setItem(KEY, t); else sessionStorage.removeItem(KEY); } catch { /* storage off: memory only */ }
  memory = t;
}
let memory: string | null = token();

/** Call the admin API; throws an ApiError with a message a person can act on. */
export async function api<T>(method: string, path: string, body?: unknown, t: string | null = memory): Promise<T> {
  if (!t) throw new ApiError(401, 'not signed in');
  const headers: Record<string, string> = { Authorization: `Bearer ${t}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let r: Response;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'omit', cache: 'no-store', redirect: 'error' });
  } catch {
    throw new ApiError(0, 'the broker did not answer (is it running, and is this page served by it?)');
  }
  const text = await r.text();
  let data: unknown = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!r.ok) {
    const said = (data && typeof data === 'object' && 'error' in data) ? String((data as { error: unknown }).error) : text.trim().slice(0, 200);
    let msg = said || r.statusText;
    if (r.status === 401) msg = `the admin token was not accepted (HTTP 401)`;
    else if (r.status === 403) msg = `not allowed (HTTP 403): ${said}`;
    else if (r.status === 429) msg = `too many failed attempts from this address: retry in ${r.headers.get('Retry-After') ?? 'a few'} s (HTTP 429)`;
    else msg = `${msg} (HTTP ${r.status})`;
    const e = new ApiError(r.status, msg);
    if (r.status === 401 && t === memory && memory) { setToken(null); onSignedOut('Signed out: ' + msg + '.'); }
    throw e;
  }
  return data as T;
}

export const get = <T>(path: string) => api<T>('GET', path);
export const post = <T>(path: string, body: unknown) => api<T>('POST', path, body);
export const put = <T>(path: string, body: unknown) => api<T>('PUT', path, body);
export const del = <T>(path: string) => api<T>('DELETE', path);
export const enc = encodeURIComponent;

// --- what the API answers (docs/admin-openapi.json) ---------------------------------------------
export interface Client { client_id: string; principal: string; peer: string; protocol: string; connected_at: number; node?: string; method?: string; certificate?: string; cert_expires_at?: number; token_expires_at?: number }
export interface User { name: string; groups: string[]; roles: string[]; disabled: boolean; has_password: boolean }
export interface Group { name: string; roles: string[] }
export interface Rule { id: string; action: string; topic: string; max_qos: number; retain: boolean; effect: string; priority: number; source?: string[] }
export interface Role { name: string; rules: Rule[] }
export interface Ban { kind: string; value: string; expires_at?: number; reason?: string }
export interface OAuthClient { id: string; scopes: string[]; roles: string[] }
export interface Cert { fingerprint: string; subject: string; issuer: string; serial: string; identity?: string; not_before: number; not_after: number; first_seen: number; last_seen: number; last_peer: string; handshakes: number; revoked: boolean; connected: number }
export interface Stats { at_ms: number; connections: number; sessions: number; subscriptions: number; messages_received: number; messages_sent: number; connections_accepted: number; connections_refused: number; auth_failures: number; auth_failures_by_method: Record<string, number>; authz_denied: number; bans_active: number }
export interface AuditRecord { time: string; unix: number; actor: string; peer: string; action: string; target: string; detail: unknown; result: string; status: number; error?: string }
export interface DeviceCert { fingerprint: string; status: string; subject?: string; not_after?: number }
export interface Device { id: string; type?: string; owner?: string; attributes: Record<string, string>; certificates: DeviceCert[] }
export interface Explained { decision: string; decided_by: string; role?: string; rule?: string; detail: string }
export interface WatchAlert { at: number; principal_kind: string; principal: string; rule: string; metric: string; value: number; baseline: number | null; action: string }
export interface WatchRestriction { principal_kind: string; principal: string; action: string; rule: string; since: number; until?: number | null; rate?: number }
export interface WatchRule { id: string; metric: string; above?: number; baseline_times?: number; action: string; throttle_rate?: number; duration_secs?: number; enabled: boolean }
export interface WatchRules { enabled: boolean; defaults: boolean; rules: WatchRule[]; quarantine_topics: string[] }
